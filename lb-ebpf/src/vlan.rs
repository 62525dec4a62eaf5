//! VLAN tags between the Ethernet header and the IP header: one 802.1Q or
//! 802.1ad tag, or two (QinQ), each 4 bytes (the tag's control information,
//! then the EtherType of what follows). [`skip_tags`] steps over them and
//! packs their VLAN ids into the frame's VLAN path (`lb_common::vlan`).
//! Forwarding rewrites only the MAC addresses before them, so a frame leaves
//! with the tags it came with.
//!
//! Only frames whose EtherType is not IPv4 or IPv6 get here: untagged
//! traffic pays nothing for it.

use aya_ebpf::programs::XdpContext;
use lb_common::{MAX_VLAN_TAGS, REASON_MALFORMED, REASON_NOT_IP, VLAN_ID_BITS, VLAN_ID_MASK};
use network_types::eth::EthHdr;

use crate::{
    parse::{be16, ptr_at},
    verdict::Verdict,
};

/// EtherType (tag protocol identifier) of an 802.1Q tag.
const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad tag: the outer (service) tag of QinQ.
const ETH_P_8021AD: u16 = 0x88A8;
/// Length of a VLAN tag after its EtherType: control information, then the
/// next EtherType.
const TAG_LEN: usize = 4;

/// What follows a frame's VLAN tags.
pub struct Tagged {
    /// The EtherType after the last tag.
    pub ether_type: u16,
    /// Where the header it announces starts.
    pub offset: usize,
    /// The VLAN path of the tags.
    pub vlan: u32,
}

/// Steps over the VLAN tags of a frame whose Ethernet header announces
/// `ether_type`: up to [`MAX_VLAN_TAGS`] tags of either kind, in any order.
/// `Pass(REASON_NOT_IP)` for a frame without tags (it is not IP either),
/// `Drop(REASON_MALFORMED)` for a tag cut short by the frame's end. A frame
/// with more tags ends with a tag's EtherType, which the caller passes as
/// not IP.
#[inline(always)]
pub fn skip_tags(ctx: &XdpContext, mut ether_type: u16) -> Result<Tagged, Verdict> {
    if !is_tag(ether_type) {
        return Err(Verdict::Pass(REASON_NOT_IP));
    }
    let mut offset = EthHdr::LEN;
    let mut vlan = 0;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_tag(ether_type) {
            break;
        }
        let tag = ptr_at::<[[u8; 2]; 2]>(ctx, offset).ok_or(Verdict::Drop(REASON_MALFORMED))?;
        // SAFETY: the tag is inside the frame, at an even offset.
        let (control, next) = unsafe { (be16(&raw const (*tag)[0]), be16(&raw const (*tag)[1])) };
        // A priority tag (VLAN id 0) leaves the frame on the VLAN it was on.
        let id = control & VLAN_ID_MASK;
        if id != 0 {
            vlan = vlan << VLAN_ID_BITS | u32::from(id);
        }
        ether_type = next;
        offset += TAG_LEN;
    }
    Ok(Tagged {
        ether_type,
        offset,
        vlan,
    })
}

/// Whether `ether_type` announces a VLAN tag.
#[inline(always)]
fn is_tag(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}
