//! `lb-demo`: the main job on an embedded default, end to end (run by
//! `cargo xtask demo`, which builds `lb` first and passes it in `LB_BIN`).
//!
//! Builds the LVS-DR test bed (client, director, three real servers weighted
//! 1000/500/800 holding the VIP on `lo`), runs the real `lb run` on the
//! director, drives real TCP connections from the client, shows what the
//! client saw next to `lb stats`, and removes everything again (every
//! resource is a guard from `lb_tests`, dropped on the way out, also on
//! error).

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::{
    DIRECTOR_IFACE, Health, LbDaemon, Protocol, TestBed, VIP4, client, is_root, lb_binary,
    unique_tag,
};

/// The service port.
const PORT: u16 = 80;
/// Weights of rs1, rs2, rs3, as in a typical GridFTP door pool.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Connections the client opens (and holds) through the director.
const CONNECTIONS: usize = 230;

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo builds network namespaces and attaches XDP programs: it needs root \
             (try `sudo -E cargo xtask demo`)"
        );
    }
    let lb = lb_binary()?;

    let tag = unique_tag();
    println!("\n== test bed: client, director ({DIRECTOR_IFACE}), rs1..rs3 (tag {tag})");
    let bed = TestBed::build(&tag, WEIGHTS.len()).context("building the test bed")?;
    for host in std::iter::once(bed.client())
        .chain(std::iter::once(bed.director()))
        .chain(bed.real_servers())
    {
        println!(
            "   {:<9} netns {:<22} {} {:<12} {}",
            host.role,
            host.ns.name(),
            host.iface,
            host.ipv4.to_string(),
            host.ipv6
        );
    }
    println!("   VIP {VIP4} on the director's NIC and on every real server's lo");
    println!("   real servers: arp_ignore=1, arp_announce=2 (LVS-DR)");

    let servers = bed
        .start_servers(PORT, &[])
        .context("starting the real servers")?;

    let vip = IpAddr::from(VIP4);
    let config = bed.lb_config(vec![bed.service(
        "web",
        vip,
        PORT,
        Protocol::Tcp,
        Health::tcp(PORT),
        &WEIGHTS,
    )]);
    println!("\n== lb.toml\n{}", config.to_toml());
    println!("== lb run (in {})", bed.director().ns.name());
    let daemon = LbDaemon::launch(&lb, &bed.director().ns, &config, &tag, &[])?.wait_ready()?;
    daemon
        .wait_all_up(Duration::from_secs(15))
        .with_context(|| format!("lb's output:\n{}", daemon.log()))?;

    println!("\n== client: {CONNECTIONS} TCP connections to {vip}:{PORT}, held open");
    let conns = client::open_tcp(&bed.client().ns, SocketAddr::new(vip, PORT), CONNECTIONS)
        .with_context(|| format!("lb's output:\n{}", daemon.log()))?;
    let counts = client::count_conns(&conns);
    let total_weight: u32 = WEIGHTS.iter().sum();
    for (server, weight) in servers.iter().zip(WEIGHTS) {
        let share = CONNECTIONS as f64 * f64::from(weight) / f64::from(total_weight);
        println!(
            "   {}: weight {weight:>4}, {:>3} connections (weighted share {share:.1})",
            server.name(),
            counts.get(server.name()).copied().unwrap_or(0)
        );
    }

    println!("\n== lb stats --config {}", daemon.config_path().display());
    print!("{}", daemon.stats_table()?);

    println!("\n== cleaning up");
    drop(conns);
    let (status, log) = daemon.stop()?;
    ensure!(
        status.success(),
        "lb exited with {status} after SIGTERM; its output:\n{log}"
    );
    drop(servers);
    drop(bed);
    println!("   lb stopped, namespaces removed");
    Ok(())
}
