//! The control plane's periodic sweep at scale, as `lb run` does it: the
//! table walk ([`lb::sweeper::collect`]) on a thread of its own, then the
//! counter writes ([`lb::sweeper::write_counts`]) on the event loop, sweeps
//! spaced by `sweep_interval` and by [`lb::sweeper::pause_after`]. Over
//! connection tables holding 1 k, 100 k and 1 M live flows (none expires,
//! so every sweep walks them all, as in steady state) it reports one
//! sweep's wall and CPU time, the longest the event loop was held by a
//! sweep (the counter writes), and the CPU the sweeps took over a fixed
//! window, as a share of one CPU. The targets: at most 5 % of one
//! CPU at 1 M flows, and no stall of the event loop above 10 ms.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

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

/// One case: sweeps over `flows` live flows.
#[derive(Serialize)]
pub struct Row {
    /// Live flows in the connection table.
    pub flows: u32,
    /// Wall time of one sweep's table walk, ms (off the event loop).
    pub wall_ms: Millis,
    /// CPU time of one sweep (user + system of the sweeping thread), ms.
    pub cpu_ms: Millis,
    /// The longest a sweep held the event loop (its counter writes), ms.
    pub stall_ms: f64,
    /// CPU time of the sweeps over [`Row::window_ms`] as lb schedules them,
    /// as a share of one CPU, %.
    pub cpu_share_percent: f64,
    /// Sweeps in the window.
    pub sweeps: usize,
    /// The window, ms.
    pub window_ms: u64,
    /// lb's default `sweep_interval`, ms.
    pub interval_ms: u64,
}

/// Times `rounds` sweeps over each of [`FLOWS`], then runs lb's sweep
/// schedule over each for `window`.
pub fn run(rounds: usize, window: Duration) -> anyhow::Result<Vec<Row>> {
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
        // Every flow seen just now: the sweeps keep them all.
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
        let mut walls = Vec::with_capacity(rounds);
        let mut cpus = Vec::with_capacity(rounds);
        let mut stall = Duration::ZERO;
        for _ in 0..rounds {
            let (cpu_before, wall) = (thread_cpu_ms(), Instant::now());
            let report = sweeper::collect(&mut dp.maps, &[service], &Default::default())
                .context("sweeping")?;
            walls.push(wall.elapsed().as_secs_f64() * 1000.0);
            cpus.push(thread_cpu_ms() - cpu_before);
            let held = Instant::now();
            sweeper::write_counts(&mut dp.maps, &[service], &report)
                .context("writing the counts")?;
            stall = stall.max(held.elapsed());
            anyhow::ensure!(
                report.live == flows as usize && report.expired == 0,
                "the sweep kept {} of {flows} live flows and expired {}",
                report.live,
                report.expired
            );
        }
        // lb's schedule over a fixed window: a sweep at each interval tick
        // unless the last one's pause has not passed.
        let (cpu_before, start) = (thread_cpu_ms(), Instant::now());
        let mut not_before = start;
        let mut sweeps = 0;
        let mut tick = start;
        while start.elapsed() < window {
            if Instant::now() >= not_before {
                let began = Instant::now();
                let report = sweeper::collect(&mut dp.maps, &[service], &Default::default())?;
                let took = began.elapsed();
                let held = Instant::now();
                sweeper::write_counts(&mut dp.maps, &[service], &report)?;
                stall = stall.max(held.elapsed());
                not_before = Instant::now() + sweeper::pause_after(took);
                sweeps += 1;
            }
            tick += interval;
            let until = tick.min(start + window);
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        let window_cpu = thread_cpu_ms() - cpu_before;
        let window_ms = start.elapsed().as_secs_f64() * 1000.0;
        rows.push(Row {
            flows,
            wall_ms: Millis::of(walls),
            cpu_ms: Millis::of(cpus),
            stall_ms: stall.as_secs_f64() * 1000.0,
            cpu_share_percent: 100.0 * window_cpu / window_ms,
            sweeps,
            window_ms: window_ms as u64,
            interval_ms: interval.as_millis() as u64,
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
    if rows.is_empty() {
        return "\ncontrol plane: not measured (--skip-control)\n".to_owned();
    }
    let mut s = String::from(
        "\ncontrol plane: sweeps as lb run does them (the walk off the event loop, the counter \
         writes on it), over live flows\n",
    );
    s += &format!(
        "  {:>10} {:>10} {:>10} {:>10} {:>11} {:>7}  targets: <= 5 % of a CPU at 1 M flows, no \
         stall > 10 ms\n",
        "flows", "walk ms", "CPU ms", "stall ms", "CPU share", "sweeps"
    );
    for r in rows {
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        s += &format!(
            "  {:>10} {:>10.1} {:>10.1} {:>10.2} {:>9.1} % {:>7}  (in {:.0} s, interval {} ms; \
             stall {}{})\n",
            thousands(r.flows),
            r.wall_ms.median,
            r.cpu_ms.median,
            r.stall_ms,
            r.cpu_share_percent,
            r.sweeps,
            r.window_ms as f64 / 1000.0,
            r.interval_ms,
            met(r.stall_ms <= 10.0),
            if r.flows >= 1_000_000 {
                format!(", CPU {}", met(r.cpu_share_percent <= 5.0))
            } else {
                String::new()
            }
        );
    }
    s
}
