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
        (*eth).dst_addr = *backend_mac;
        (*eth).src_addr = *nic_mac;
    }
    Ok(())
}
