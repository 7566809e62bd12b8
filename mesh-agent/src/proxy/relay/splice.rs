//! Socket to socket through a pipe: `splice(2)` moves the bytes between the
//! two sockets' buffers inside the kernel, never through user space.
//!
//! Bounds: each direction has its own pipe at the kernel's default size (16
//! pages, 64 KiB). A direction fills its pipe only once the previous fill
//! has been written on, so it holds at most that much beyond the sockets'
//! own buffers, and back-pressure is what a read/write copy gives. The pages
//! are kernel memory, and only while in flight; the cost per relayed
//! connection is four descriptors (two pipes).
use std::{
    io,
    net::Shutdown,
    os::fd::OwnedFd,
    sync::atomic::{AtomicU64, Ordering},
};

use nix::{
    fcntl::{OFlag, SpliceFFlags, splice},
    unistd::pipe2,
};
use socket2::SockRef;
use tokio::{io::Interest, net::TcpStream};

use super::CopyError;

/// What one fill moves at most: the pipe's default capacity.
const PIPE_BYTES: usize = 64 << 10;

/// A non-blocking pipe.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub(super) fn new() -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Self { read, write })
    }
}

/// Moves what `from` sends into `to` until `from` ends, then passes the end
/// on (FIN), counting into `total` as bytes are written.
pub(super) async fn copy(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    total: &AtomicU64,
) -> Result<(), CopyError> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let filled = from
            .async_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe.write, None, PIPE_BYTES, flags)?)
            })
            .await
            .map_err(|_| CopyError { on_read: true })?;
        if filled == 0 {
            break;
        }
        let mut left = filled;
        while left > 0 {
            let moved = to
                .async_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe.read, None, to, None, left, flags)?)
                })
                .await
                .map_err(|_| CopyError { on_read: false })?;
            left -= moved;
            total.fetch_add(moved as u64, Ordering::Relaxed);
        }
    }
    SockRef::from(to)
        .shutdown(Shutdown::Write)
        .map_err(|_| CopyError { on_read: false })
}
