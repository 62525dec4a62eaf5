//! Packet fixtures for the XDP data path, in the style of katran's
//! `lib/testing/fixtures`, run through the harness of
//! [`lb_tests::xdp_case`] with frames from [`lb_tests::frame`].
//!
//! Every case loads a fresh `Datapath` (connection tables of
//! [`CAPACITY`](lb_tests::xdp_case::CAPACITY) entries), provisions its maps
//! through the same `lb::datapath` functions the daemon uses, runs
//! hand-built frames through the real program with `BPF_PROG_TEST_RUN` and
//! compares the verdict, the output frame (built independently from the
//! input: for `XDP_TX` the input with its two MAC addresses replaced, for
//! every other verdict the input itself), the per-reason verdict counters
//! (one packet, frame length minus 14 bytes, under exactly one reason; a
//! forwarded frame's IP length, without its VLAN tags) and,
//! where the case is about them, the connection tables (IPv4 and IPv6), the
//! per-CPU flow caches, the per-backend connection counts and the
//! per-service and per-backend statistics. A mismatch panics with the case
//! name and the input, expected and actual frames in hex.
//!
//! Stateless cases (one frame on a fresh data path) are tables of
//! [`Fixture`](lb_tests::xdp_case::Fixture)s, each run on its own data path;
//! a table reports every failing case by name. Cases that depend on what
//! earlier packets left behind (flow states, the scheduler, the caches, the
//! sweeper) are functions.
//!
//! Without `ctx_in`, the kernel runs the program as if the frame had arrived
//! on the loopback device; backends are provisioned as reached through that
//! NIC, with the director NIC's MAC. The redirect cases run in a namespace
//! of their own, with veths as director NICs, and name the NIC a frame
//! arrives on in `ctx_in`.
//!
//! The program needs root (or CAP_BPF + CAP_NET_ADMIN). Without it every test
//! prints `SKIPPED (needs root)` to stderr and returns, unless `CI` is set, in
//! which case it fails.

mod cache_view;
mod counters;
mod families;
mod flood_guard;
mod floods;
mod flow_cache;
mod flow_filter;
mod fragments;
mod headers;
mod icmp;
mod maps;
mod new_flows;
mod not_for_us;
mod pending_sets;
mod persistence;
mod ports;
mod raw_keys;
mod redirect;
mod schedulers;
mod selection;
mod sweeper;
mod sync;
mod vlan;
