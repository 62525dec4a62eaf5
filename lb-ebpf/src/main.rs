//! The XDP data path of the `lb` direct-routing load balancer.
//!
//! Per packet: parse ([`parse`], [`vlan`]; an IP fragment takes its flow's
//! ports from its datagram's first fragment, [`fragment`]), look up the
//! service, find or create the flow ([`conntrack`], choosing a backend by
//! the service's scheduler on a miss, [`schedule`]; by a hash and without
//! a record for a SYN in flood mode, [`flood`]; a SYN the flow filter says
//! no table holds skips the tables, [`filter`]), rewrite the Ethernet
//! addresses and choose the NIC the frame leaves through ([`forward`]) and
//! count everything
//! ([`stats`]); [`balance`] runs these steps against the maps ([`maps`]).
//! An ICMP error about a flow goes to the flow's backend ([`icmp`]).
//! Only [`lb_xdp`] turns a [`Verdict`] into an XDP action.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only 64-bit atomic add bpfel-unknown-none offers"
)]

mod balance;
mod clock;
mod conntrack;
mod filter;
mod flood;
mod forward;
mod fragment;
mod icmp;
mod maps;
mod parse;
mod reset;
mod schedule;
mod stats;
mod verdict;
mod vlan;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{REASON_ICMP_FORWARDED, REASON_REJECTED};
use verdict::Verdict;

/// The load balancer: every frame arriving on a director NIC goes through here.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // DR rewrites MAC addresses only, so the length is the same before and after.
    let l3_len = parse::l3_len(&ctx);
    let (action, reason) = match balance::decide(&ctx, l3_len) {
        // Counted for its backend by `balance::balance_flow`.
        Verdict::Tx => return xdp_action::XDP_TX,
        Verdict::Redirect => return xdp_action::XDP_REDIRECT,
        Verdict::Pass(reason) => (xdp_action::XDP_PASS, reason),
        Verdict::Drop(reason) => (xdp_action::XDP_DROP, reason),
        Verdict::Reset => (xdp_action::XDP_TX, REASON_REJECTED),
        Verdict::IcmpToBackend { redirect: false } => (xdp_action::XDP_TX, REASON_ICMP_FORWARDED),
        Verdict::IcmpToBackend { redirect: true } => {
            (xdp_action::XDP_REDIRECT, REASON_ICMP_FORWARDED)
        }
    };
    stats::count_verdict(reason, l3_len);
    action
}

/// Frames that reach the trivial program are handed to the network stack.
/// The test bed attaches it to veth peers: a veth delivers `XDP_TX` and
/// `XDP_REDIRECT` frames only when its peer has an XDP program.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
