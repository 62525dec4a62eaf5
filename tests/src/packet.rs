//! Raw Ethernet frames through `AF_PACKET` sockets: sending frames built by
//! hand from a namespace ([`crate::spoof`], the VLAN tests) and capturing
//! what arrives on an interface, VLAN tags included.
//!
//! The kernel takes a frame's outer VLAN tag off before packet sockets see
//! it (it keeps it beside the frame, as a NIC that strips tags does), so
//! [`PacketSocket::recv`] puts it back from the packet's auxiliary data,
//! as libpcap does: a captured frame is the frame as it was on the wire.

use std::{
    ffi::CString,
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::Context as _;

/// `ETH_P_ALL`: every protocol, for a capturing socket.
const ETH_P_ALL: u16 = 0x0003;
/// The receive buffer a capturing socket asks for: room for thousands of
/// frames between two reads.
const CAPTURE_BUFFER: libc::c_int = 8 << 20;
/// EtherType of an 802.1Q tag: the kernel's default when it does not say.
const ETH_P_8021Q: u16 = 0x8100;
/// Where a VLAN tag goes in a frame: after the two MAC addresses.
const TAG_AT: usize = 12;

/// A raw `AF_PACKET` socket bound to one interface: every buffer it sends
/// or receives is a whole Ethernet frame.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// A socket on `iface` (of the calling thread's namespace) that only
    /// sends.
    pub fn sender(iface: &str) -> anyhow::Result<Self> {
        // Protocol 0: the socket receives nothing (it only sends, and a queue
        // of copies of the segment's traffic would only cost memory); the
        // kernel reads each sent frame's protocol from its Ethernet header.
        Self::bind(iface, 0)
    }

    /// A socket on `iface` (of the calling thread's namespace) that
    /// receives every frame arriving there, with a large receive buffer;
    /// [`PacketSocket::recv`] waits at most `timeout` for one.
    pub fn capture(iface: &str, timeout: Duration) -> anyhow::Result<Self> {
        let socket = Self::bind(iface, ETH_P_ALL.to_be())?;
        socket
            .set_option(libc::SOL_PACKET, libc::PACKET_AUXDATA, &1)
            .context("asking for packet auxiliary data")?;
        socket
            .set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &CAPTURE_BUFFER)
            .context("enlarging the receive buffer")?;
        let timeout = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        socket
            .set_option(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            .context("setting the receive timeout")?;
        Ok(socket)
    }

    /// Opens a socket of `protocol` (network byte order) and binds it to
    /// `iface`.
    fn bind(iface: &str, protocol: u16) -> anyhow::Result<Self> {
        let name = CString::new(iface).context("interface name with a NUL byte")?;
        // SAFETY: `name` is a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("no interface {iface}"));
        }
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("opening an AF_PACKET socket");
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below complete it.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = i32::try_from(index).context("interface index out of range")?;
        // SAFETY: `addr` is a sockaddr_ll of the length passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("binding an AF_PACKET socket to {iface}"));
        }
        Ok(Self { fd })
    }

    /// Sets socket option `name` of `level` to `value`.
    fn set_option<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` is valid for `size_of::<T>()` bytes.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one whole frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for `frame.len()` bytes.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != frame.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    /// The next frame that arrived on the interface (frames the host sent
    /// are skipped), with the VLAN tag the kernel took off put back; `None`
    /// when none came within the socket's timeout.
    pub fn recv(&self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let mut frame = vec![0u8; 65_536];
            // SAFETY: all-zero values of these plain C structs are valid.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut control = [0u64; 16];
            let mut iov = libc::iovec {
                iov_base: frame.as_mut_ptr().cast(),
                iov_len: frame.len(),
            };
            // SAFETY: as above; the pointers set below complete it.
            let mut message: libc::msghdr = unsafe { mem::zeroed() };
            message.msg_name = (&raw mut from).cast();
            message.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            message.msg_iov = &raw mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = mem::size_of_val(&control);
            // SAFETY: every buffer `message` points to lives until the call returns.
            let len = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut message, 0) };
            if len < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(None),
                    _ => Err(e),
                };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            frame.truncate(len as usize);
            if let Some(tag) = stripped_tag(&message) {
                frame.splice(TAG_AT..TAG_AT, tag);
            }
            return Ok(Some(frame));
        }
    }
}

/// The VLAN tag (EtherType, then control information) the kernel took off
/// the frame `message` received, from its `PACKET_AUXDATA` message.
fn stripped_tag(message: &libc::msghdr) -> Option<[u8; 4]> {
    // SAFETY: `message` was filled by recvmsg; the CMSG macros walk its
    // control buffer within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(message);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == libc::PACKET_AUXDATA {
                let aux = libc::CMSG_DATA(cmsg)
                    .cast::<libc::tpacket_auxdata>()
                    .read_unaligned();
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID == 0 {
                    return None;
                }
                let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    aux.tp_vlan_tpid
                } else {
                    ETH_P_8021Q
                };
                let [a, b] = tpid.to_be_bytes();
                let [c, d] = aux.tp_vlan_tci.to_be_bytes();
                return Some([a, b, c, d]);
            }
            cmsg = libc::CMSG_NXTHDR(message, cmsg);
        }
    }
    None
}
