//! 802.1Q VLANs: the VLAN a frame is on, as the service and flow keys hold
//! it.
//!
//! A frame's *VLAN path* packs the VLAN ids (VIDs) of its tags, 12 bits
//! each, the innermost in the low bits: 0 for an untagged frame, the VID
//! for one tag (`4001` for a frame of `bond0.4001`), and `outer << 12 |
//! inner` for two (QinQ: an 802.1ad service tag around an 802.1Q customer
//! tag, a frame of `bond0.100.4001`). A service is bound to one path: with
//! two tags, to the pair, as Linux delivers such a frame to the one device
//! stacked for both tags. A tag with VID 0 (a priority tag, 802.1p) adds
//! nothing to the path: the frame belongs to the VLAN it would have
//! without the tag, as the kernel sees it too.

/// Most VLAN tags the data path reads before the IP header; a frame with
/// more is not parsed as IP.
pub const MAX_VLAN_TAGS: usize = 2;
/// Bits of a VID, and of each VID in a VLAN path.
pub const VLAN_ID_BITS: u32 = 12;
/// The VID bits of a tag's control information (the rest is priority and
/// drop eligibility).
pub const VLAN_ID_MASK: u16 = (1 << VLAN_ID_BITS) - 1;
/// The highest VID a service may be bound to (4095 is reserved).
pub const VLAN_ID_MAX: u16 = 4094;

/// The VLAN path of the VIDs `ids`, outermost first (at most
/// [`MAX_VLAN_TAGS`], each 1 to [`VLAN_ID_MAX`]); `&[]` is untagged (0).
pub fn vlan_path(ids: &[u16]) -> u32 {
    ids.iter().fold(0, |path, &id| {
        path << VLAN_ID_BITS | u32::from(id & VLAN_ID_MASK)
    })
}

/// The VIDs of the VLAN path `path`, outermost first: none for an untagged
/// frame.
pub fn vlan_ids(path: u32) -> impl Iterator<Item = u16> {
    let outer = (path >> VLAN_ID_BITS) as u16 & VLAN_ID_MASK;
    let inner = path as u16 & VLAN_ID_MASK;
    [outer, inner].into_iter().filter(|&id| id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_pack_the_ids_innermost_low() {
        assert_eq!(vlan_path(&[]), 0);
        assert_eq!(vlan_path(&[4001]), 4001);
        assert_eq!(vlan_path(&[100, 4001]), 100 << 12 | 4001);
        assert_eq!(vlan_path(&[VLAN_ID_MAX, VLAN_ID_MAX]), 0xffe_ffe);
        assert!(vlan_path(&[VLAN_ID_MAX, VLAN_ID_MAX]) < 1 << 24);
    }

    #[test]
    fn ids_come_back_from_their_path() {
        for ids in [&[][..], &[1], &[4001], &[100, 4001], &[4094, 1]] {
            assert!(vlan_ids(vlan_path(ids)).eq(ids.iter().copied()), "{ids:?}");
        }
    }
}
