//! nodemesh's kernel programs. One module per hook; each module's docs say
//! what the hook keys on, what it writes, and why.
//!
//! Built by `mesh-agent/build.rs` (aya-build) for `bpfel-unknown-none` and
//! embedded in the agent binary, so the kernel and user-space halves of a
//! release always match.
#![no_std]
#![no_main]

mod connect;
mod getpeername;
mod maps;
mod sk_lookup;
mod sockops;
mod stats;

/// Helpers such as `bpf_get_netns_cookie` are GPL-only in the kernel.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves programs cannot reach a panic; this only satisfies
    // the `no_std` link.
    loop {}
}
