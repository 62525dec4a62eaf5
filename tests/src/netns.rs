//! A named network namespace that is deleted on drop, and ways to run code and
//! tools inside it without leaving the original mount namespace (so bpffs pins
//! under /sys/fs/bpf stay visible; `ip netns exec` would hide them).

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, anyhow};

use crate::cmd;

/// A named network namespace (`ip netns add NAME`), deleted (`ip netns del
/// NAME`, that exact name) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` and brings its `lo` up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        cmd::run_args("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, e.g. for `nsenter --net=PATH`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME args...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        cmd::run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace through `nsenter
    /// --net` (the mount namespace, and so bpffs, stays the caller's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args...` inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        cmd::run(self.command(program).args(args))
    }

    /// Sets sysctls (`("net.ipv4.conf.all.arp_ignore", "1")`) in the namespace.
    pub fn sysctls(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.run(move || {
            for (key, value) in &settings {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                fs::write(&path, value).with_context(|| format!("sysctl {key}={value}"))?;
            }
            Ok(())
        })
    }

    /// Runs `f` on a new thread that has entered the namespace, and waits for it.
    ///
    /// Sockets created by `f` belong to the namespace for good, whichever
    /// thread uses them later.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        run_in(&self.path(), f)
    }

    /// Spawns a thread named `thread_name` that enters the namespace and runs `f`.
    pub fn spawn<R: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<R>>> {
        spawn_in(&self.path(), thread_name, f)
    }
}

/// Runs `f` on a new thread inside the namespace bound at `path` (e.g.
/// `/var/run/netns/NAME`), and waits for it.
pub fn run_in<R: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
) -> anyhow::Result<R> {
    spawn_in(path, "in-netns", f)?
        .join()
        .map_err(|_| anyhow!("a thread in network namespace {} panicked", path.display()))?
}

/// Spawns a thread named `thread_name` that enters the namespace bound at
/// `path` and runs `f`.
pub fn spawn_in<R: Send + 'static>(
    path: &Path,
    thread_name: &str,
    f: impl FnOnce() -> anyhow::Result<R> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<R>>> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let shown = path.display().to_string();
    thread::Builder::new()
        .name(thread_name.chars().take(15).collect())
        .spawn(move || {
            enter(&ns).with_context(|| format!("entering network namespace {shown}"))?;
            drop(ns);
            f()
        })
        .context("spawning a thread")
}

/// The ifindex of `iface` in the calling thread's network namespace.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: `name` is a valid C string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()).with_context(|| format!("no interface {iface}")),
        index => Ok(index),
    }
}

/// Moves the calling thread into the network namespace open as `ns`.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open namespace file; setns only changes this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = cmd::run_args("ip", &["netns", "del", &self.name]) {
            eprintln!(
                "test bed: could not delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}
