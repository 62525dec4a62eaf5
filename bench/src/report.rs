//! The report: derived figures (floor-subtracted costs, ratios), the targets
//! of the performance issue, the aligned text tables, the JSON document and
//! the SVG plot.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use lb_common::{CONNTRACK4_MAP, CONNTRACK6_MAP};
use plotters::prelude::*;
use serde::Serialize;

use crate::micro::{
    CaseResult, Kind, Memory, Method, NEW_FLOW_BACKENDS, Params, ProgramSize, Results,
    SCALING_FLOWS,
};

/// Below this many ns, a floor-subtracted cost is within the kernel clock's
/// resolution, and a ratio to it means nothing.
const MIN_NET_NS: f64 = 1.0;

/// Katran's new-flow cost measured on a machine of this kind (issue 4), ns.
const KATRAN_NEW_FLOW_NS: f64 = 393.0;

/// Where and on what the benchmark ran.
#[derive(Serialize)]
pub struct Meta {
    /// UTC time the run finished, RFC 3339.
    pub date: String,
    /// `uname -r`.
    pub kernel: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs.
    pub online_cpus: usize,
    /// `git describe --always --dirty` of the workspace, when available.
    pub source: Option<String>,
    /// A `--quick` smoke run (figures not for publication).
    pub quick: bool,
    /// What was measured and how much.
    pub params: Params,
}

/// A case with its derived figures.
#[derive(Serialize)]
pub struct Row {
    /// The measurements.
    #[serde(flatten)]
    pub case: CaseResult,
    /// lb minus the empty program, ns/packet.
    pub ours_net_ns: f64,
    /// MAC swap minus the empty program, ns/packet.
    pub trivial_net_ns: f64,
    /// lb / MAC swap, raw.
    pub ratio_raw: f64,
    /// lb / MAC swap, both minus the empty program; `None` when the MAC
    /// swap's own cost is below [`MIN_NET_NS`] (a ratio to noise).
    pub ratio_net: Option<f64>,
}

impl Row {
    /// Derives the row of `case`.
    fn of(case: CaseResult) -> Self {
        let (ours, trivial, empty) = (
            case.ours.median_ns,
            case.trivial.median_ns,
            case.empty.median_ns,
        );
        Self {
            ours_net_ns: ours - empty,
            trivial_net_ns: trivial - empty,
            ratio_raw: ours / trivial,
            ratio_net: (trivial - empty >= MIN_NET_NS).then(|| (ours - empty) / (trivial - empty)),
            case,
        }
    }
}

/// A target of the performance issue and whether this run meets it.
#[derive(Serialize)]
pub struct Target {
    /// The target, as the issue states it.
    pub name: String,
    /// The measured ratio the target bounds.
    pub value: f64,
    /// The bound.
    pub limit: f64,
    /// `value <= limit`.
    pub met: bool,
    /// How `value` was computed.
    pub basis: String,
}

/// The whole report, as written to results.json.
#[derive(Serialize)]
pub struct Report<L: Serialize> {
    /// Machine, date and parameters.
    pub meta: Meta,
    /// Every case with its derived figures.
    pub cases: Vec<Row>,
    /// Program sizes.
    pub programs: Vec<ProgramSize>,
    /// Map memory at lb's default limits.
    pub memory: Memory,
    /// The targets.
    pub targets: Vec<Target>,
    /// Live-traffic figures (`None` with `--skip-live`).
    pub live: Option<Vec<L>>,
}

impl<L: Serialize> Report<L> {
    /// Derives ratios and targets from the measurements.
    pub fn new(meta: Meta, results: Results, live: Option<Vec<L>>) -> Self {
        let cases: Vec<Row> = results.cases.into_iter().map(Row::of).collect();
        let targets = targets(&cases);
        Self {
            meta,
            cases,
            programs: results.programs,
            memory: results.memory,
            targets,
            live,
        }
    }

