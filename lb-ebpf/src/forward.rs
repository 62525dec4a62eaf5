//! The Ethernet addresses: which frames a director NIC takes
//! ([`for_this_nic`]) and, as direct routing forwards a frame, the only bytes
//! that change ([`rewrite_macs`]).

use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Backend, nic_filter_index};

use crate::{maps::NIC_FILTER, parse::ptr_at_mut};

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

/// Sets the frame's destination MAC to the backend's and its source MAC to
/// that of the NIC the backend is reached through; every other byte stays
/// as it arrived.
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, backend: &Backend) -> Result<(), ()> {
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
