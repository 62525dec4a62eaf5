//! The control plane's periodic sweep at scale: `lb run` calls
//! [`lb::sweeper::sweep`] every `sweep_interval` on its event loop; this
//! module times that very call over connection tables holding 1 k, 100 k
//! and 1 M live flows (none expires, so every sweep walks them all and
//! rewrites the counters, as in steady state), and reports the wall time
//! of one sweep (how long it blocks the event loop), its CPU time, and the
//! share of one CPU it takes at lb's default interval. The targets:
//! at most 5 % of one CPU at 1 M flows, and no stall above 10 ms.

use std::{net::IpAddr, time::Instant};

use anyhow::Context as _;
use lb::{
    config::DirectorConfig,
    datapath::{
        Datapath,
        maps::{FlowCapacity, monotonic_ns},
    },
    sweeper,
};
use lb_common::{Flow, PROTO_TCP, SERVICE_FLAG_SLOPPY_TCP, Service, conn_state::STATE_ESTABLISHED};
use lb_tests::{VIP4, xdp_case::up};
use serde::Serialize;

use crate::micro::{Tuple, install, thousands};

/// Live flows in the connection table of each case.
pub const FLOWS: [u32; 3] = [1_000, 100_000, 1_000_000];
/// Backends of the swept service.
const BACKENDS: u32 = 64;

/// A figure in ms: the median over the rounds, and every round's.
#[derive(Serialize)]
pub struct Millis {
    /// Median of `rounds`.
    pub median: f64,
    /// Each round's value.
    pub rounds: Vec<f64>,
}

impl Millis {
    fn of(mut rounds: Vec<f64>) -> Self {
        let mut sorted = rounds.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        rounds.shrink_to_fit();
        Self { median, rounds }
    }
}

/// One case: a sweep over `flows` live flows.
#[derive(Serialize)]
pub struct Row {
    /// Live flows in the connection table.
    pub flows: u32,
    /// Wall time of one sweep, ms (the event loop is blocked for it).
    pub wall_ms: Millis,
    /// CPU time of one sweep (user + system of the sweeping thread), ms.
    pub cpu_ms: Millis,
    /// The share of one CPU the sweeps take at lb's default interval, %.
    pub cpu_share_percent: f64,
    /// lb's default `sweep_interval`, ms.
    pub interval_ms: u64,
}

/// Times `rounds` sweeps over each of [`FLOWS`].
pub fn run(rounds: usize) -> anyhow::Result<Vec<Row>> {
    let interval = DirectorConfig::new(Vec::new()).sweep_interval;
    let vip = IpAddr::V4(VIP4);
    let mut rows = Vec::new();
    for flows in FLOWS {
        eprintln!("lb-bench: sweeping {} live flows", thousands(flows));
        let capacity = (flows + flows / 4).next_power_of_two().max(1024);
        let mut dp = Datapath::load(FlowCapacity::with_pending_tables(capacity, 1024), None)?;
        install(&mut dp, 0, vip, PROTO_TCP, &vec![up(1); BACKENDS as usize])?;
        let service = Service {
            id: 0,
            flags: SERVICE_FLAG_SLOPPY_TCP,
            ..Service::default()
        };
        let mut walls = Vec::with_capacity(rounds);
        let mut cpus = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            // Every flow seen just now: the sweep keeps them all.
            let now = monotonic_ns();
            for i in 0..flows {
                let flow = Flow {
                    last_seen_ns: now,
                    service_id: 0,
                    backend_slot: (i % BACKENDS) as u16,
                    state: STATE_ESTABLISHED as u16,
                    flags: 0,
                };
                dp.maps
                    .insert_flow(&Tuple::client(i, vip, PROTO_TCP).key(), &flow)
                    .context("filling the connection table")?;
            }
            let (cpu_before, wall) = (thread_cpu_ms(), Instant::now());
            let report = sweeper::sweep(&mut dp.maps, &[service], &Default::default())
                .context("sweeping")?;
            walls.push(wall.elapsed().as_secs_f64() * 1000.0);
            cpus.push(thread_cpu_ms() - cpu_before);
            anyhow::ensure!(
                report.live == flows as usize && report.expired == 0,
                "the sweep kept {} of {flows} live flows and expired {}",
                report.live,
                report.expired
            );
        }
        let (wall_ms, cpu_ms) = (Millis::of(walls), Millis::of(cpus));
        let interval_ms = interval.as_millis() as u64;
        rows.push(Row {
            flows,
            cpu_share_percent: 100.0 * cpu_ms.median / interval_ms as f64,
            wall_ms,
            cpu_ms,
            interval_ms,
        });
    }
    Ok(rows)
}

/// CPU time (user + system) of the calling thread so far, ms.
fn thread_cpu_ms() -> f64 {
    // SAFETY: a zeroed rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// The rows as text, with the targets.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "\ncontrol plane: one sweep (lb::sweeper::sweep, as lb run calls it) over live flows\n",
    );
    s += &format!(
        "  {:>10} {:>10} {:>10} {:>14}  targets: <= 5 % of a CPU at 1 M flows, no stall > 10 ms\n",
        "flows", "wall ms", "CPU ms", "CPU share"
    );
    for r in rows {
        s += &format!(
            "  {:>10} {:>10.1} {:>10.1} {:>12.1} %  (every {} ms)\n",
            thousands(r.flows),
            r.wall_ms.median,
            r.cpu_ms.median,
            r.cpu_share_percent,
            r.interval_ms
        );
    }
    s
}
