//! The director's NICs: which frames are for this director (the MAC of each
//! NIC the program is attached to and the VRRP virtual MACs it answers for,
//! so that a frame a promiscuous NIC or a flooding switch delivers for
//! another host is passed to the stack, never balanced), each NIC's name,
//! and what each NIC forwarded.

use crate::limits::NIC_FILTER_ENTRIES;

/// Index of NIC `ifindex`'s entry in [`NIC_FILTER_MAP`] and
/// [`NIC_STATS_MAP`]. Two NICs may share an entry (the control plane says
/// so); a frame from a NIC whose entry is not its own is not filtered, and
/// the two NICs' counters add up.
///
/// [`NIC_FILTER_MAP`]: crate::limits::NIC_FILTER_MAP
/// [`NIC_STATS_MAP`]: crate::limits::NIC_STATS_MAP
pub const fn nic_filter_index(ifindex: u32) -> u32 {
    ifindex % NIC_FILTER_ENTRIES
}

/// The first five bytes of a VRRP virtual MAC for IPv4
/// (`00:00:5e:00:01:VRID`, RFC 5798).
pub const VRRP_MAC4_PREFIX: [u8; 5] = [0x00, 0x00, 0x5e, 0x00, 0x01];
/// The first five bytes of a VRRP virtual MAC for IPv6 (`00:00:5e:00:02:VRID`).
pub const VRRP_MAC6_PREFIX: [u8; 5] = [0x00, 0x00, 0x5e, 0x00, 0x02];

/// Longest NIC name [`NicFilter`] holds (Linux's `IFNAMSIZ` less the NUL).
pub const NIC_NAME_LEN: usize = 15;

/// One director NIC: its name and the destination MACs it accepts.
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
    /// The NIC's name, NUL-padded (for `lb stats`; never read by the data
    /// path).
    pub name: [u8; NIC_NAME_LEN + 1],
}

impl NicFilter {
    /// The filter of NIC `name` (index `ifindex`) with MAC `mac`, accepting
    /// the virtual MACs of the VRRP router ids `vrids` too. A name longer
    /// than [`NIC_NAME_LEN`] bytes is cut (Linux allows none).
    pub fn new(name: &str, ifindex: u32, mac: [u8; 6], vrids: &[u8]) -> Self {
        let mut filter = Self {
            ifindex,
            mac,
            ..Self::default()
        };
        for &vrid in vrids {
            filter.vrids[usize::from(vrid / 64)] |= 1 << (vrid % 64);
        }
        for (to, from) in filter.name[..NIC_NAME_LEN].iter_mut().zip(name.bytes()) {
            *to = from;
        }
        filter
    }

    /// The NIC's name (empty when it is not UTF-8).
    pub fn name(&self) -> &str {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..len]).unwrap_or_default()
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

/// What one director NIC forwarded (per CPU in [`NIC_STATS_MAP`], indexed
/// by [`nic_filter_index`]): frames to a backend, counted by the NICs they
/// arrived on and left through. Bytes are IP-layer bytes, as in
/// [`Counters`].
///
/// [`NIC_STATS_MAP`]: crate::limits::NIC_STATS_MAP
/// [`Counters`]: crate::stats::Counters
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Frames that arrived on this NIC and left through it (`XDP_TX`).
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames that arrived on this NIC and left through another
    /// (`XDP_REDIRECT`).
    pub redirected_out_packets: u64,
    /// Their bytes.
    pub redirected_out_bytes: u64,
    /// Frames that arrived on another NIC and left through this one.
    pub redirected_in_packets: u64,
    /// Their bytes.
    pub redirected_in_bytes: u64,
}

impl core::ops::Add for NicCounters {
    type Output = Self;

    /// Field by field (wrapping, as the kernel's counters do).
    fn add(self, other: Self) -> Self {
        Self {
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
            redirected_out_packets: self
                .redirected_out_packets
                .wrapping_add(other.redirected_out_packets),
            redirected_out_bytes: self
                .redirected_out_bytes
                .wrapping_add(other.redirected_out_bytes),
            redirected_in_packets: self
                .redirected_in_packets
                .wrapping_add(other.redirected_in_packets),
            redirected_in_bytes: self
                .redirected_in_bytes
                .wrapping_add(other.redirected_in_bytes),
        }
    }
}

const _: () = assert!(size_of::<NicFilter>() == 64);
const _: () = assert!(size_of::<NicCounters>() == 48);

#[cfg(feature = "user")]
mod pod {
    use super::{NicCounters, NicFilter};

    // SAFETY: both are #[repr(C)], hold only integers and byte arrays, and
    // have no implicit padding (the size assertions and layout tests here).
    unsafe impl aya::Pod for NicFilter {}
    unsafe impl aya::Pod for NicCounters {}
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
        assert_eq!(offset_of!(NicFilter, name), 48);
        assert_eq!(offset_of!(NicCounters, tx_packets), 0);
        assert_eq!(offset_of!(NicCounters, tx_bytes), 8);
        assert_eq!(offset_of!(NicCounters, redirected_out_packets), 16);
        assert_eq!(offset_of!(NicCounters, redirected_out_bytes), 24);
        assert_eq!(offset_of!(NicCounters, redirected_in_packets), 32);
        assert_eq!(offset_of!(NicCounters, redirected_in_bytes), 40);
    }

    #[test]
    fn names_are_kept_up_to_the_linux_limit() {
        let mac = [0x02, 0xd1, 0, 0, 0, 1];
        assert_eq!(NicFilter::new("eth0", 3, mac, &[]).name(), "eth0");
        let longest = "abcdefghijklmno";
        assert_eq!(NicFilter::new(longest, 3, mac, &[]).name(), longest);
        assert_eq!(
            NicFilter::new("abcdefghijklmnopq", 3, mac, &[]).name(),
            longest
        );
        assert_eq!(NicFilter::default().name(), "");
    }

    #[test]
    fn accepts_its_mac_and_its_vrrp_macs_only() {
        let mac = [0x02, 0xd1, 0, 0, 0, 1];
        let filter = NicFilter::new("eth0", 3, mac, &[51, 200]);
        assert!(filter.accepts(&mac));
        assert!(filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 51]));
        assert!(filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x02, 51]));
        assert!(filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 200]));
        assert!(!filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 52]));
        assert!(!filter.accepts(&[0x00, 0x00, 0x5e, 0x00, 0x03, 51]));
        assert!(!filter.accepts(&[0x02, 0xd1, 0, 0, 0, 2]));
        assert!(!filter.accepts(&[0xff; 6]));
        assert!(!NicFilter::new("eth0", 3, mac, &[]).accepts(&[0x00, 0x00, 0x5e, 0x00, 0x01, 0]));
    }

    #[test]
    fn entries_wrap_around() {
        assert_eq!(nic_filter_index(3), 3);
        assert_eq!(nic_filter_index(NIC_FILTER_ENTRIES + 3), 3);
    }
}
