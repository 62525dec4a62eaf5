//! The real `lb` binary: finding it, writing its config, running `lb run` on
//! the director as a guarded process, and the bpffs pin directory it owns.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Read},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{NetNs, Stats, cmd};

/// The line `lb run` prints on stderr once attached and provisioned.
pub const READY_LINE: &str = "lb: ready";

/// Where bpffs is mounted.
const BPFFS: &str = "/sys/fs/bpf";

/// How long `lb run` may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `lb run` may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the `lb` binary: `$LB_BIN`, else `<workspace>/target/release/lb`.
pub fn lb_binary() -> anyhow::Result<PathBuf> {
    // Relative paths are taken from the workspace root (cargo runs tests
    // from the crate directory).
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("lb-tests has no parent directory"))?;
    let path = match std::env::var_os("LB_BIN") {
        Some(p) => workspace.join(p),
        None => workspace.join("target/release/lb"),
    };
    if !path.is_file() {
        bail!(
            "the lb binary is missing at {}: build it with `cargo build --release -p lb-userspace` \
             or run `cargo xtask test`",
            path.display()
        );
    }
    Ok(path)
}

/// A directory removed (recursively, that exact path) on drop: config files,
/// logs.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/lbt-<tag>`.
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("lbt-{tag}"));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("test bed: could not remove {}: {e}", self.path.display());
        }
    }
}

/// The bpffs pin directory for a test tagged `tag`: `/sys/fs/bpf/lbt-<tag>`.
pub fn pin_path_for(tag: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/lbt-{tag}"))
}

/// A bpffs pin directory that `lb run` creates and should remove; on drop,
/// whatever is left there is removed (that exact path).
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    armed: bool,
}

