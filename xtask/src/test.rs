//! `cargo xtask test` (build `lb`, run every test) and `cargo xtask lint`.
//!
//! Tests and lints are separate: a lint finding never hides a test result.

use std::{env, ffi::OsString, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{cargo, is_root, output, run as run_cmd, workspace_root};

/// Options of `cargo xtask test`.
#[derive(Args)]
pub struct Options {
    /// Number of test threads per test binary (default: the test harness decides).
    #[arg(long, value_name = "N")]
    test_threads: Option<usize>,
    /// Extra arguments for `cargo test`; a second `--` starts the test harness's
    /// own arguments (e.g. `-- -p lb-tests some_test -- --nocapture`).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    extra: Vec<OsString>,
}

/// The workspace members that only build for `bpfel-unknown-none` (built by
/// the build.rs of lb-userspace and lb-bench); the workspace's
/// `default-members` leave them out of host builds, tests and clippy.
const BPF_CRATES: [&str; 2] = ["lb-ebpf", "bench-ebpf"];

/// Prepares the machine where it is not ([`crate::setup::prepare`]), builds
/// the `lb` binary and runs `cargo test` on the workspace with `LB_BIN`
/// pointing at it.
pub fn run(options: &Options) -> Result<()> {
    let root = workspace_root();
    report_root_tests()?;
    crate::setup::prepare()?;

    println!("==> building lb (release, with the embedded XDP program)");
    run_cmd(
        cargo()
            .args(["build", "--release", "-p", "lb-userspace"])
            .current_dir(root),
    )?;
    let lb_bin = target_dir()?.join("release").join("lb");
    if !lb_bin.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            lb_bin.display()
        );
    }

    println!("==> running the tests");
    let (cargo_args, harness_args) = split_extra(&options.extra);
    let mut test = cargo();
    // Without `-p`, cargo tests the workspace's default members: every host
    // crate, none of the XDP crates (they only build for the BPF target).
    test.arg("test")
        .arg("--release")
        .args(cargo_args)
        .env("LB_BIN", &lb_bin)
        .current_dir(root);
    if options.test_threads.is_some() || !harness_args.is_empty() {
        test.arg("--");
        if let Some(threads) = options.test_threads {
            test.arg(format!("--test-threads={threads}"));
        }
        test.args(harness_args);
    }
    run_cmd(&mut test)?;
    println!("==> all tests passed");
    Ok(())
}

/// Runs `cargo fmt --check` and clippy with warnings denied, on the host crates
/// and, for its own target with the nightly toolchain, on the XDP crate. Runs
/// every check, then fails if any failed.
pub fn lint() -> Result<()> {
    let root = workspace_root();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    let mut host = cargo();
    host.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    // `+nightly` needs rustup's `cargo` proxy, not the toolchain binary in $CARGO.
    let mut bpf = Command::new("cargo");
    bpf.args(["+nightly", "clippy", "--release"])
        .args(BPF_CRATES.iter().flat_map(|c| ["-p", c]))
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]);

    let mut failed = Vec::new();
    for (name, mut cmd) in [
        ("rustfmt", fmt),
        ("clippy (host)", host),
        ("clippy (XDP)", bpf),
    ] {
        if let Err(err) = run_cmd(cmd.current_dir(root)) {
            eprintln!("error: {err:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("==> lints passed");
    Ok(())
}

/// Prints which tests need root, and refuses to run without root under CI
/// (where skipped tests would pass silently).
fn report_root_tests() -> Result<()> {
    let dir = workspace_root().join("tests").join("tests");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .map(|entries| {
            // Each test binary: a file `NAME.rs`, or a folder `NAME/` with a `main.rs`.
            entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let name = entry.file_name().into_string().ok()?;
                    if name.ends_with(".rs") {
                        Some(name)
                    } else if entry.path().join("main.rs").is_file() {
                        Some(format!("{name}/"))
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    println!(
        "==> the tests that need root (network namespaces, XDP programs, bpffs) are in \
         tests/tests/ (crate lb-tests): {}; without root each prints \
         `SKIPPED (needs root)` and passes",
        if files.is_empty() {
            "(none yet)".to_owned()
        } else {
            files.join(", ")
        }
    );
    if is_root() {
        return Ok(());
    }
    if env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        bail!(
            "CI is set but this is not root: the root-only tests would be skipped, \
             so CI must run `cargo xtask test` as root"
        );
    }
    let rule = "!".repeat(76);
    eprintln!(
        "\n{rule}\n\
         !!  NOT ROOT: the root-only tests listed above will be SKIPPED.\n\
         !!  They will show as passed without checking anything. To run them:\n\
         !!      sudo -E env \"PATH=$PATH\" cargo xtask test\n\
         {rule}\n"
    );
    Ok(())
}

/// Splits the arguments after `--` at a second `--`: before it for `cargo
/// test`, after it for the test harness.
fn split_extra(extra: &[OsString]) -> (&[OsString], &[OsString]) {
    match extra.iter().position(|arg| arg == "--") {
        Some(at) => (&extra[..at], &extra[at + 1..]),
        None => (extra, &[]),
    }
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR` and `build.target-dir`).
pub(crate) fn target_dir() -> Result<PathBuf> {
    let metadata = output(
        cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(workspace_root()),
    )?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("`cargo metadata` printed invalid JSON")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` names no target_directory")
}
