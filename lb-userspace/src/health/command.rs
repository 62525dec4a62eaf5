//! External commands of the health checks: the runner behind an `exec`
//! check (MISC_CHECK) and [`notify`], the command run when a backend goes
//! down or comes back. Each runs without a shell, bounded in time, killed
//! with its whole process group when it overstays.

use std::{
    net::IpAddr,
    os::unix::process::ExitStatusExt as _,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{process::Command, time};
use tracing::warn;

/// How long a notify command may run before it is killed.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the notify command `argv` with SERVICE BACKEND STATE appended
/// (STATE is "up" or "down"); bounded by a 10 s timeout (killed after it);
/// logs (`tracing::warn!`) a failure or non-zero exit; never panics; returns
/// whether it exited 0. An empty `argv` runs nothing and returns true.
pub async fn notify(argv: &[String], service: &str, backend: IpAddr, state: &str) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return true;
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .arg(service)
        .arg(backend.to_string())
        .arg(state);
    let why = match run_bounded(command, NOTIFY_TIMEOUT).await {
        Ok(status) if status.success() => return true,
        Ok(status) => describe_exit(status),
        Err(e) => e.describe(program),
    };
    warn!(
        service,
        %backend,
        state,
        "notify command {program:?} failed: {why}"
    );
    false
}

/// How a command run by [`run_bounded`] failed to finish.
#[derive(Debug)]
pub(super) enum RunError {
    /// It could not be started.
    Spawn(std::io::Error),
    /// Waiting for it failed.
    Wait(std::io::Error),
    /// It ran longer than allowed and was killed.
    TimedOut(Duration),
}

impl RunError {
    /// The failure in plain words, naming `program`.
    pub(super) fn describe(&self, program: &str) -> String {
        match self {
            RunError::Spawn(e) => format!("cannot run {program:?}: {}", io_text(e)),
            RunError::Wait(e) => format!("waiting for {program:?}: {}", io_text(e)),
            RunError::TimedOut(after) => {
                format!("command timed out after {after:?} (killed)")
            }
        }
    }
}

/// Runs `command` without a shell, stdin and output on /dev/null, in a
/// process group of its own that is killed after `timeout`.
pub(super) async fn run_bounded(
    mut command: Command,
    timeout: Duration,
) -> Result<ExitStatus, RunError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    match time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(RunError::Wait),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                // The whole group, so that a shell's children go too. The
                // group exists: its leader has not been reaped yet.
                // SAFETY: kill(2) with a negative pid only sends a signal.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            // Kills the leader if the group kill failed, and reaps it.
            let _ = child.kill().await;
            Err(RunError::TimedOut(timeout))
        }
    }
}

/// `command exited with status 1`, `command was killed by signal 9`.
pub(super) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("command exited with status {code}"),
        (None, Some(signal)) => format!("command was killed by signal {signal}"),
        (None, None) => format!("command ended with {status}"),
    }
}

/// `connection refused` rather than `Connection refused (os error 111)`.
pub(super) fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notify_appends_service_backend_and_state() {
        let out = std::env::temp_dir().join(format!("lb-notify-{}", std::process::id()));
        let script = format!("printf '%s\\n' \"$@\" > {}", out.display());
        let argv: Vec<String> = ["/bin/sh", "-c", &script, "notify", "first"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert!(notify(&argv, "web", "192.0.2.11".parse().unwrap(), "down").await);
        let written = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(written, "first\nweb\n192.0.2.11\ndown\n");

        let backend = "2001:db8::11".parse().unwrap();
        assert!(!notify(&["/bin/false".to_owned()], "web", backend, "up").await);
        assert!(!notify(&["/nonexistent/notify".to_owned()], "web", backend, "up").await);
        assert!(notify(&[], "web", backend, "up").await);
    }
}
