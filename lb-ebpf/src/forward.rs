//! Direct-routing forwarding: only the Ethernet addresses change.

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;

use crate::parse::ptr_at_mut;

/// Sets the frame's destination MAC to the backend's and its source MAC to
/// the egress NIC's; every other byte stays as it arrived.
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, backend_mac: &[u8; 6], nic_mac: &[u8; 6]) -> Result<(), ()> {
    let eth = ptr_at_mut::<EthHdr>(ctx, 0).ok_or(())?;
    // SAFETY: the Ethernet header is inside the frame.
    unsafe {
        copy_mac(&raw mut (*eth).dst_addr, backend_mac);
        copy_mac(&raw mut (*eth).src_addr, nic_mac);
    }
    Ok(())
}

/// Copies a MAC address 16 bits at a time (a plain array copy is done a byte
/// at a time: the compiler cannot assume more than byte alignment).
///
/// # Safety
/// `dst` lies inside the frame at an even offset (frames start 2-byte
/// aligned); `src` is a MAC field of a map value at an even offset.
#[inline(always)]
unsafe fn copy_mac(dst: *mut [u8; 6], src: &[u8; 6]) {
    let dst = dst.cast::<u16>();
    let src = src.as_ptr().cast::<u16>();
    for i in 0..3 {
        unsafe { dst.add(i).write(src.add(i).read()) };
    }
}
