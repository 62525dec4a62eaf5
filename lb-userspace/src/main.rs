//! `lb`: an XDP direct-routing layer-4 load balancer (LVS-DR style).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb::{
    config::{Config, XdpMode},
    daemon,
    datapath::Maps,
    stats::Snapshot,
};

/// Default bpffs directory of a director's pins (as `[director] pin_path`).
const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "XDP direct-routing layer-4 load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the director's NICs and balance the configured services until SIGINT/SIGTERM.
    Run {
        /// Config file (TOML), e.g. /etc/lb/lb.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Override `[director] xdp_mode`: driver (native XDP) or skb (generic XDP).
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
    },
    /// Validate a config file without touching the system.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show per-service and per-backend counters of a running director.
    Stats {
        /// bpffs directory the director pinned its maps under.
        #[arg(long, conflicts_with = "config")]
        pin_path: Option<PathBuf>,
        /// Take the pin path from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, xdp_mode } => {
            let config = Config::load(&config)?;
            let mode = xdp_mode.unwrap_or(config.director.xdp_mode);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(daemon::run(config, mode))
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
        } => {
            let pin_path = match (pin_path, config) {
                (Some(p), _) => p,
                (None, Some(c)) => Config::load(&c)?.director.pin_path,
                (None, None) => PathBuf::from(DEFAULT_PIN_PATH),
            };
            daemon::ensure_privileged("lb stats")?;
            let snapshot = Snapshot::read(&Maps::from_pins(&pin_path)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
                print!("{}", snapshot.table());
            }
            Ok(())
        }
    }
}
