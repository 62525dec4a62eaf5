//! Which frames are for this director: the MAC of each NIC the program is
//! attached to and the VRRP virtual MACs it answers for, so that a frame a
//! promiscuous NIC or a flooding switch delivers for another host is passed
//! to the stack, never balanced.

use crate::limits::NIC_FILTER_ENTRIES;

/// Index of NIC `ifindex`'s entry in [`NIC_FILTER_MAP`]. Two NICs may share
/// an entry (the control plane says so); a frame from a NIC whose entry is
/// not its own is not filtered.
///
/// [`NIC_FILTER_MAP`]: crate::limits::NIC_FILTER_MAP
pub const fn nic_filter_index(ifindex: u32) -> u32 {
    ifindex % NIC_FILTER_ENTRIES
}

/// The first five bytes of a VRRP virtual MAC for IPv4
/// (`00:00:5e:00:01:VRID`, RFC 5798).
pub const VRRP_MAC4_PREFIX: [u8; 5] = [0x00, 0x00, 0x5e, 0x00, 0x01];
/// The first five bytes of a VRRP virtual MAC for IPv6 (`00:00:5e:00:02:VRID`).
pub const VRRP_MAC6_PREFIX: [u8; 5] = [0x00, 0x00, 0x5e, 0x00, 0x02];

/// The destination MACs one director NIC accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicFilter {
    /// The NIC's interface index (0: the entry is unused).
    pub ifindex: u32,
    /// The NIC's own MAC.
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 6],
    /// VRRP router ids (bit `vrid` of this 256-bit set) whose virtual MACs,
    /// IPv4 and IPv6, the NIC also accepts.
    pub vrids: [u64; 4],
}

impl NicFilter {
    /// The filter of NIC `ifindex` with MAC `mac`, accepting the virtual
    /// MACs of the VRRP router ids `vrids` too.
    pub fn new(ifindex: u32, mac: [u8; 6], vrids: &[u8]) -> Self {
        let mut filter = Self {
            ifindex,
            mac,
            ..Self::default()
        };
        for &vrid in vrids {
            filter.vrids[usize::from(vrid / 64)] |= 1 << (vrid % 64);
        }
        filter
    }

    /// Whether a frame to `dst` is for this NIC: its own MAC, or the
    /// virtual MAC of one of its VRRP router ids.
    #[inline(always)]
    pub fn accepts(&self, dst: &[u8; 6]) -> bool {
        if *dst == self.mac {
            return true;
        }
        let prefix = [dst[0], dst[1], dst[2], dst[3], dst[4]];
        if prefix != VRRP_MAC4_PREFIX && prefix != VRRP_MAC6_PREFIX {
            return false;
        }
        let vrid = dst[5];
        self.vrids[usize::from(vrid / 64) & 3] & (1 << (vrid % 64)) != 0
    }
}

const _: () = assert!(size_of::<NicFilter>() == 48);

#[cfg(feature = "user")]
mod pod {
    use super::NicFilter;

    // SAFETY: it is #[repr(C)], holds only integers and byte arrays, and has
    // no implicit padding (the size assertion and layout test here).
    unsafe impl aya::Pod for NicFilter {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn nic_filter_layout() {
        assert_eq!(offset_of!(NicFilter, ifindex), 0);
        assert_eq!(offset_of!(NicFilter, mac), 4);
        assert_eq!(offset_of!(NicFilter, _pad), 10);
        assert_eq!(offset_of!(NicFilter, vrids), 16);
    }

    #[test]
    fn accepts_its_mac_and_its_vrrp_macs_only() {
        let mac = [0x02, 0xd1, 0, 0, 0, 1];
        let filter = NicFilter::new(3, mac, &[51, 200]);
        assert!(filter.accepts(&mac));
        assert!(filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 51]));
        assert!(filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x02, 51]));
        assert!(filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 200]));
        assert!(!filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 52]));
        assert!(!filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x03, 51]));
        assert!(!filter.accepts(&[0x02, 0xd1, 0, 0, 0, 2]));
        assert!(!filter.accepts(&[0xff; 6]));
        assert!(!NicFilter::new(3, mac, &[]).accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 0]));
    }

    #[test]
    fn entries_wrap_around() {
        assert_eq!(nic_filter_index(3), 3);
        assert_eq!(nic_filter_index(NIC_FILTER_ENTRIES + 3), 3);
    }
}