    /// Writes results.json and results.svg into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("results.json");
        fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", json.display()))?;
        let svg = dir.join("results.svg");
        plot(&self.cases, &svg).with_context(|| format!("drawing {}", svg.display()))?;
        eprintln!("lb-bench: wrote {} and {}", json.display(), svg.display());
        Ok(())
    }

    /// The micro-benchmark tables, memory and targets as aligned text.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(
            s,
            "lb-bench {}: kernel {}, {} ({} CPUs), pinned to CPU {}{}",
            m.date,
            m.kernel,
            m.cpu_model,
            m.online_cpus,
            m.params.cpu,
            if m.quick {
                "  [--quick: smoke run, not the published figures]"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "BPF_PROG_TEST_RUN, median of {} interleaved rounds; repeat: {} packets per figure \
             (kernel mean); per call: {} calls per figure ({}% trimmed mean)\n",
            m.params.rounds,
            m.params.packets,
            m.params.calls,
            m.params.trim * 100.0
        );
        let _ = writeln!(
            s,
            "{:<46} {:>8} {:>5} {:>8} {:>8} {:>8} {:>10} {:>10} {:>7} {:>7}",
            "case (ns/packet)",
            "method",
            "bytes",
            "lb",
            "mac-swap",
            "empty",
            "lb-empty",
            "swap-empty",
            "lb/swap",
            "net"
        );
        for r in &self.cases {
            let c = &r.case;
            let _ = writeln!(
                s,
                "{:<46} {:>8} {:>5} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>10.1} {:>6.2}x {:>7}",
                c.name,
                match c.method {
                    Method::Repeat => "repeat",
                    Method::PerCall => "per call",
                },
                c.frame_len,
                c.ours.median_ns,
                c.trivial.median_ns,
                c.empty.median_ns,
                r.ours_net_ns,
                r.trivial_net_ns,
                r.ratio_raw,
                ratio(r.ratio_net)
            );
        }

        let _ = writeln!(
            s,
            "\nscaling: established TCP/IPv4 against flows in the table (ns/packet, lb minus empty)"
        );
        let _ = writeln!(
            s,
            "{:>10} {:>12} {:>20}",
            "flows", "same flow", "another flow each"
        );
        for flows in SCALING_FLOWS {
            let find = |kind| {
                self.cases
                    .iter()
                    .find(|r| r.case.kind == kind && r.case.flows_in_table == Some(flows))
                    .map_or(f64::NAN, |r| r.ours_net_ns)
            };
            let _ = writeln!(
                s,
                "{flows:>10} {:>12.1} {:>20.1}",
                find(Kind::ScalingSameFlow),
                find(Kind::ScalingEveryFlow)
            );
        }
        let _ = writeln!(
            s,
            "\nscaling: new TCP flow against backends (ns/packet, lb minus empty, per call)"
        );
        let _ = writeln!(s, "{:>10} {:>10} {:>8}", "backends", "lb-empty", "vs 64");
        let at64 = new_flow(&self.cases, 64).map_or(f64::NAN, |r| r.ours_net_ns);
        for n in NEW_FLOW_BACKENDS {
            let net = new_flow(&self.cases, n).map_or(f64::NAN, |r| r.ours_net_ns);
            let _ = writeln!(s, "{n:>10} {net:>10.1} {:>7.2}x", net / at64);
        }

        let _ = writeln!(s, "\nprograms");
        for p in &self.programs {
            let _ = writeln!(
                s,
                "  {:<16} {:>6} xlated insns {:>7} bytes jited  verifier processed {}",
                p.name,
                p.xlated_insns,
                p.jited_bytes,
                p.verifier_processed_insns
                    .map_or("?".to_owned(), |n| n.to_string())
            );
        }

        let mem = &self.memory;
        let _ = writeln!(
            s,
            "\nmemory at lb's default limits ({CONNTRACK4_MAP} {} flows, {CONNTRACK6_MAP} {} flows, \
             {} possible CPUs; kernel memlock per map)",
            mem.conntrack4_max_flows, mem.conntrack6_max_flows, mem.possible_cpus
        );
        for map in &mem.maps {
            let _ = writeln!(
                s,
                "  {:<14} {:>9} entries x ({:>2} + {:>5} B) {:>12} B",
                map.name, map.max_entries, map.key_size, map.value_size, map.memlock_bytes
            );
        }
        let _ = writeln!(
            s,
            "  {:<14} {:>49} B ({:.1} MiB)",
            "total",
            mem.total_bytes,
            mem.total_bytes as f64 / f64::from(1 << 20)
        );
        let _ = writeln!(
            s,
            "  per flow: {:.1} B per IPv4 flow ({CONNTRACK4_MAP}), {:.1} B per IPv6 flow ({CONNTRACK6_MAP})",
            mem.conntrack4_bytes_per_flow, mem.conntrack6_bytes_per_flow
        );

        let _ = writeln!(s, "\ntargets (issue 4)");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  [{}] {:<52} {:>6.2} (limit {:.2}): {}",
                if t.met { " met  " } else { "MISSED" },
                t.name,
                t.value,
                t.limit,
                t.basis
            );
        }
        s
    }
}

