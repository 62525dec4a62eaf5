//! `cargo xtask demo`: prepares the machine where it is not (see
//! `setup::prepare`), builds `lb`, then runs the `lb-demo` binary of the
//! `lb-tests` crate (the namespace test bed lives there), which drives real
//! traffic through the real `lb run` and cleans up after itself.
//!
//! The demo is a separate binary so that xtask itself never depends on the
//! XDP build: `cargo xtask setup` must compile on a machine that does not
//! have the eBPF toolchain yet.

use anyhow::bail;

use crate::{cargo, is_root, run as run_command, workspace_root};

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo builds network namespaces and attaches XDP programs: it needs root \
             (try `sudo -E cargo xtask demo`)"
        );
    }
    crate::setup::prepare()?;
    let root = workspace_root();
    run_command(
        cargo()
            .current_dir(root)
            .args(["build", "--release", "-p", "lb-userspace"]),
    )?;
    run_command(
        cargo()
            .current_dir(root)
            .env("LB_BIN", root.join("target/release/lb"))
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "lb-tests",
                "--bin",
                "lb-demo",
            ]),
    )
}
