//! `lb-bench`: measures lb's XDP data path against reference programs.
//! Run through `cargo xtask bench`.

/// The reference programs (`bench-ebpf`), embedded by build.rs.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));

fn main() {
    println!("{} bytes of reference programs", BENCH_OBJECT.len());
}
