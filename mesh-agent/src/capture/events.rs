//! Capture events from the kernel ring buffer, logged at debug level: which
//! hook took which connection, when, and where it was going.
use aya::maps::{MapData, RingBuf};
use mesh_common::{CaptureEvent, Hook};
use tokio::io::unix::AsyncFd;

/// Reads events until the agent exits.
pub fn spawn_reader(ring: RingBuf<MapData>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as the `AsyncFd` owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < size_of::<CaptureEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a whole `CaptureEvent` (checked
                // length above); `read_unaligned` copes with the ring's
                // 8-byte alignment of records.
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
            guard.clear_ready();
        }
    }))
}