/// A floor-subtracted ratio for the tables ("-" when there is none).
fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

/// The new-flow row with `n` backends.
fn new_flow(rows: &[Row], n: u32) -> Option<&Row> {
    rows.iter()
        .find(|r| r.case.kind == Kind::NewFlow && r.case.backends == Some(n))
}

/// The first row of `kind`.
fn first(rows: &[Row], kind: Kind) -> Option<&Row> {
    rows.iter().find(|r| r.case.kind == kind)
}

/// The targets. Ratios to the MAC swap are raw, as the issue's own
/// figures are (3x of 29 ns is about half of Katran's 189 ns). The new flow
/// is timed per call; its "repeat-equivalent" cost replaces the per-call
/// floor by the repeat floor, so it compares with the MAC swap under repeat.
fn targets(rows: &[Row]) -> Vec<Target> {
    let mut targets = Vec::new();
    let mut ratio = |kind, name: &str, limit| {
        if let Some(r) = first(rows, kind) {
            targets.push(Target {
                name: name.to_owned(),
                value: r.ratio_raw,
                limit,
                met: r.ratio_raw <= limit,
                basis: format!(
                    "lb {:.1} ns / mac-swap {:.1} ns (net {:.1} / {:.1} = {})",
                    r.case.ours.median_ns,
                    r.case.trivial.median_ns,
                    r.ours_net_ns,
                    r.trivial_net_ns,
                    ratio(r.ratio_net)
                ),
            });
        }
    };
    ratio(
        Kind::EstablishedTcp4,
        "established TCP/IPv4 <= 3x mac-swap",
        3.0,
    );
    ratio(
        Kind::EstablishedTcp6,
        "established TCP/IPv6 <= 3x mac-swap",
        3.0,
    );
    ratio(Kind::NoService, "no service <= 2x mac-swap", 2.0);
    if let (Some(at64), Some(at256), Some(est)) = (
        new_flow(rows, 64),
        new_flow(rows, 256),
        first(rows, Kind::EstablishedTcp4),
    ) {
        let equivalent = at64.ours_net_ns + est.case.empty.median_ns;
        let value = equivalent / est.case.trivial.median_ns;
        targets.push(Target {
            name: "new TCP flow, 64 backends <= ~13x mac-swap".to_owned(),
            value,
            limit: 13.0,
            met: value <= 13.0,
            basis: format!(
                "(per call {:.1} - per-call floor {:.1} + repeat floor {:.1}) = {:.1} ns \
                 / mac-swap {:.1} ns; Katran {KATRAN_NEW_FLOW_NS:.0} ns",
                at64.case.ours.median_ns,
                at64.case.empty.median_ns,
                est.case.empty.median_ns,
                equivalent,
                est.case.trivial.median_ns
            ),
        });
        let value = at256.ours_net_ns / at64.ours_net_ns;
        targets.push(Target {
            name: "new TCP flow, 256 backends <= 1.5x 64 backends".to_owned(),
            value,
            limit: 1.5,
            met: value <= 1.5,
            basis: format!(
                "net {:.1} / {:.1} ns (raw per call {:.1} / {:.1} = {:.2}x)",
                at256.ours_net_ns,
                at64.ours_net_ns,
                at256.case.ours.median_ns,
                at64.case.ours.median_ns,
                at256.case.ours.median_ns / at64.case.ours.median_ns
            ),
        });
    }
    targets
}

