//! Direct-routing forwarding: which frames a director NIC takes
//! ([`for_this_nic`]); only the Ethernet addresses change, and the frame
//! leaves through the director NIC its backend is on-link through: back out
//! of the NIC it arrived on (`XDP_TX`), or redirected to another
//! (`XDP_REDIRECT` through `TX_PORTS`) ([`to_backend`]).

use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Backend, REASON_INTERNAL, REASON_NO_TX_PORT, nic_filter_index};

use crate::{
    maps::{NIC_FILTER, TX_PORTS},
    parse::ptr_at_mut,
    stats,
    verdict::Verdict,
};

/// The Ethernet header's two addresses: destination, then source.
type MacPair = [u8; 12];

// `Backend::mac` followed by `Backend::nic_mac` is the new address pair, in
// frame order: one 12-byte copy rewrites both.
const _: () = assert!(offset_of!(Backend, nic_mac) == offset_of!(Backend, mac) + 6);

/// Whether the frame is addressed to the NIC it arrived on: its MAC or one of
/// its VRRP virtual MACs (`NIC_FILTER`). A NIC without an entry of its own
/// accepts every frame.
#[inline(always)]
pub fn for_this_nic(ctx: &XdpContext) -> bool {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(filter) = NIC_FILTER.get(nic_filter_index(ifindex)) else {
        return true;
    };
    if filter.ifindex != ifindex {
        return true;
    }
    let Some(dst) = ptr_at_mut::<[u8; 6]>(ctx, 0) else {
        return true;
    };
    // SAFETY: the six bytes are inside the frame.
    filter.accepts(unsafe { &*dst })
}

/// Sends the frame (of `l3_len` bytes past its Ethernet header) to
/// `backend` and counts it for the NICs it passes: rewrites its MACs and
/// sends it back out of the NIC it arrived on when the backend is on-link
/// there, else redirects it to the backend's NIC. A frame for a NIC that is
/// not in `TX_PORTS` is dropped unchanged.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, backend: &Backend, l3_len: u64) -> Verdict {
    let ingress = ctx.ingress_ifindex() as u32;
    if backend.ifindex == ingress {
        if rewrite_macs(ctx, backend).is_err() {
            return Verdict::Drop(REASON_INTERNAL);
        }
        stats::count_nic_tx(ingress, l3_len);
        return Verdict::Tx;
    }
    if TX_PORTS.redirect(backend.ifindex, 0).is_err() {
        return Verdict::Drop(REASON_NO_TX_PORT);
    }
    if rewrite_macs(ctx, backend).is_err() {
        return Verdict::Drop(REASON_INTERNAL);
    }
    stats::count_nic_redirect(ingress, backend.ifindex, l3_len);
    Verdict::Redirect
}

/// Sets the frame's destination MAC to the backend's and its source MAC to
/// that of the NIC the backend is reached through; every other byte stays
/// as it arrived.
#[inline(always)]
fn rewrite_macs(ctx: &XdpContext, backend: &Backend) -> Result<(), ()> {
    let addresses = ptr_at_mut::<MacPair>(ctx, 0).ok_or(())?;
    // SAFETY: the Ethernet header is inside the frame; the pair is read
    // from the backend's map value (see the assertion above). Misaligned
    // accesses are allowed (see `lb-ebpf/build.rs`): an 8-byte and a 4-byte
    // move (a 12-byte array copy would become a call to `memcpy`).
    unsafe {
        let (src, dst) = (
            (&raw const backend.mac).cast::<u8>(),
            addresses.cast::<u8>(),
        );
        let head = src.cast::<u64>().read_unaligned();
        let tail = src.add(8).cast::<u32>().read_unaligned();
        dst.cast::<u64>().write_unaligned(head);
        dst.add(8).cast::<u32>().write_unaligned(tail);
    }
    Ok(())
}
