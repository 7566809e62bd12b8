//! Reading the kernel's ring buffers: capture events (logged at debug level:
//! which hook took which connection, when, and where it was going) and the
//! programs' own aya-log records.
use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use mesh_common::{CaptureEvent, Hook};
use tokio::io::unix::AsyncFd;

/// Calls `drain` whenever `source`'s fd is readable, until the agent exits.
fn on_readable<T, F>(source: T, mut drain: F) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    T: AsRawFd + Send + 'static,
    F: FnMut(&mut T) + Send + 'static,
{
    // SAFETY: both sources (an aya ring buffer, an aya-log logger) own their
    // map fd and keep it open, unchanged, for as long as the `AsyncFd` owns them.
    let mut fd = unsafe { AsyncFd::register_with_interest(source, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            drain(guard.get_inner_mut());
            guard.clear_ready();
        }
    }))
}

/// Logs capture events until the agent exits.
pub fn spawn_reader(ring: RingBuf<MapData>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    on_readable(ring, |ring| {
        while let Some(item) = ring.next() {
            if item.len() < size_of::<CaptureEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `CaptureEvent` (checked
            // length above); `read_unaligned` copes with the ring's 8-byte
            // alignment of records.
            let event = unsafe { item.as_ptr().cast::<CaptureEvent>().read_unaligned() };
            let hook = Hook::ALL
                .get(event.orig.hook as usize)
                .map_or("unknown", |h| h.name());
            tracing::debug!(
                target: "nodemesh::capture",
                hook,
                netns = event.netns,
                orig_dst = %event.orig.socket_addr(),
                "captured"
            );
        }
    })
}

/// Forwards the programs' aya-log records to the agent's log.
pub fn spawn_log_reader(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    on_readable(logger, aya_log::EbpfLogger::flush)
}
