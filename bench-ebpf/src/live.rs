//! The live-traffic benchmark's generator and sink (see `bench/src/live.rs`).
//!
//! The generator runs through `BPF_PROG_TEST_RUN` in live-frames mode on the
//! generator's veth: it gives each frame the Ethernet header a client's
//! frame has, stamps a flow number into its source address and port and
//! sends it out with `XDP_TX`, towards the director. The sink sits on the
//! same veth and counts what the director sends back, per destination MAC.

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};

/// Byte offset of the last octet of the IPv4 source address in the frames the
/// generator is given (Ethernet header, then an IPv4 header without options).
const GEN_SRC_ADDR_LAST: usize = 14 + 15;
/// Byte offset of the TCP/UDP source port (big endian) in those frames.
const GEN_SRC_PORT: usize = 14 + 20;

/// Generator setting, written by user space: index 0 is the number of
/// distinct flows to rotate over, 0 for a new flow in every frame.
#[btf_map]
static GEN_FLOWS: Array<u64, 1> = Array::new();

/// Generator setting, written by user space: the Ethernet header of a
/// client's frame (the director's MAC, the generator's, then IPv4's type).
#[btf_map]
static GEN_ETHERNET: Array<[u8; 14], 1> = Array::new();

/// Generator state: index 0 counts the frames generated so far.
#[btf_map]
static GEN_COUNTER: Array<u64, 1> = Array::new();

/// Frames the sink received, per last byte of their destination MAC.
#[btf_map]
static SINK_COUNTS: PerCpuArray<u64, 256> = PerCpuArray::new();

/// The generator: every frame leaves as a client sends it. Its Ethernet
/// header is set from `GEN_ETHERNET`: the test run recycles its pages
/// without rewriting them, so a frame would otherwise come back with the
/// header the forwarder gave it last time (a backend's MAC, which lb's
/// NIC filter does not accept; after Katran, which tunnels, the type is
/// the tail of its outer IP header). And flow `n` (the frame counter modulo
/// `GEN_FLOWS`, or the counter itself) gets source port `n mod 65536` and
/// source address last octet `n / 65536 mod 256`, so a new-flow stream
/// repeats a 5-tuple only every 16.7 M frames. Frames are sent out with
/// `XDP_TX`.
///
/// Like a NIC writing a received frame, the generator so writes both cache
/// lines of the headers a forwarder reads (the Ethernet header, and the
/// addresses and ports), on its own CPU.
///
/// The counter is updated without atomics: one test run, on one CPU, drives it.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + GEN_SRC_PORT + 2 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let (Some(counter), Some(flows), Some(ethernet)) = (
        GEN_COUNTER.get_ptr_mut(0),
        GEN_FLOWS.get(0),
        GEN_ETHERNET.get(0),
    ) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: map values are valid for the program's run; the frame holds
    // the bytes written (checked above: the port ends past the Ethernet
    // header). Misaligned accesses are allowed (see `build.rs`).
    unsafe {
        // The 14 bytes as two overlapping 8-byte moves.
        let (from, to) = (ethernet.as_ptr(), start as *mut u8);
        to.cast::<u64>()
            .write_unaligned(from.cast::<u64>().read_unaligned());
        to.add(6)
            .cast::<u64>()
            .write_unaligned(from.add(6).cast::<u64>().read_unaligned());
        let count = *counter;
        *counter = count + 1;
        let flow = if *flows == 0 { count } else { count % *flows };
        let frame = start as *mut u8;
        *frame.add(GEN_SRC_ADDR_LAST) = (flow >> 16) as u8;
        *frame.add(GEN_SRC_PORT) = (flow >> 8) as u8;
        *frame.add(GEN_SRC_PORT + 1) = flow as u8;
    }
    xdp_action::XDP_TX
}

/// The sink: counts every frame by the last byte of its destination MAC and
/// drops it. Being an XDP program on the generator's veth, it also lets the
/// director's `XDP_TX` frames through that veth pair at all.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 6 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the destination MAC is inside the frame (checked above).
    let last = unsafe { *((start + 5) as *const u8) };
    if let Some(count) = SINK_COUNTS.get_ptr_mut(u32::from(last)) {
        // SAFETY: a per-CPU value: no other program touches it concurrently.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}
