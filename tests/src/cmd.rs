//! Running external tools (`ip`, `ethtool`, `nsenter`, `bpftool`, `lb`) with
//! errors that say what was run and what it printed.

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// The finished output of a command, whatever its exit status.
#[derive(Debug)]
pub struct Finished {
    /// The command line, for messages.
    pub command: String,
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Renders `cmd` as a shell-like line.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion and returns its output whatever its status.
pub fn output(cmd: &mut Command) -> anyhow::Result<Finished> {
    let command = describe(cmd);
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .with_context(|| format!("could not start `{command}`"))?;
    Ok(Finished {
        command,
        success: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Runs `cmd`, fails unless it exits 0, and returns its stdout.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = output(cmd)?;
    if !out.success {
        bail!(
            "`{}` failed ({}): {}{}",
            out.command,
            out.code
                .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}")),
            out.stderr.trim(),
            if out.stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" / stdout: {}", out.stdout.trim())
            }
        );
    }
    Ok(out.stdout)
}

/// Runs `program args...` (see [`run`]).
pub fn run_args(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new(program).args(args))
}
