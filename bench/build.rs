//! Builds the reference XDP programs (`bench-ebpf`) and embeds them, as
//! lb-userspace/build.rs does for the load balancer itself.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bench-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the benchmark XDP programs (run `cargo xtask setup` if the toolchain is missing)",
    )
}
