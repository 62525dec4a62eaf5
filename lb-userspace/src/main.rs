//! `lb`: an XDP direct-routing layer-4 load balancer (LVS-DR style).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    str::FromStr,
};

use clap::{Parser, Subcommand};
use lb::{
    config::{Config, SyncOverrides, XdpMode},
    control::Request,
    daemon,
    datapath::maps::Maps,
    inspect::stats::Snapshot,
};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "XDP direct-routing layer-4 load balancer"
)]
struct Cli {
    /// Log format: text (human-readable lines) or json (one JSON object per line).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How `lb` writes its logs (to stderr; the level comes from `RUST_LOG`, default `info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Where to find a running daemon's control socket.
#[derive(clap::Args)]
struct SocketArgs {
    /// The control socket (default: `[director] control_socket` of --config, else /run/lb/lb.sock).
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Take the control socket from this config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> anyhow::Result<PathBuf> {
        Ok(match (&self.socket, &self.config) {
            (Some(socket), _) => socket.clone(),
            (None, Some(config)) => Config::load(config)?.director.control_socket,
            (None, None) => PathBuf::from(lb::control::DEFAULT_SOCKET),
        })
    }

    /// Sends `request` to the daemon; fails with its message if it refused.
    fn send(&self, request: Request) -> anyhow::Result<()> {
        let reply = lb::control::send(&self.path()?, &request)?;
        if !reply.ok {
            anyhow::bail!("{}", reply.message);
        }
        println!("{}", reply.message);
        Ok(())
    }
}

/// The backend a live change acts on, and the daemon to ask.
/// `lb run`'s connection-sync flags: each overrides its `[sync]` field;
/// without a `[sync]` table, --sync-interface, --sync-key and --sync-peer
/// (or --sync-group) turn sync on.
#[derive(clap::Args)]
struct SyncArgs {
    /// The NIC sync messages use (`[sync] interface`).
    #[arg(long, value_name = "NIC")]
    sync_interface: Option<String>,
    /// Another director to sync flows with, by unicast (repeat for each;
    /// `[sync] peers`).
    #[arg(long, value_name = "ADDR", conflicts_with = "sync_group")]
    sync_peer: Vec<IpAddr>,
    /// A multicast group to sync flows on (`[sync] group`).
    #[arg(long, value_name = "GROUP")]
    sync_group: Option<IpAddr>,
    /// The UDP port of sync messages (`[sync] port`, default 8848).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    sync_port: Option<u16>,
    /// The shared key file, mode 600 (`[sync] key_file`).
    #[arg(long, value_name = "FILE")]
    sync_key: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BackendTarget {
    /// Service name.
    #[arg(long)]
    service: String,
    /// Real server address.
    #[arg(long)]
    address: IpAddr,
    #[command(flatten)]
    socket: SocketArgs,
}

/// Live changes to the backends of a running director.
#[derive(Subcommand)]
enum BackendCommand {
    /// Add a backend to a service (or bring back one being removed, with its flows).
    Add {
        #[command(flatten)]
        target: BackendTarget,
        /// WLC weight (0..=65535).
        #[arg(long)]
        weight: u32,
        /// Static MAC (aa:bb:cc:dd:ee:ff); by default the neighbour table is used.
        #[arg(long, value_parser = parse_mac)]
        mac: Option<[u8; 6]>,
    },
    /// Remove a backend: no new connections; its connections finish on it.
    Remove {
        #[command(flatten)]
        target: BackendTarget,
        /// Move its connections to other backends on their next packet
        /// (IPVS expire_nodest_conn) instead of letting them finish.
        #[arg(long)]
        reschedule: bool,
    },
    /// Set a backend's weight (0 drains it).
    SetWeight {
        #[command(flatten)]
        target: BackendTarget,
        /// WLC weight (0..=65535).
        #[arg(long)]
        weight: u32,
    },
    /// Drain a backend: weight 0, no new connections, existing ones continue.
    Drain {
        #[command(flatten)]
        target: BackendTarget,
    },
}

impl BackendCommand {
    /// The request for the daemon, and where to send it.
    fn into_request(self) -> (Request, SocketArgs) {
        match self {
            Self::Add {
                target:
                    BackendTarget {
                        service,
                        address,
                        socket,
                    },
                weight,
                mac,
            } => (
                Request::BackendAdd {
                    service,
                    address,
                    weight,
                    mac,
                },
                socket,
            ),
            Self::Remove {
                target:
                    BackendTarget {
                        service,
                        address,
                        socket,
                    },
                reschedule,
            } => (
                Request::BackendRemove {
                    service,
                    address,
                    reschedule: reschedule.then_some(true),
                },
                socket,
            ),
            Self::SetWeight {
                target:
                    BackendTarget {
                        service,
                        address,
                        socket,
                    },
                weight,
            } => (
                Request::BackendSetWeight {
                    service,
                    address,
                    weight,
                },
                socket,
            ),
            Self::Drain {
                target:
                    BackendTarget {
                        service,
                        address,
                        socket,
                    },
            } => (
                Request::BackendSetWeight {
                    service,
                    address,
                    weight: 0,
                },
                socket,
            ),
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    lb::config::values::parse_mac(text)
        .ok_or_else(|| format!("{text:?} is not a MAC address (valid: aa:bb:cc:dd:ee:ff)"))
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the director's NICs and balance the configured services until SIGINT/SIGTERM.
    ///
    /// A data path left pinned by an earlier `lb` (killed, or stopped with
    /// --keep-datapath) is adopted with its flows and counters.
    Run {
        /// Config file (TOML), e.g. /etc/lb/lb.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Override `[director] xdp_mode`: driver (native XDP) or skb (generic XDP).
        #[arg(long, value_parser = XdpMode::from_str)]
        xdp_mode: Option<XdpMode>,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics (a bare PORT
        /// means 127.0.0.1:PORT); overrides `[director] metrics_listen`.
        #[arg(long, value_parser = parse_listen)]
        metrics_listen: Option<SocketAddr>,
        #[command(flatten)]
        sync: SyncArgs,
    },
    /// Make a running director re-read its config and apply the difference
    /// (as SIGHUP); an invalid config is refused and nothing changes.
    Reload(SocketArgs),
    /// Stop a running director.
    Stop {
        /// Leave the XDP program attached and its maps pinned (forwarding
        /// continues; the next `lb run` adopts them).
        #[arg(long)]
        keep_datapath: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Remove a data path left pinned (after `lb stop --keep-datapath` or a
    /// killed `lb`): detaches the program and deletes the maps.
    Detach {
        /// bpffs directory of the pins.
        #[arg(long, conflicts_with = "config")]
        pin_path: Option<PathBuf>,
        /// Take the pin path (and control socket) from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Change the backends of a running director (until the next reload or restart).
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Convert the virtual_server blocks of a keepalived.conf into an lb
    /// config (TOML on stdout or --output); everything not carried over is
    /// a `FILE:LINE: warning:` on stderr.
    ImportKeepalived {
        /// The keepalived.conf to convert.
        file: PathBuf,
        /// A director NIC for `[director] interfaces` (repeat for several);
        /// default `eth0`, with a warning.
        #[arg(long = "interface", value_name = "NIC")]
        interfaces: Vec<String>,
        /// What the firewall rule behind a fwmark service selects, as
        /// MARK=VIP:PORTS (e.g. 1=192.0.2.10:2811,50000-51000; port 0 for
        /// every port); repeat for several marks. Without it, fwmark
        /// services are skipped with a warning.
        #[arg(long = "fwmark", value_name = "MARK=VIP:PORTS")]
        fwmarks: Vec<lb::keepalived::Fwmark>,
        /// Write the TOML to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Validate a config file without touching the system.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show per-service and per-backend counters of a running director
    /// (like `ipvsadm -L -n --stats`, and `--rate`).
    Stats {
        /// bpffs directory the director pinned its maps under (default: the
        /// config's pin_path, else /sys/fs/bpf/lb).
        #[arg(long)]
        pin_path: Option<PathBuf>,
        /// Config file for service names and the pin path (default:
        /// /etc/lb/lb.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Add rates (CPS, InPPS, InBPS) from two readings --interval apart.
        #[arg(long)]
        rate: bool,
        /// Time between the two readings of --rate: 1s (default), 500ms, 2.
        #[arg(long, requires = "rate", value_parser = lb::inspect::stats::parse_interval)]
        interval: Option<std::time::Duration>,
    },
    /// Show the connection table of a running director (like `ipvsadm -L -c -n`).
    Conns {
        /// bpffs directory the director pinned its maps under (default: the
        /// config's pin_path, else /sys/fs/bpf/lb).
        #[arg(long)]
        pin_path: Option<PathBuf>,
        /// Config file for service names, timeouts and the pin path
        /// (default: /etc/lb/lb.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only the connections of this service (its name, or VIP:PORT/proto).
        #[arg(long)]
        service: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prepare, check or undo a real server behind a director (VIPs on lo, ARP sysctls).
    #[command(subcommand)]
    Realserver(lb::host::realserver::RealserverCommand),
}

/// Parses `ADDR:PORT`, or a bare `PORT` on 127.0.0.1.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    lb::config::values::parse_listen(text)
        .filter(|addr| addr.port() != 0)
        .ok_or_else(|| {
            format!("{text:?} is not a listen address (valid: 127.0.0.1:9469, [::1]:9469 or 9469)")
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            xdp_mode,
            metrics_listen,
            sync,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(daemon::run(daemon::RunOptions {
                config_path: config,
                xdp_mode,
                metrics_listen,
                sync: SyncOverrides {
                    interface: sync.sync_interface,
                    peers: sync.sync_peer,
                    group: sync.sync_group,
                    port: sync.sync_port,
                    key_file: sync.sync_key,
                },
            })),
        Command::Reload(socket) => socket.send(Request::Reload),
        Command::Stop {
            keep_datapath,
            socket,
        } => socket.send(Request::Stop { keep_datapath }),
        Command::Detach { pin_path, config } => {
            let config = config.map(|c| Config::load(&c)).transpose()?;
            let pin_path = pin_path
                .or_else(|| config.as_ref().map(|c| c.director.pin_path.clone()))
                .unwrap_or_else(|| PathBuf::from(lb::config::DEFAULT_PIN_PATH));
            let socket = config
                .map(|c| c.director.control_socket)
                .unwrap_or_else(|| PathBuf::from(lb::control::DEFAULT_SOCKET));
            lb::host::privilege::ensure_bpf("lb detach")?;
            if lb::control::is_live(&socket) {
                anyhow::bail!(
                    "an lb is running (control socket {}): use `lb stop` instead",
                    socket.display()
                );
            }
            if !pin_path.is_dir() {
                anyhow::bail!("nothing is pinned at {}", pin_path.display());
            }
            lb::datapath::pins::remove_pin_dir(&pin_path)?;
            println!(
                "detached and removed the data path pinned at {}",
                pin_path.display()
            );
            Ok(())
        }
        Command::Backend(command) => {
            let (request, socket) = command.into_request();
            socket.send(request)
        }
        Command::Check { config: path } => {
            let config = Config::load(&path)?;
            let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
            println!(
                "{}: OK ({} service(s), {backends} backend(s), interfaces {})",
                path.display(),
                config.services.len(),
                config.director.interfaces.join(", ")
            );
            Ok(())
        }
        Command::Stats {
            pin_path,
            config,
            json,
            rate,
            interval,
        } => {
            let inspect = lb::inspect::InspectConfig::resolve(pin_path, config)?;
            lb::host::privilege::ensure_bpf("lb stats")?;
            let maps = Maps::from_pins(&inspect.pin_path)?;
            let names = inspect.names();
            let mut snapshot = Snapshot::read_named(&maps, &names)?;
            if rate {
                std::thread::sleep(interval.unwrap_or(std::time::Duration::from_secs(1)));
                let earlier = snapshot;
                snapshot = Snapshot::read_named(&maps, &names)?;
                snapshot.set_rates(&earlier);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                print!("{}", snapshot.table());
            }
            Ok(())
        }
        Command::Conns {
            pin_path,
            config,
            service,
            json,
        } => {
            let inspect = lb::inspect::InspectConfig::resolve(pin_path, config)?;
            lb::host::privilege::ensure_bpf("lb conns")?;
            let maps = Maps::from_pins(&inspect.pin_path)?;
            let timeouts = inspect
                .config
                .as_ref()
                .map_or_else(Default::default, |c| c.director.timeouts);
            let table = lb::inspect::conns::ConnTable::read(
                &maps,
                &inspect.names(),
                &timeouts,
                service.as_deref(),
            )?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let written = if json {
                table.write_json(&mut out)
            } else {
                table.write_table(&mut out)
            }
            .and_then(|()| std::io::Write::flush(&mut out));
            match written {
                // `lb conns | head`
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => Ok(other?),
            }
        }
        Command::Realserver(command) => lb::host::realserver::run(command),
        Command::ImportKeepalived {
            file,
            interfaces,
            fwmarks,
            output,
        } => lb::keepalived::run(&file, &interfaces, &fwmarks, output.as_deref()),
    }
}
