//! Whether a NIC takes VLAN tags off the frames it receives (receive VLAN
//! offload, `ethtool -k`'s `rx-vlan-offload` and `rx-vlan-stag-hw-parse`),
//! read with the ethtool ioctl. Many drivers hand XDP such a frame without
//! its tag, so lb would take a frame of VLAN 4001 for an untagged one.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `ETHTOOL_GSTRINGS`: the names of a string set.
const ETHTOOL_GSTRINGS: u32 = 0x1b;
/// `ETHTOOL_GSSET_INFO`: the sizes of string sets.
const ETHTOOL_GSSET_INFO: u32 = 0x37;
/// `ETHTOOL_GFEATURES`: the device's feature bits.
const ETHTOOL_GFEATURES: u32 = 0x3a;
/// The string set of feature names.
const ETH_SS_FEATURES: u32 = 4;
/// Bytes of one name of a string set.
const ETH_GSTRING_LEN: usize = 32;

/// The kernel's names of the receive VLAN offloads (`ethtool -k` shows the
/// first as `rx-vlan-offload`): 802.1Q tags, then 802.1ad tags.
pub const RX_VLAN_OFFLOADS: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

/// The receive VLAN offloads ([`RX_VLAN_OFFLOADS`]) active on NIC `iface`
/// of the calling thread's namespace.
pub fn rx_vlan_offloads(iface: &str) -> io::Result<Vec<&'static str>> {
    let socket = Socket::open(iface)?;
    let mut info = [ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0];
    socket.ioctl(info.as_mut_ptr())?;
    // `ethtool_sset_info`: cmd, reserved, sset_mask (u64), then the sizes.
    let count = info[4] as usize;
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count as u32]);
    socket.ioctl(strings.as_mut_ptr())?;
    let blocks = count.div_ceil(32);
    let mut features = vec![0u32; 2 + 4 * blocks];
    features[..2].copy_from_slice(&[ETHTOOL_GFEATURES, blocks as u32]);
    socket.ioctl(features.as_mut_ptr())?;
    let names: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let active = |bit: usize| {
        // `ethtool_get_features_block`: available, requested, active, never_changed.
        features[2 + 4 * (bit / 32) + 2] & (1 << (bit % 32)) != 0
    };
    Ok(names
        .chunks(ETH_GSTRING_LEN)
        .enumerate()
        .filter(|&(bit, _)| active(bit))
        .filter_map(|(_, name)| {
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            RX_VLAN_OFFLOADS.into_iter().find(|o| o.as_bytes() == name)
        })
        .collect())
}

/// A socket to send ethtool requests about one NIC through.
struct Socket {
    fd: OwnedFd,
    name: CString,
}

impl Socket {
    fn open(iface: &str) -> io::Result<Self> {
        let name = CString::new(iface).map_err(io::Error::other)?;
        if name.as_bytes().len() >= libc::IFNAMSIZ {
            return Err(io::Error::other(format!(
                "interface name {iface:?} is too long"
            )));
        }
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, name })
    }

    /// Sends the ethtool request `data` (a command word, then its fields,
    /// which the kernel fills in).
    fn ioctl(&self, data: *mut u32) -> io::Result<()> {
        // SAFETY: an all-zero ifreq is valid; the name and data set below complete it.
        let mut request: libc::ifreq = unsafe { mem::zeroed() };
        for (to, &from) in request.ifr_name.iter_mut().zip(self.name.as_bytes()) {
            *to = from as libc::c_char;
        }
        request.ifr_ifru.ifru_data = data.cast();
        // SAFETY: `request` names the NIC and points to a buffer the size its
        // command says (the callers size it from the counts they asked for).
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_takes_no_tags_off() {
        assert_eq!(rx_vlan_offloads("lo").unwrap(), Vec::<&str>::new());
        assert!(rx_vlan_offloads("no-such-nic0").is_err());
    }
}
