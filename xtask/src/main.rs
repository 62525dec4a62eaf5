//! Developer tasks for `lb`, run as `cargo xtask <task>`:
//!
//! - `setup`: install what building and testing needs (Debian packages, the
//!   nightly toolchain with `rust-src`, a `bpf-linker` matching nightly's LLVM);
//! - `test`: build `lb` and run every test of the workspace;
//! - `lint`: `cargo fmt --check` and clippy on the host crates and the XDP crate;
//! - `demo`: the end-to-end demonstration in network namespaces;
//! - `bench`: the data-path benchmarks (`lb-bench`), as a table, JSON and SVG.
//!
//! None of this is needed for a plain `cargo build` once the toolchain is set up.

mod bench;
mod demo;
mod setup;
mod test;

use std::{
    ffi::OsStr,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Parser)]
#[command(
    bin_name = "cargo xtask",
    about = "Developer tasks for lb: setup, tests, lints, the demo and the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// The tasks `cargo xtask` runs.
#[derive(Subcommand)]
enum Task {
    /// Prepare this machine: Debian packages, the nightly toolchain with rust-src,
    /// and a bpf-linker built against nightly's LLVM (idempotent, fast when done).
    Setup(setup::Options),
    /// Prepare what is missing (as setup does), build lb (with its embedded XDP
    /// program) and run all tests of the workspace.
    Test(test::Options),
    /// Check formatting and run clippy (host crates and the XDP crate), denying warnings.
    Lint,
    /// Prepare what is missing (as setup does), then run the end-to-end demo in
    /// network namespaces.
    Demo,
    /// Benchmark the XDP data path (root): table on stdout, JSON and SVG in target/bench.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup(options) => setup::run(&options),
        Task::Test(options) => test::run(&options),
        Task::Lint => test::lint(),
        Task::Demo => demo::run(),
        Task::Bench(options) => bench::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a directory of the workspace")
}

/// Whether this process runs with effective user id 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A `cargo` command for the toolchain that runs xtask (`$CARGO`), falling back
/// to `cargo` on PATH.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cmd` as a shell-like line for the log, with the environment it sets.
fn display(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(line, "{}={} ", key.display(), value.display());
        }
    }
    let program = Path::new(cmd.get_program());
    // Show `cargo`, not the full path of the toolchain's binary.
    line.push_str(
        &program
            .file_name()
            .unwrap_or(program.as_os_str())
            .display()
            .to_string(),
    );
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.display().to_string());
    }
    line
}

/// Prints `cmd`, runs it with inherited stdio, and fails unless it succeeds.
fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; fails (with its stderr) unless it succeeds.
fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed invalid UTF-8"))
}

/// The first executable file called `name` in a directory of PATH.
fn find_on_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name.as_ref()))
        .find(|path| {
            path.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}
