//! Builds the XDP program (`lb-ebpf`) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, so `cargo build` is all a user runs. There is no
//! prebuilt fallback: a missing toolchain is an error naming `cargo xtask setup`.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the XDP program failed; if the nightly toolchain, its rust-src \
         or bpf-linker is missing, run `cargo xtask setup`",
    )
}