/// Colour of lb's figures.
const OURS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// Colour of the MAC swap's figures.
const TRIVIAL: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
/// Colour of the empty program's figures.
const EMPTY: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// Draws the SVG: ns/packet per case (lb, MAC swap, empty) on top; below,
/// the established path against the table's fill and the new-flow path
/// against the number of backends.
fn plot(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(480);
    let (left, right) = bottom.split_horizontally(600);

    // Per-case bars.
    let bars: Vec<(&str, &Row)> = rows
        .iter()
        .filter_map(|r| {
            let label = match (r.case.kind, r.case.backends) {
                (Kind::EstablishedTcp4, _) => "est. TCP v4",
                (Kind::EstablishedTcp6, _) => "est. TCP v6",
                (Kind::EstablishedUdp4, _) => "UDP v4",
                (Kind::NoService, _) => "no service",
                (Kind::NewFlow, Some(1)) => "new, 1 (per call)",
                (Kind::NewFlow, Some(16)) => "new, 16",
                (Kind::NewFlow, Some(64)) => "new, 64",
                (Kind::NewFlow, Some(256)) => "new, 256",
                _ => return None,
            };
            Some((label, r))
        })
        .collect();
    let y_max = bars
        .iter()
        .map(|(_, r)| r.case.ours.median_ns.max(r.case.trivial.median_ns))
        .fold(0.0, f64::max)
        * 1.15;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "ns/packet: lb vs MAC-swap XDP_TX vs empty program (BPF_PROG_TEST_RUN)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                bars[i as usize].0.to_owned()
            } else {
                String::new()
            }
        })
        .y_desc("ns/packet")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (k, (name, colour)) in [("lb", OURS), ("MAC swap", TRIVIAL), ("empty", EMPTY)]
        .into_iter()
        .enumerate()
    {
        let offset = k as f64 * 0.27 - 0.4;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, r))| {
                let y = [
                    r.case.ours.median_ns,
                    r.case.trivial.median_ns,
                    r.case.empty.median_ns,
                ][k];
                let x = i as f64 + offset;
                Rectangle::new([(x, 0.0), (x + 0.25, y)], colour.filled())
            }))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Established path against the table's fill.
    let curve = |kind| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.case.kind == kind)
            .filter_map(|r| Some((f64::from(r.case.flows_in_table?), r.ours_net_ns)))
            .collect()
    };
    let (same, every) = (curve(Kind::ScalingSameFlow), curve(Kind::ScalingEveryFlow));
    let y_max = same.iter().chain(&every).map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "established TCP/IPv4 vs flows in table (ns, minus empty)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d((500f64..2_000_000f64).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("flows in the connection table")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("ns/packet")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (points, name, colour) in [
        (same, "same flow (repeat)", OURS),
        (every, "another flow each packet (per call)", TRIVIAL),
    ] {
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // New flow against backends.
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.case.kind == Kind::NewFlow)
        .filter_map(|r| Some((f64::from(r.case.backends?), r.ours_net_ns)))
        .collect();
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "new TCP flow vs backends (ns, minus empty, per call)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d((0.8f64..320f64).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("backends in the service")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("ns/packet")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new(points.clone(), OURS.stroke_width(2)))?;
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, OURS.filled())))?;
    root.present()?;
    Ok(())
}
