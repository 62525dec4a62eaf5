//! Reference XDP programs the benchmarks measure `lb_xdp` against, and the
//! live benchmark's traffic generator and sink (`live`).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use network_types::eth::EthHdr;

mod live;

/// The empty program: the cost of the BPF_PROG_TEST_RUN harness itself.
#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The trivial forwarder of the XDP paper: swap the Ethernet addresses and
/// send the frame back out (`XDP_TX`). It takes the same path on its own
/// output, so a repeated test run measures one path.
#[xdp]
pub fn bench_mac_swap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let eth = start as *mut EthHdr;
    // SAFETY: the Ethernet header is inside the frame (checked above).
    unsafe {
        core::mem::swap(&mut (*eth).dst_addr, &mut (*eth).src_addr);
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
