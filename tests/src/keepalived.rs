//! Real keepalived doing VRRP inside a namespace of the bed, as the VIP
//! manager of a pair of directors ([`crate::TestBed::build_pair`]).
//!
//! Each [`Keepalived`] is one `keepalived` (Debian's, 2.2.7 here) run in
//! the foreground in one director's namespace with a config, pid files and
//! a log of its own in the test's scratch directory:
//!
//! ```text
//! ip netns exec NS keepalived -n -l -D -f CONF -p PID -r VRRP_PID -c CHECK_PID
//! ```
//!
//! It is stopped (SIGTERM, then SIGKILL) and its VRRP and checker children
//! are killed by the pids it wrote, never by name: dropping the guard does
//! it, so a failing test leaves no keepalived behind.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{NetNs, cmd};

/// How long keepalived may take to exit after SIGTERM before it is killed
/// (it sends a last advert of priority 0 and removes its addresses first).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One `vrrp_instance` of a keepalived config (no `virtual_server`:
/// the load balancing is lb's).
#[derive(Clone, Debug)]
pub struct VrrpInstance {
    /// `global_defs { router_id }`: the host's name in logs.
    pub router_id: String,
    /// The instance's name.
    pub name: String,
    /// `state MASTER` (true) or `state BACKUP`.
    pub master: bool,
    /// The NIC VRRP runs on.
    pub interface: String,
    /// `virtual_router_id`, the same on every member.
    pub virtual_router_id: u8,
    /// `priority`: the highest one alive holds the addresses.
    pub priority: u8,
    /// `advert_int`, in seconds.
    pub advert_int: u32,
    /// `virtual_ipaddress` entries, e.g. `192.0.2.200/32 dev lbd0`.
    pub addresses: Vec<String>,
}

impl VrrpInstance {
    /// The keepalived config holding just this instance. `nopreempt` is
    /// not set: a member of higher priority coming back takes the
    /// addresses back (failback).
    pub fn to_conf(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "global_defs {{");
        let _ = writeln!(s, "    router_id {}", self.router_id);
        let _ = writeln!(s, "}}\n");
        let _ = writeln!(s, "vrrp_instance {} {{", self.name);
        let state = if self.master { "MASTER" } else { "BACKUP" };
        let _ = writeln!(s, "    state {state}");
        let _ = writeln!(s, "    interface {}", self.interface);
        let _ = writeln!(s, "    virtual_router_id {}", self.virtual_router_id);
        let _ = writeln!(s, "    priority {}", self.priority);
        let _ = writeln!(s, "    advert_int {}", self.advert_int);
        let _ = writeln!(s, "    virtual_ipaddress {{");
        for address in &self.addresses {
            let _ = writeln!(s, "        {address}");
        }
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "}}");
        s
    }
}

/// Collected output of a keepalived.
type Log = Arc<Mutex<String>>;

/// A keepalived running in a namespace. Dropping it stops it (see the
/// module docs).
pub struct Keepalived {
    child: Option<Child>,
    /// The namespace, for messages.
    ns: String,
    /// Its files: `<dir>/<name>.conf`, `.pid`, `.vrrp.pid`, `.check.pid`.
    conf: PathBuf,
    vrrp_pid: PathBuf,
    check_pid: PathBuf,
    log: Log,
    readers: Vec<JoinHandle<()>>,
}

