//! The outcome of one frame, which only the entry point turns into an XDP
//! action.

/// What to do with a packet, and why.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Rewritten for a backend; send it back out of the ingress NIC.
    Tx,
    /// Rewritten for a backend on-link through another director NIC, which
    /// `bpf_redirect_map` has made the frame's target: send it out there.
    Redirect,
    /// Not ours: hand it to the director's network stack.
    Pass(u32),
    /// Ours, but it cannot be forwarded.
    Drop(u32),
    /// A SYN no backend can take, turned into a TCP RST to the client: send
    /// it back out of the ingress NIC.
    Reset,
    /// An ICMP error about a known flow, rewritten for the flow's backend:
    /// send it back out of the ingress NIC, or (`redirect`) out of the
    /// backend's NIC as [`Verdict::Redirect`].
    IcmpToBackend {
        /// Redirected to another director NIC.
        redirect: bool,
    },
}
