//! `cargo xtask bench [--quick] [--katran PATH] [-- ARGS]`: builds `lb-bench`
//! and runs it.
//!
//! Like the demo, the benchmark is a separate binary: xtask never depends on
//! the XDP build, so `cargo xtask setup` compiles on a machine that does not
//! have the eBPF toolchain yet. Results go to `<target dir>/bench/`
//! (`results.json`, `results.svg`) unless ARGS name another `--out`.

use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::{cargo, is_root, run as run_command, test::target_dir, workspace_root};

/// Options of `cargo xtask bench`.
#[derive(Args)]
pub struct Options {
    /// A smoke run: fewer packets and rounds. Its figures are NOT the published
    /// ones (those come from a full run).
    #[arg(long)]
    quick: bool,
    /// Katran's XDP balancer object (`balancer.bpf.o`, built from Katran's
    /// source: docs/performance.md, "Against Katran"): lb is measured
    /// against it in the same run.
    #[arg(long, value_name = "PATH")]
    katran: Option<PathBuf>,
    /// Arguments for `lb-bench` itself (see `cargo xtask bench -- --help`),
    /// e.g. `-- --skip-live --rounds 9 --cpu 1`.
    #[arg(last = true, value_name = "LB_BENCH_ARGS")]
    args: Vec<OsString>,
}

/// Builds `lb-bench` in release mode and runs it with the options passed on.
pub fn run(options: &Options) -> Result<()> {
    let wants_help = options.args.iter().any(|a| a == "--help" || a == "-h");
    if !is_root() && !wants_help {
        bail!(
            "the benchmarks load XDP programs and run them with BPF_PROG_TEST_RUN: they need \
             root (try `sudo -E cargo xtask bench`)"
        );
    }
    let root = workspace_root();
    run_command(
        cargo()
            .current_dir(root)
            .args(["build", "--release", "-p", "lb-bench"]),
    )?;
    let target = target_dir()?;
    let mut bench = Command::new(target.join("release").join("lb-bench"));
    bench
        .current_dir(root)
        .arg("--out")
        .arg(target.join("bench"));
    if options.quick {
        bench.arg("--quick");
    }
    if let Some(object) = &options.katran {
        // lb-bench runs in the workspace root: a relative path stays the user's.
        bench.arg("--katran").arg(std::path::absolute(object)?);
    }
    run_command(bench.args(&options.args))
}
