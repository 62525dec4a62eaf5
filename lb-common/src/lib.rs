//! The ABI shared by the XDP program (`lb-ebpf`) and the `lb` control plane.
//!
//! Everything that crosses the kernel/user boundary lives here: map names and
//! size limits, the `#[repr(C)]` keys and values of every map, and the two
//! pieces of per-packet logic that both sides must agree on exactly: the TCP
//! state machine ([`conn_state`]) and weighted least-connection selection
//! ([`wlc`]). The XDP program calls them; host unit tests exercise them.
//!
//! Map types hold only integers and byte arrays, with explicit padding, so
//! their layout is identical on both sides and `bpftool map dump` prints every
//! field by name.
#![no_std]

pub mod conn_state;
pub mod flow;
pub mod wlc;

pub use flow::*;
