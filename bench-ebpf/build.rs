//! Makes cargo rebuild the object when bpf-linker changes (aya-template
//! convention) and lets the programs make misaligned loads and stores, as
//! lb's own object does (the generator copies 12 Ethernet bytes as an 8-
//! and a 4-byte move).
use which::which;

fn main() {
    let bpf_linker =
        which("bpf-linker").expect("bpf-linker not found on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