impl Keepalived {
    /// Writes `instance`'s config as `dir/<name>.conf` and starts keepalived
    /// with it in `ns`, its pid files beside the config. Earlier pid files
    /// of that name are removed first (keepalived refuses to start while
    /// the pid in one is alive).
    pub fn start(
        ns: &NetNs,
        dir: &Path,
        name: &str,
        instance: &VrrpInstance,
    ) -> anyhow::Result<Self> {
        let conf = dir.join(format!("{name}.conf"));
        let pid = dir.join(format!("{name}.pid"));
        let vrrp_pid = dir.join(format!("{name}.vrrp.pid"));
        let check_pid = dir.join(format!("{name}.check.pid"));
        fs::write(&conf, instance.to_conf())
            .with_context(|| format!("writing {}", conf.display()))?;
        for file in [&pid, &vrrp_pid, &check_pid] {
            let _ = fs::remove_file(file);
        }
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns.name(), "keepalived", "-n", "-l", "-D"])
            .arg("-f")
            .arg(&conf)
            .arg("-p")
            .arg(&pid)
            .arg("-r")
            .arg(&vrrp_pid)
            .arg("-c")
            .arg(&check_pid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = cmd::describe(&command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting `{shown}` (is keepalived installed?)"))?;
        let log = Log::default();
        let readers = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        })
        .collect();
        let mut keepalived = Self {
            child: Some(child),
            ns: ns.name().to_owned(),
            conf,
            vrrp_pid,
            check_pid,
            log,
            readers,
        };
        // A bad config or a missing binary ends it at once.
        thread::sleep(Duration::from_millis(200));
        if let Some(child) = keepalived.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            keepalived.child = None;
            keepalived.join_readers();
            bail!(
                "keepalived in {} exited at once ({status}); its output:\n{}",
                keepalived.ns,
                keepalived.log()
            );
        }
        Ok(keepalived)
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Its config file.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The pid of the main keepalived process (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops it as an operator's `systemctl stop` does: SIGTERM to its pid
    /// (the VRRP child sends a last advert of priority 0 and removes the
    /// addresses), SIGKILL after 10 s. Returns everything it printed.
    pub fn stop(&mut self) -> anyhow::Result<String> {
        self.terminate()?;
        Ok(self.log())
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let pid = libc::pid_t::try_from(child.id())?;
            // SAFETY: `pid` is our own child, not yet reaped (try_wait said it runs).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "test bed: keepalived (pid {pid}) in {} ignored SIGTERM for \
                         {STOP_TIMEOUT:?}: killing it",
                        self.ns
                    );
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        // Its children normally exit with it; kill any left, by the pids
        // they wrote, if those are still keepalived processes.
        for file in [&self.vrrp_pid, &self.check_pid] {
            if let Some(pid) = keepalived_pid(file) {
                eprintln!(
                    "test bed: keepalived child {pid} ({}) outlived its parent: killing it",
                    file.display()
                );
                // SAFETY: plain kill(2) of a pid just checked to be a keepalived.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        self.join_readers();
        Ok(())
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("test bed: stopping keepalived in {}: {e:#}", self.ns);
        }
    }
}

/// The pid in pid file `file` if that process is alive and a keepalived.
fn keepalived_pid(file: &Path) -> Option<libc::pid_t> {
    let pid: libc::pid_t = fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let program = cmdline.split(|&b| b == 0).next()?;
    let alive = Path::new(std::str::from_utf8(program).ok()?)
        .file_name()
        .is_some_and(|n| n == "keepalived");
    // A zombie has an empty cmdline, so it is not counted.
    alive.then_some(pid)
}

/// Whether `address` is on NIC `iface` in namespace `ns`.
pub fn holds_address(ns: &NetNs, iface: &str, address: IpAddr) -> anyhow::Result<bool> {
    let out = ns.ip(&["-o", "addr", "show", "dev", iface])?;
    let wanted = address.to_string();
    Ok(out.lines().any(|line| {
        line.split_whitespace()
            .skip_while(|w| *w != "inet" && *w != "inet6")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .is_some_and(|a| a == wanted)
    }))
}

/// Waits until `holds(ns)` of each namespace in `expect` is the given
/// value (`address` on `iface` there or not), at most `timeout`; returns
/// how long it took.
pub fn wait_address(
    expect: &[(&NetNs, bool)],
    iface: &str,
    address: IpAddr,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let mut now = Vec::with_capacity(expect.len());
        for (ns, _) in expect {
            now.push(holds_address(ns, iface, address)?);
        }
        if expect.iter().zip(&now).all(|((_, want), got)| want == got) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let state: Vec<String> = expect
                .iter()
                .zip(&now)
                .map(|((ns, want), got)| {
                    format!("{}: holds {address}: {got} (expected {want})", ns.name())
                })
                .collect();
            bail!(
                "{address} on {iface} not where expected after {timeout:?}: {}",
                state.join("; ")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}