impl PinDir {
    /// Guards (but does not create) the pin directory `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place on drop (another guard takes it over).
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Moves the guard duty to the returned value; this one is disarmed.
    pub fn take(&mut self) -> PinDir {
        let armed = std::mem::replace(&mut self.armed, false);
        PinDir {
            path: self.path.clone(),
            armed,
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.armed && self.path.exists() {
            eprintln!(
                "test bed: removing pin directory {} left behind by lb",
                self.path.display()
            );
            if let Err(e) = fs::remove_dir_all(&self.path) {
                eprintln!("test bed: could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// The transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A service's health check.
#[derive(Clone, Debug)]
pub enum Health {
    /// No check: backends are always up.
    None,
    /// TCP connect check, like keepalived's TCP_CHECK.
    Tcp {
        /// Time between checks.
        interval: Duration,
        /// Connect timeout.
        timeout: Duration,
        /// Port to connect to.
        port: u16,
        /// Consecutive failures before a backend goes down.
        fall: u32,
        /// Consecutive successes before it comes back up.
        rise: u32,
    },
    /// Any `[service.health]` table, as TOML lines (http, exec, notify, ...).
    Toml(String),
}

impl Health {
    /// Interval of [`Health::tcp`].
    pub const TCP_INTERVAL: Duration = Duration::from_secs(1);
    /// Failures before [`Health::tcp`] takes a backend down.
    pub const TCP_FALL: u32 = 2;
    /// Successes before [`Health::tcp`] brings a backend back up.
    pub const TCP_RISE: u32 = 2;

    /// A TCP connect check on `port`: every [`Health::TCP_INTERVAL`] with a
    /// 500 ms timeout, [`Health::TCP_FALL`] and [`Health::TCP_RISE`].
    pub fn tcp(port: u16) -> Self {
        Self::Tcp {
            interval: Self::TCP_INTERVAL,
            timeout: Duration::from_millis(500),
            port,
            fall: Self::TCP_FALL,
            rise: Self::TCP_RISE,
        }
    }
}

/// One `[[service]]` of an `lb` config.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Service name.
    pub name: String,
    /// Virtual IP.
    pub vip: IpAddr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Health check.
    pub health: Health,
    /// Real servers: (address, weight).
    pub backends: Vec<(IpAddr, u32)>,
    /// `no_backend = "reject"`: a SYN no backend can take gets a TCP RST.
    pub reject_without_backend: bool,
    /// `sorry_server`, when set.
    pub sorry_server: Option<IpAddr>,
    /// `quorum`, when not lb's default.
    pub quorum: Option<u32>,
    /// `persistence_timeout` and `persistence_netmask`, when set.
    pub persistence: Option<(Duration, u8)>,
    /// `vlan`: the VLAN ids of its frames, outermost first (none: untagged).
    pub vlan: Vec<u16>,
    /// More ports beside `port`, as inclusive ranges: written as `ports =
    /// [port, "FIRST-LAST", ...]` when not empty.
    pub more_ports: Vec<(u16, u16)>,
    /// `scheduler`: `wlc`, `rr`, `wrr`, `sh` or `mh`.
    pub scheduler: &'static str,
}

/// An `lb` config file.
#[derive(Clone, Debug)]
pub struct LbConfig {
    /// Director NICs to attach to.
    pub interfaces: Vec<String>,
    /// bpffs directory for the pins.
    pub pin_path: PathBuf,
    /// IPv4 connection table size (`[director] max_flows`).
    pub max_flows: u32,
    /// IPv6 connection table size (`[director] max_flows_v6`).
    pub max_flows_v6: u32,
    /// `[director] sweep_interval`, when not lb's default.
    pub sweep_interval: Option<Duration>,
    /// `[director.timeouts]` that are not lb's default: (state, timeout).
    pub timeouts: Vec<(&'static str, Duration)>,
    /// Services (all scheduled with `wlc`).
    pub services: Vec<ServiceConfig>,
    /// `[sync]`: connection sync with other directors, when set.
    pub sync: Option<SyncConfig>,
    /// `[announce]`'s routing table: VIPs announced for a BGP speaker,
    /// when set.
    pub announce_table: Option<u32>,
    /// `[director] syn_flood_rate` (new TCP flows per second on one CPU
    /// that start flood mode; 0: off), when not lb's default.
    pub syn_flood_rate: Option<u32>,
}

/// The `[sync]` section of an `lb` config: the directors of a VRRP pair
/// send each other their connection tables, so that the one taking over
/// the VIP knows every flow the other one scheduled.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// The NIC sync messages go out of and arrive on.
    pub interface: String,
    /// The other directors' addresses (unicast peers); empty with `group`.
    pub peers: Vec<IpAddr>,
    /// A multicast group instead of `peers`.
    pub group: Option<IpAddr>,
    /// The UDP port, when not lb's default ([`SyncConfig::DEFAULT_PORT`]).
    pub port: Option<u16>,
    /// The shared secret's file (see [`write_sync_key`]).
    pub key_file: PathBuf,
}

impl SyncConfig {
    /// lb's default sync port.
    pub const DEFAULT_PORT: u16 = 8848;

    /// The UDP port sync messages go to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(Self::DEFAULT_PORT)
    }
}

/// Writes the sync secret `key` to `dir/name` with mode 0600 (lb refuses
/// a key file that group or others may read) and returns its path.
pub fn write_sync_key(dir: &Path, name: &str, key: &[u8]) -> anyhow::Result<PathBuf> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};

    let path = dir.join(name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl LbConfig {
    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let ifaces: Vec<String> = self.interfaces.iter().map(|i| format!("{i:?}")).collect();
        let _ = writeln!(s, "[director]");
        let _ = writeln!(s, "interfaces = [{}]", ifaces.join(", "));
        let _ = writeln!(s, "pin_path = {:?}", self.pin_path.display().to_string());
        let _ = writeln!(s, "max_flows = {}", self.max_flows);
        let _ = writeln!(s, "max_flows_v6 = {}", self.max_flows_v6);
        let _ = writeln!(
            s,
            "control_socket = {:?}",
            self.control_socket().display().to_string()
        );
        if let Some(interval) = self.sweep_interval {
            let _ = writeln!(s, "sweep_interval = \"{}ms\"", interval.as_millis());
        }
        if let Some(rate) = self.syn_flood_rate {
            let _ = writeln!(s, "syn_flood_rate = {rate}");
        }
        if !self.timeouts.is_empty() {
            let _ = writeln!(s, "\n[director.timeouts]");
            for (state, timeout) in &self.timeouts {
                let _ = writeln!(s, "{state} = \"{}ms\"", timeout.as_millis());
            }
        }
        if let Some(sync) = &self.sync {
            let peers: Vec<String> = sync.peers.iter().map(|p| format!("\"{p}\"")).collect();
            let _ = writeln!(s, "\n[sync]");
            let _ = writeln!(s, "interface = {:?}", sync.interface);
            match sync.group {
                Some(group) => {
                    let _ = writeln!(s, "group = \"{group}\"");
                }
                None => {
                    let _ = writeln!(s, "peers = [{}]", peers.join(", "));
                }
            }
            if let Some(port) = sync.port {
                let _ = writeln!(s, "port = {port}");
            }
            let _ = writeln!(s, "key_file = {:?}", sync.key_file.display().to_string());
        }
        if let Some(table) = self.announce_table {
            let _ = writeln!(s, "\n[announce]\ntable = {table}");
        }
        for svc in &self.services {
            let _ = writeln!(s, "\n[[service]]");
            let _ = writeln!(s, "name = {:?}", svc.name);
            let _ = writeln!(s, "vip = \"{}\"", svc.vip);
            if svc.more_ports.is_empty() {
                let _ = writeln!(s, "port = {}", svc.port);
            } else {
                let ranges: Vec<String> = svc
                    .more_ports
                    .iter()
                    .map(|(first, last)| format!("\"{first}-{last}\""))
                    .collect();
                let _ = writeln!(s, "ports = [{}, {}]", svc.port, ranges.join(", "));
            }
            let protocol = match svc.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let _ = writeln!(s, "protocol = \"{protocol}\"");
            let _ = writeln!(s, "scheduler = \"{}\"", svc.scheduler);
            if svc.reject_without_backend {
                let _ = writeln!(s, "no_backend = \"reject\"");
            }
            if let Some(sorry) = svc.sorry_server {
                let _ = writeln!(s, "sorry_server = \"{sorry}\"");
            }
            if let Some(quorum) = svc.quorum {
                let _ = writeln!(s, "quorum = {quorum}");
            }
            if let Some((timeout, prefix)) = svc.persistence {
                let _ = writeln!(s, "persistence_timeout = \"{}ms\"", timeout.as_millis());
                let _ = writeln!(s, "persistence_netmask = {prefix}");
            }
            if !svc.vlan.is_empty() {
                let ids: Vec<String> = svc.vlan.iter().map(u16::to_string).collect();
                let _ = writeln!(s, "vlan = [{}]", ids.join(", "));
            }
            let _ = writeln!(s, "\n[service.health]");
            match &svc.health {
                Health::Toml(lines) => {
                    let _ = writeln!(s, "{lines}");
                }
                Health::None => {
                    let _ = writeln!(s, "kind = \"none\"");
                }
                Health::Tcp {
                    interval,
                    timeout,
                    port,
                    fall,
                    rise,
                } => {
                    let _ = writeln!(s, "kind = \"tcp\"");
                    let _ = writeln!(s, "interval = \"{}ms\"", interval.as_millis());
                    let _ = writeln!(s, "timeout = \"{}ms\"", timeout.as_millis());
                    let _ = writeln!(s, "port = {port}");
                    let _ = writeln!(s, "fall = {fall}");
                    let _ = writeln!(s, "rise = {rise}");
                }
            }
            for (address, weight) in &svc.backends {
                let _ = writeln!(s, "\n[[service.backend]]");
                let _ = writeln!(s, "address = \"{address}\"");
                let _ = writeln!(s, "weight = {weight}");
            }
        }
        s
    }

    /// The daemon's control socket: `<tmp>/<pin directory name>.sock`, unique
    /// per test like the pin directory.
    pub fn control_socket(&self) -> PathBuf {
        let name = self
            .pin_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lbt".to_owned());
        std::env::temp_dir().join(format!("{name}.sock"))
    }

    /// Writes the config to `dir/lb.toml` and returns that path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("lb.toml");
        fs::write(&path, self.to_toml()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// `command` run through `wrapper` (a program and its arguments, which end
/// where the wrapped command line goes).
fn wrapped(wrapper: &[&str], command: Command) -> Command {
    let mut outer = Command::new(wrapper[0]);
    outer
        .args(&wrapper[1..])
        .arg(command.get_program())
        .args(command.get_args());
    outer
}

/// Collected stdout+stderr of a process.
type Log = Arc<Mutex<String>>;

/// `lb run` running in the director's namespace. Dropping it sends SIGTERM
/// (SIGKILL after 10 s) and removes what it left in bpffs.
pub struct LbDaemon {
    child: Child,
    /// The command line, for messages.
    shown: String,
    lb: PathBuf,
    /// Whether `lb run` runs in a mount namespace of its own (see
    /// [`LbDaemon::launch_without_bpffs`]).
    own_mount_ns: bool,
    config_path: PathBuf,
    control_socket: PathBuf,
    log: Log,
    readers: Vec<JoinHandle<()>>,
    // Dropped after the process has been stopped (field order).
    pins: PinDir,
    _scratch: ScratchDir,
}

impl LbDaemon {
    /// Writes `config` to a scratch directory and starts `lb run --config
    /// FILE EXTRA...` in `director` through `nsenter --net` (bpffs stays
    /// visible); [`LbDaemon::wait_ready`] waits until it is ready.
    pub fn launch(
        lb: &Path,
        director: &NetNs,
        config: &LbConfig,
        tag: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(lb, director.command(lb), false, config, tag, extra_args)
    }

    /// Like [`LbDaemon::launch`], but `lb run` gets a mount namespace of its
    /// own in which nothing is mounted at `/sys/fs/bpf`, as on a fresh VM
    /// or container. Its pins live in that namespace only; [`LbDaemon::stats`]
    /// enters it to read them.
    pub fn launch_without_bpffs(
        lb: &Path,
        director: &NetNs,
        config: &LbConfig,
        tag: &str,
    ) -> anyhow::Result<Self> {
        let script =
            format!("while mountpoint -q {BPFFS}; do umount {BPFFS} || exit 1; done; exec \"$@\"");
        let command = wrapped(
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
                "sh",
            ],
            director.command(lb),
        );
        Self::spawn(lb, command, true, config, tag, &[])
    }

    /// Like [`LbDaemon::launch`], but `lb run` may open at most
    /// `open_files` files (soft and hard limit, so it cannot raise it), as
    /// on a host with a low limit.
    pub fn launch_with_open_files(
        lb: &Path,
        director: &NetNs,
        config: &LbConfig,
        tag: &str,
        open_files: u64,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let limit = format!("--nofile={open_files}:{open_files}");
        let command = wrapped(&["prlimit", &limit, "--"], director.command(lb));
        Self::spawn(lb, command, false, config, tag, extra_args)
    }

    /// Runs `command` (which ends in the `lb` binary) as `lb run --config
    /// FILE EXTRA...`.
    fn spawn(
        lb: &Path,
        mut command: Command,
        own_mount_ns: bool,
        config: &LbConfig,
        tag: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let scratch = ScratchDir::create(tag)?;
        let config_path = config.write(scratch.path())?;
        let pins = PinDir::new(config.pin_path.clone());
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = cmd::describe(&command);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting `{shown}`"))?;
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
        let daemon = Self {
            child,
            shown,
            lb: lb.to_owned(),
            own_mount_ns,
            config_path,
            control_socket: config.control_socket(),
            log,
            readers,
            pins,
            _scratch: scratch,
        };
        Ok(daemon)
    }

    /// Waits for the ready line ([`READY_TIMEOUT`]); fails if lb exits first.
    pub fn wait_ready(mut self) -> anyhow::Result<Self> {
        let shown = self.shown.clone();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.log().contains(READY_LINE) {
                return Ok(self);
            }
            if let Some(status) = self.child.try_wait()? {
                self.join_readers();
                bail!(
                    "`{shown}` exited ({status}) before printing {READY_LINE:?}; its output:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "`{shown}` did not print {READY_LINE:?} within {READY_TIMEOUT:?}; its output:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `lb` binary it runs.
    pub fn binary(&self) -> &Path {
        &self.lb
    }

    /// Its bpffs pin directory.
    pub fn pin_path(&self) -> &Path {
        self.pins.path()
    }

    /// A command that runs the `lb` binary where it sees this daemon's
    /// pins: in the daemon's own mount namespace if it has one.
    pub fn lb_command(&self) -> Command {
        if !self.own_mount_ns {
            return Command::new(&self.lb);
        }
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.child.id()))
            .arg("--")
            .arg(&self.lb);
        c
    }

    /// `lb stats --json` for this daemon.
    pub fn stats(&self) -> anyhow::Result<Stats> {
        Stats::query(self.lb_command(), self.pin_path())
    }

    /// `lb stats --config FILE` (the table, with service names) for this daemon.
    pub fn stats_table(&self) -> anyhow::Result<String> {
        cmd::run(
            Command::new(&self.lb)
                .arg("stats")
                .arg("--config")
                .arg(&self.config_path),
        )
    }

    /// Polls `lb stats --json` until `ready` accepts it or `timeout` passes;
    /// returns the last stats either way, and whether `ready` accepted them.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        ready: impl Fn(&Stats) -> bool,
    ) -> anyhow::Result<(Stats, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats()?;
            if ready(&stats) {
                return Ok((stats, true));
            }
            if Instant::now() > deadline {
                return Ok((stats, false));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every backend of every service is up (a sorry server
    /// standing by), at most `timeout`;
    /// returns those stats, or fails with the last ones.
    pub fn wait_all_up(&self, timeout: Duration) -> anyhow::Result<Stats> {
        let (stats, all_up) = self.wait_stats(timeout, |s| {
            s.services.iter().all(|svc| {
                svc.backends
                    .iter()
                    .all(|b| b.state == "up" || b.state == "standby")
            })
        })?;
        if !all_up {
            bail!("backends not all up {timeout:?} after lb was ready: {stats:#?}");
        }
        Ok(stats)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: `pid` is our own child, which has not been waited for.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The config file it runs with (rewrite it, then [`LbDaemon::ctl`] `reload`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Runs `lb ARGS... --socket SOCKET` against this daemon's control socket.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<cmd::Finished> {
        cmd::output(
            Command::new(&self.lb)
                .args(args)
                .arg("--socket")
                .arg(&self.control_socket),
        )
    }

    /// Waits until the daemon's output contains `text`, at most `timeout`.
    pub fn wait_log(&self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if Instant::now() > deadline {
                bail!(
                    "lb did not log {text:?} within {timeout:?}; its output:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL, leaving its pinned data path behind
    /// (a later [`LbDaemon::launch`] with the same pin path adopts it, and
    /// its guard removes the pins); returns everything it printed.
    pub fn kill(mut self) -> anyhow::Result<String> {
        self.child.kill()?;
        self.child.wait()?;
        self.join_readers();
        self.pins.disarm();
        Ok(self.log())
    }

    /// Waits (at most 10 s) for the daemon to exit by itself, e.g. after
    /// `lb stop`; returns its exit status, its output and the guard of its
    /// pin directory (which `lb stop --keep-datapath` leaves in place).
    pub fn wait_exit(mut self) -> anyhow::Result<(ExitStatus, String, PinDir)> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.join_readers();
                return Ok((status, self.log(), self.pins.take()));
            }
            if Instant::now() > deadline {
                bail!(
                    "lb did not exit within {STOP_TIMEOUT:?}; its output:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after 10 s); returns the
    /// exit status and everything the daemon printed.
    pub fn stop(mut self) -> anyhow::Result<(ExitStatus, String)> {
        let status = self.terminate()?;
        Ok((status, self.log()))
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            self.join_readers();
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: `pid` is our own child, not yet reaped (try_wait said it runs).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "test bed: lb (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}: killing it"
                );
                self.child.kill()?;
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        self.join_readers();
        Ok(status)
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for LbDaemon {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("test bed: stopping lb: {e:#}");
        }
    }
}

/// Runs `cmd` to completion, killing it after `timeout`.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<cmd::Finished> {
    let command = cmd::describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if Instant::now() > deadline {
            child.kill()?;
            break (child.wait()?, true);
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if timed_out {
        bail!("`{command}` still ran after {timeout:?} and was killed; stderr:\n{stderr}");
    }
    Ok(cmd::Finished {
        command,
        success: status.success(),
        code: status.code(),
        stdout,
        stderr,
    })
}
