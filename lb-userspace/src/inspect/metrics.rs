//! Prometheus metrics: [`render`] turns a [`Snapshot`] into the OpenMetrics
//! text format (with the Prometheus project's `prometheus-client` crate) and
//! [`serve`] answers `GET /metrics` with it over HTTP/1 (hyper).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `lb_service_connections_total` | counter | service, vip, port, protocol, vlan |
//! | `lb_service_incoming_packets_total` | counter | service, vip, port, protocol, vlan |
//! | `lb_service_incoming_bytes_total` | counter | service, vip, port, protocol, vlan |
//! | `lb_service_connections_active` | gauge | service, vip, port, protocol, vlan |
//! | `lb_service_connections_inactive` | gauge | service, vip, port, protocol, vlan |
//! | `lb_backend_connections_total` | counter | service, vip, port, protocol, vlan, backend |
//! | `lb_backend_incoming_packets_total` | counter | service, vip, port, protocol, vlan, backend |
//! | `lb_backend_incoming_bytes_total` | counter | service, vip, port, protocol, vlan, backend |
//! | `lb_backend_connections_active` | gauge | service, vip, port, protocol, vlan, backend |
//! | `lb_backend_connections_inactive` | gauge | service, vip, port, protocol, vlan, backend |
//! | `lb_backend_connections_persistent` | gauge | service, vip, port, protocol, vlan, backend |
//! | `lb_backend_weight` | gauge | service, vip, port, protocol, vlan, backend |
//! | `lb_backend_up` | gauge | service, vip, port, protocol, vlan, backend |
//! | `lb_flows` | gauge | family |
//! | `lb_flow_capacity` | gauge | family |
//! | `lb_pending_flows` | gauge | family |
//! | `lb_pending_flow_capacity` | gauge | family |
//! | `lb_flow_insert_failures_total` | counter | family |
//! | `lb_pending_insert_failures_total` | counter | family |
//! | `lb_pending_evictions_total` | counter | family |
//! | `lb_stateless_syns_total` | counter | family |
//! | `lb_hashed_acks_total` | counter | family |
//! | `lb_flow_filter_marks` | gauge | kind (`confirmed`, `pending`) |
//! | `lb_flow_filter_positions` | gauge | kind |
//! | `lb_flood_mode` | gauge | |
//! | `lb_syn_flood_rate` | gauge | |
//! | `lb_verdict_packets_total` | counter | reason |
//! | `lb_verdict_bytes_total` | counter | reason |
//! | `lb_nic_incoming_packets_total` | counter | nic |
//! | `lb_nic_incoming_bytes_total` | counter | nic |
//! | `lb_nic_outgoing_packets_total` | counter | nic |
//! | `lb_nic_outgoing_bytes_total` | counter | nic |
//! | `lb_nic_redirected_packets_total` | counter | nic |
//! | `lb_nic_redirected_bytes_total` | counter | nic |
//! | `lb_sync_messages_sent_total`, `lb_sync_messages_received_total` | counter | |
//! | `lb_sync_flows_sent_total`, `lb_sync_flows_received_total` | counter | |
//! | `lb_sync_flows_installed_total`, `lb_sync_flows_expired_total`, `lb_sync_flows_rejected_total` | counter | |
//! | `lb_sync_messages_rejected_total` | counter | reason (`auth`, `replay`, `malformed`) |
//! | `lb_sync_changes_lost_total` | counter | |
//! | `lb_sync_lag_milliseconds` | gauge | |
//!
//! The `lb_sync_*` families are there while `lb run` syncs flows (`[sync]`).
//!
//! The names follow node_exporter's IPVS collector (`node_ipvs_*`). `vlan`
//! is a service's VLAN id (`4001`; `100.4001` for QinQ), empty for
//! untagged frames.

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use super::stats::{
    BackendStats, FloodStats, FlowTableStats, NicStats, ServiceStats, Snapshot, VerdictStats,
};
use crate::{datapath::flow_filter::MarkCount, sync::SyncStats};

/// Content type of the OpenMetrics text format that [`render`] produces.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";

/// The most metrics connections served at once; one more is closed as soon
/// as it is accepted, so idle or slow clients cannot use up lb's file
/// descriptors (health checks need them).
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may stay open, busy or idle: a scrape takes
/// milliseconds, and Prometheus reconnects for the next one.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Where a snapshot for one scrape comes from (e.g. `Snapshot::read_named`
/// on the daemon's maps).
pub type SnapshotSource = Arc<dyn Fn() -> anyhow::Result<Snapshot> + Send + Sync>;

/// Labels of a service's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    vip: String,
    port: u16,
    protocol: String,
    vlan: String,
}

impl ServiceLabels {
    fn of(s: &ServiceStats) -> Self {
        let vlan: Vec<String> = s.vlan.iter().map(u16::to_string).collect();
        Self {
            service: s.name.clone(),
            vip: s.vip.to_string(),
            port: s.port,
            protocol: s.protocol.to_owned(),
            vlan: vlan.join("."),
        }
    }
}

/// Labels of a backend's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    #[prometheus(flatten)]
    service: ServiceLabels,
    backend: String,
}

impl BackendLabels {
    fn of(s: &ServiceStats, b: &BackendStats) -> Self {
        Self {
            service: ServiceLabels::of(s),
            backend: b.address.to_string(),
        }
    }
}

/// Labels of the connection-table gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

/// The per-family flow-table families.
const TABLE_METRICS: [Def<FlowTableStats>; 9] = [
    Def {
        name: "flows",
        help: "Flows in the connection table of the family (confirmed flows; a full table \
               refuses new ones, which stay pending).",
        bytes: false,
        kind: Kind::Gauge,
        value: |t| t.flows,
    },
    Def {
        name: "flow_capacity",
        help: "Capacity of the connection table of the family (max_flows, max_flows_v6).",
        bytes: false,
        kind: Kind::Gauge,
        value: |t| u64::from(t.capacity),
    },
    Def {
        name: "pending_flows",
        help: "Flows in the pending table of the family (half-open flows and the connection \
               table's overflow; a full set evicts its least recently seen flow).",
        bytes: false,
        kind: Kind::Gauge,
        value: |t| t.pending,
    },
    Def {
        name: "pending_flow_capacity",
        help: "Capacity of the pending table of the family.",
        bytes: false,
        kind: Kind::Gauge,
        value: |t| u64::from(t.pending_capacity),
    },
    Def {
        name: "flow_insert_failures",
        help: "Confirmed flows the full connection table refused (kept in the pending table).",
        bytes: false,
        kind: Kind::Counter,
        value: |t| t.insert_failed,
    },
    Def {
        name: "pending_insert_failures",
        help: "New flows not even the pending table could take (forwarded unrecorded).",
        bytes: false,
        kind: Kind::Counter,
        value: |t| t.pending_insert_failed,
    },
    Def {
        name: "pending_evictions",
        help: "Flows the pending table evicted for newer ones.",
        bytes: false,
        kind: Kind::Counter,
        value: |t| t.evictions,
    },
    Def {
        name: "stateless_syns",
        help: "SYNs forwarded in flood mode by the hash of their tuple, without a table entry.",
        bytes: false,
        kind: Kind::Counter,
        value: |t| t.stateless_syns,
    },
    Def {
        name: "hashed_acks",
        help: "ACKs of flows no table held, picked up by the hash during or just after flood \
               mode and recorded.",
        bytes: false,
        kind: Kind::Counter,
        value: |t| t.hashed_acks,
    },
];

/// The flow filter's families, per kind of mark.
const FILTER_METRICS: [Def<MarkCount>; 2] = [
    Def {
        name: "flow_filter_marks",
        help: "Marks of the kind set in the flow filter's current generation (near all set: \
               SYNs look in that kind's tables as if there were no filter).",
        bytes: false,
        kind: Kind::Gauge,
        value: |m| m.set,
    },
    Def {
        name: "flow_filter_positions",
        help: "Marks of the kind in one generation of the flow filter.",
        bytes: false,
        kind: Kind::Gauge,
        value: |m| m.positions,
    },
];

/// Labels of the flow filter's families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilterLabels {
    kind: &'static str,
}

/// The SYN-flood guard's families (no labels).
const FLOOD_METRICS: [Def<FloodStats>; 2] = [
    Def {
        name: "flood_mode",
        help: "1 while the director is in flood mode (new SYNs forwarded by hash, unrecorded).",
        bytes: false,
        kind: Kind::Gauge,
        value: |f| u64::from(f.active),
    },
    Def {
        name: "syn_flood_rate",
        help: "New TCP flows per second on one CPU that start flood mode (0: the guard is off).",
        bytes: false,
        kind: Kind::Gauge,
        value: |f| u64::from(f.syn_flood_rate),
    },
];

/// Labels of the verdict counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    reason: String,
}

/// Labels of the per-NIC counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NicLabels {
    nic: String,
}

/// The per-NIC families.
const NIC_METRICS: [Def<NicStats>; 6] = [
    Def {
        name: "nic_incoming_packets",
        help: "Frames forwarded to backends that arrived on the director NIC.",
        bytes: false,
        kind: Kind::Counter,
        value: |n| n.in_pkts,
    },
    Def {
        name: "nic_incoming",
        help: "IP-layer bytes of the frames forwarded to backends that arrived on the NIC.",
        bytes: true,
        kind: Kind::Counter,
        value: |n| n.in_bytes,
    },
    Def {
        name: "nic_outgoing_packets",
        help: "Frames forwarded to backends that left through the director NIC.",
        bytes: false,
        kind: Kind::Counter,
        value: |n| n.out_pkts,
    },
    Def {
        name: "nic_outgoing",
        help: "IP-layer bytes of the frames forwarded to backends that left through the NIC.",
        bytes: true,
        kind: Kind::Counter,
        value: |n| n.out_bytes,
    },
    Def {
        name: "nic_redirected_packets",
        help: "Frames that arrived on the NIC and were redirected out of another \
               (backends on-link through another NIC).",
        bytes: false,
        kind: Kind::Counter,
        value: |n| n.redirected_pkts,
    },
    Def {
        name: "nic_redirected",
        help: "IP-layer bytes of the frames that arrived on the NIC and were redirected out \
               of another.",
        bytes: true,
        kind: Kind::Counter,
        value: |n| n.redirected_bytes,
    },
];

/// Whether a metric is a counter or a gauge.
#[derive(Clone, Copy)]
enum Kind {
    /// Only goes up; exposed with a `_total` suffix.
    Counter,
    /// A current value.
    Gauge,
}

/// One metric family: name (after the `lb_` prefix; a byte count gets the
/// `_bytes` unit suffix), help text, kind, and how to read its value.
struct Def<T> {
    name: &'static str,
    help: &'static str,
    bytes: bool,
    kind: Kind,
    value: fn(&T) -> u64,
}

/// The per-service families.
const SERVICE_METRICS: [Def<ServiceStats>; 5] = [
    Def {
        name: "service_connections",
        help: "Connections scheduled to the service (IPVS Conns).",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.conns,
    },
    Def {
        name: "service_incoming_packets",
        help: "Packets forwarded for the service (IPVS InPkts).",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.in_pkts,
    },
    Def {
        name: "service_incoming",
        help: "IP-layer bytes forwarded for the service (IPVS InBytes).",
        bytes: true,
        kind: Kind::Counter,
        value: |s| s.in_bytes,
    },
    Def {
        name: "service_connections_active",
        help: "Flows in ESTABLISHED over all backends (IPVS ActiveConn).",
        bytes: false,
        kind: Kind::Gauge,
        value: |s| s.active_conns,
    },
    Def {
        name: "service_connections_inactive",
        help: "Flows in other states over all backends (IPVS InActConn).",
        bytes: false,
        kind: Kind::Gauge,
        value: |s| s.inactive_conns,
    },
];

/// The per-backend families.
const BACKEND_METRICS: [Def<BackendStats>; 8] = [
    Def {
        name: "backend_connections",
        help: "Connections scheduled to the real server (IPVS Conns).",
        bytes: false,
        kind: Kind::Counter,
        value: |b| b.conns,
    },
    Def {
        name: "backend_incoming_packets",
        help: "Packets forwarded to the real server (IPVS InPkts).",
        bytes: false,
        kind: Kind::Counter,
        value: |b| b.in_pkts,
    },
    Def {
        name: "backend_incoming",
        help: "IP-layer bytes forwarded to the real server (IPVS InBytes).",
        bytes: true,
        kind: Kind::Counter,
        value: |b| b.in_bytes,
    },
    Def {
        name: "backend_connections_active",
        help: "Flows to the real server in ESTABLISHED (IPVS ActiveConn).",
        bytes: false,
        kind: Kind::Gauge,
        value: |b| b.active_conns,
    },
    Def {
        name: "backend_connections_inactive",
        help: "Flows to the real server in other states (IPVS InActConn).",
        bytes: false,
        kind: Kind::Gauge,
        value: |b| b.inactive_conns,
    },
    Def {
        name: "backend_connections_persistent",
        help: "Persistence templates of clients bound to the real server (IPVS PersistConn).",
        bytes: false,
        kind: Kind::Gauge,
        value: |b| b.persist_conns,
    },
    Def {
        name: "backend_weight",
        help: "WLC weight of the real server.",
        bytes: false,
        kind: Kind::Gauge,
        value: |b| u64::from(b.weight),
    },
    Def {
        name: "backend_up",
        help: "1 if the real server is up (may take new flows), 0 if down or removed.",
        bytes: false,
        kind: Kind::Gauge,
        value: |b| u64::from(b.state == "up"),
    },
];

/// Labels of the refused sync messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// The sync families without labels.
const SYNC_METRICS: [Def<SyncStats>; 9] = [
    Def {
        name: "sync_messages_sent",
        help: "Connection-sync messages sent.",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.messages_sent,
    },
    Def {
        name: "sync_messages_received",
        help: "Connection-sync messages received and accepted.",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.messages_received,
    },
    Def {
        name: "sync_flows_sent",
        help: "Flows sent to the other directors.",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.flows_sent,
    },
    Def {
        name: "sync_flows_received",
        help: "Flows in accepted messages.",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.flows_received,
    },
    Def {
        name: "sync_flows_installed",
        help: "Received flows installed or refreshed in a connection table.",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.flows_installed,
    },
    Def {
        name: "sync_flows_expired",
        help: "Received flow copies removed because their owner expired them.",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.flows_expired,
    },
    Def {
        name: "sync_flows_rejected",
        help: "Received flows not installed (unknown service or backend, conflict, full table).",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.flows_rejected,
    },
    Def {
        name: "sync_changes_lost",
        help: "Flow changes the data path's full ring could not hand to sync.",
        bytes: false,
        kind: Kind::Counter,
        value: |s| s.changes_lost,
    },
    Def {
        name: "sync_lag_milliseconds",
        help: "Milliseconds between the sending and the receipt of the last accepted message.",
        bytes: false,
        kind: Kind::Gauge,
        value: |s| s.lag_ms.unwrap_or(0),
    },
];

/// Refused sync messages, by reason.
const SYNC_REJECTED: Def<(SyncStats, &str)> = Def {
    name: "sync_messages_rejected",
    help: "Connection-sync datagrams refused: a wrong tag or a source that is no peer (auth), \
           a replay, or malformed.",
    bytes: false,
    kind: Kind::Counter,
    value: |(s, reason)| match *reason {
        "auth" => s.messages_rejected_auth,
        "replay" => s.messages_rejected_replay,
        _ => s.messages_rejected_malformed,
    },
};

/// The per-verdict families.
const VERDICT_METRICS: [Def<VerdictStats>; 2] = [
    Def {
        name: "verdict_packets",
        help: "Frames the XDP program saw, by verdict reason.",
        bytes: false,
        kind: Kind::Counter,
        value: |v| v.packets,
    },
    Def {
        name: "verdict",
        help: "IP-layer bytes of the frames the XDP program saw, by verdict reason.",
        bytes: true,
        kind: Kind::Counter,
        value: |v| v.bytes,
    },
];

/// Encodes a snapshot on each scrape, in the snapshot's order (services by
/// id, backends by slot), so that the output is stable.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl SnapshotCollector {
    /// Encodes one family with a sample per `(labels, item)`.
    fn family<'a, T: 'a, L: EncodeLabelSet>(
        encoder: &mut DescriptorEncoder,
        def: &Def<T>,
        samples: impl Iterator<Item = (L, &'a T)>,
    ) -> Result<(), std::fmt::Error> {
        let bytes = Unit::Bytes;
        let metric_type = match def.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        };
        let unit = def.bytes.then_some(&bytes);
        let mut metric = encoder.encode_descriptor(def.name, def.help, unit, metric_type)?;
        for (labels, item) in samples {
            let value = (def.value)(item);
            let sample = metric.encode_family(&labels)?;
            match def.kind {
                Kind::Counter => ConstCounter::new(value).encode(sample)?,
                Kind::Gauge => ConstGauge::new(value).encode(sample)?,
            }
        }
        Ok(())
    }

    /// Each metric of `defs` ([`Self::family`]) over the same labelled
    /// `samples`, one per label set (the families per address family, per
    /// kind of filter mark).
    fn families<T, L: EncodeLabelSet + Clone>(
        encoder: &mut DescriptorEncoder,
        defs: &[Def<T>],
        samples: &[(L, &T)],
    ) -> Result<(), std::fmt::Error> {
        for def in defs {
            Self::family(
                encoder,
                def,
                samples.iter().map(|(labels, item)| (labels.clone(), *item)),
            )?;
        }
        Ok(())
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let services = &self.0.services;
        for def in &SERVICE_METRICS {
            Self::family(
                &mut encoder,
                def,
                services.iter().map(|s| (ServiceLabels::of(s), s)),
            )?;
        }
        for def in &BACKEND_METRICS {
            Self::family(
                &mut encoder,
                def,
                services
                    .iter()
                    .flat_map(|s| s.backends.iter().map(move |b| (BackendLabels::of(s, b), b))),
            )?;
        }
        let tables = [
            (FamilyLabels { family: "ipv4" }, &self.0.flows.ipv4),
            (FamilyLabels { family: "ipv6" }, &self.0.flows.ipv6),
        ];
        Self::families(&mut encoder, &TABLE_METRICS, &tables)?;
        let filter = [
            (FilterLabels { kind: "confirmed" }, &self.0.filter.confirmed),
            (FilterLabels { kind: "pending" }, &self.0.filter.pending),
        ];
        Self::families(&mut encoder, &FILTER_METRICS, &filter)?;
        for def in &FLOOD_METRICS {
            Self::family(
                &mut encoder,
                def,
                // No labels.
                std::iter::once((Vec::<(&str, &str)>::new(), &self.0.flood)),
            )?;
        }
        for def in &VERDICT_METRICS {
            Self::family(
                &mut encoder,
                def,
                self.0.verdicts.iter().map(|v| {
                    (
                        VerdictLabels {
                            reason: v.reason.to_owned(),
                        },
                        v,
                    )
                }),
            )?;
        }
        for def in &NIC_METRICS {
            Self::family(
                &mut encoder,
                def,
                self.0.nics.iter().map(|n| {
                    (
                        NicLabels {
                            nic: n.name.clone(),
                        },
                        n,
                    )
                }),
            )?;
        }
        if let Some(sync) = &self.0.sync {
            for def in &SYNC_METRICS {
                Self::family(
                    &mut encoder,
                    def,
                    // No labels.
                    std::iter::once((Vec::<(&str, &str)>::new(), sync)),
                )?;
            }
            let reasons: Vec<_> = ["auth", "replay", "malformed"]
                .into_iter()
                .map(|reason| (sync.clone(), reason))
                .collect();
            Self::family(
                &mut encoder,
                &SYNC_REJECTED,
                reasons
                    .iter()
                    .map(|item| (RefusalLabels { reason: item.1 }, item)),
            )?;
        }
        Ok(())
    }
}

/// The snapshot as an OpenMetrics text exposition (ends with `# EOF`).
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("lb");
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Serves `GET /metrics` on `listener` until the task is dropped: each
/// scrape calls `source` (on a blocking thread: it reads the maps) and
/// answers 200 with [`render`], or 500 with the error; other paths get 404.
/// At most [`MAX_CONNECTIONS`] at once, each closed after
/// [`HEADER_READ_TIMEOUT`] without a request and after
/// [`CONNECTION_LIFETIME`] in any case.
pub async fn serve(listener: TcpListener, source: SnapshotSource) -> anyhow::Result<()> {
    let local = listener
        .local_addr()
        .context("the metrics listener has no address")?;
    debug!(%local, "serving metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: keep serving.
                warn!(%local, error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metrics: {MAX_CONNECTIONS} connections open already, closing this one");
            drop(stream);
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| respond(request, source.clone()));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection"),
                Err(_) => {
                    debug!(%peer, "metrics connection open for {CONNECTION_LIFETIME:?}: closed")
                }
            }
        });
    }
}

/// Answers one request.
async fn respond(
    request: Request<Incoming>,
    source: SnapshotSource,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != METRICS_PATH {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("a valid header"));
        return Ok(response);
    }
    let snapshot = tokio::task::spawn_blocking(move || source())
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("reading the counters: {e}")));
    Ok(match snapshot {
        Ok(snapshot) => {
            let mut response = Response::new(Full::new(Bytes::from(render(&snapshot))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                CONTENT_TYPE_OPENMETRICS.parse().expect("a valid header"),
            );
            response
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "metrics scrape failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}\n"))
        }
    })
}

/// A `text/plain` response.
fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("a valid header"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;
    use crate::{
        datapath::flow_filter::FilterOccupancy,
        inspect::stats::{FlowTables, NicStats},
    };

    fn snapshot() -> Snapshot {
        let backend = |slot: u32, address: &str, weight, state: &str, conns| BackendStats {
            slot,
            address: address.parse().unwrap(),
            mac: "02:00:00:00:00:11".to_owned(),
            weight,
            state: state.to_owned(),
            active_conns: conns,
            inactive_conns: 1,
            persist_conns: 0,
            conns: conns + 1,
            in_pkts: 10 * conns,
            in_bytes: 600 * conns,
            rate: None,
        };
        Snapshot {
            services: vec![
                ServiceStats {
                    id: 0,
                    name: "web".to_owned(),
                    vip: "192.0.2.200".parse().unwrap(),
                    port: 8080,
                    ports: "8080".to_owned(),
                    protocol: "tcp",
                    scheduler: "wlc",
                    vlan: Vec::new(),
                    conns: 32,
                    in_pkts: 300,
                    in_bytes: 18_000,
                    active_conns: 30,
                    inactive_conns: 2,
                    persist_conns: 0,
                    rate: None,
                    backends: vec![
                        backend(0, "192.0.2.11", 1000, "up", 20),
                        backend(1, "192.0.2.12", 500, "down", 10),
                    ],
                },
                ServiceStats {
                    id: 1,
                    name: "[2001:db8::200]:53/udp vlan 100.4001".to_owned(),
                    vip: "2001:db8::200".parse().unwrap(),
                    port: 53,
                    ports: "53".to_owned(),
                    protocol: "udp",
                    scheduler: "wlc",
                    vlan: vec![100, 4001],
                    conns: 0,
                    in_pkts: 0,
                    in_bytes: 0,
                    active_conns: 0,
                    inactive_conns: 0,
                    persist_conns: 0,
                    rate: None,
                    backends: vec![backend(0, "2001:db8::11", 1, "removed", 0)],
                },
            ],
            verdicts: vec![
                VerdictStats {
                    reason: "forwarded",
                    packets: 300,
                    bytes: 18_000,
                },
                VerdictStats {
                    reason: "pass_no_service",
                    packets: 7,
                    bytes: 420,
                },
            ],
            flows: FlowTables {
                ipv4: FlowTableStats {
                    flows: 12,
                    capacity: 1024,
                    pending: 2,
                    pending_capacity: 1024,
                    insert_failed: 5,
                    pending_insert_failed: 0,
                    evictions: 40,
                    stateless_syns: 7000,
                    hashed_acks: 9,
                },
                ipv6: FlowTableStats {
                    flows: 3,
                    capacity: 512,
                    ..FlowTableStats::default()
                },
            },
            filter: FilterOccupancy {
                confirmed: MarkCount {
                    set: 3000,
                    positions: 3072,
                },
                pending: MarkCount {
                    set: 12,
                    positions: 1024,
                },
            },
            nics: vec![
                NicStats {
                    name: "eth0".to_owned(),
                    ifindex: 2,
                    in_pkts: 300,
                    in_bytes: 18_000,
                    redirected_pkts: 100,
                    redirected_bytes: 6_000,
                    out_pkts: 200,
                    out_bytes: 12_000,
                },
                NicStats {
                    name: "eth1".to_owned(),
                    ifindex: 3,
                    out_pkts: 100,
                    out_bytes: 6_000,
                    ..NicStats::default()
                },
            ],
            flood: FloodStats {
                syn_flood_rate: 100_000,
                active: true,
                picking_up_acks: true,
            },
            sync: Some(SyncStats {
                messages_sent: 9,
                flows_installed: 61,
                messages_rejected_replay: 1,
                lag_ms: Some(3),
                ..SyncStats::default()
            }),
            read_at_ns: 0,
        }
    }

    #[test]
    fn render_has_every_metric_line() {
        let text = render(&snapshot());
        let web = r#"service="web",vip="192.0.2.200",port="8080",protocol="tcp",vlan="""#;
        let rs1 = format!(r#"{web},backend="192.0.2.11""#);
        let rs2 = format!(r#"{web},backend="192.0.2.12""#);
        let dns = r#"service="[2001:db8::200]:53/udp vlan 100.4001",vip="2001:db8::200",port="53",protocol="udp",vlan="100.4001",backend="2001:db8::11""#;
        for line in [
            "# TYPE lb_service_connections counter".to_owned(),
            "# HELP lb_service_connections Connections scheduled to the service (IPVS Conns)."
                .to_owned(),
            format!("lb_service_connections_total{{{web}}} 32"),
            format!("lb_service_incoming_packets_total{{{web}}} 300"),
            "# UNIT lb_service_incoming_bytes bytes".to_owned(),
            format!("lb_service_incoming_bytes_total{{{web}}} 18000"),
            "# TYPE lb_service_connections_active gauge".to_owned(),
            format!("lb_service_connections_active{{{web}}} 30"),
            format!("lb_service_connections_inactive{{{web}}} 2"),
            format!("lb_backend_connections_total{{{rs1}}} 21"),
            format!("lb_backend_incoming_packets_total{{{rs1}}} 200"),
            format!("lb_backend_incoming_bytes_total{{{rs1}}} 12000"),
            format!("lb_backend_connections_active{{{rs1}}} 20"),
            format!("lb_backend_connections_inactive{{{rs1}}} 1"),
            format!("lb_backend_weight{{{rs1}}} 1000"),
            format!("lb_backend_up{{{rs1}}} 1"),
            format!("lb_backend_up{{{rs2}}} 0"),
            format!("lb_backend_weight{{{rs2}}} 500"),
            format!("lb_backend_up{{{dns}}} 0"),
            format!("lb_backend_connections_total{{{dns}}} 1"),
            r#"lb_flows{family="ipv4"} 12"#.to_owned(),
            r#"lb_flow_capacity{family="ipv6"} 512"#.to_owned(),
            r#"lb_pending_flows{family="ipv4"} 2"#.to_owned(),
            r#"lb_pending_flow_capacity{family="ipv4"} 1024"#.to_owned(),
            r#"lb_flow_insert_failures_total{family="ipv4"} 5"#.to_owned(),
            r#"lb_pending_insert_failures_total{family="ipv6"} 0"#.to_owned(),
            r#"lb_pending_evictions_total{family="ipv4"} 40"#.to_owned(),
            r#"lb_stateless_syns_total{family="ipv4"} 7000"#.to_owned(),
            r#"lb_hashed_acks_total{family="ipv4"} 9"#.to_owned(),
            r#"lb_flow_filter_marks{kind="confirmed"} 3000"#.to_owned(),
            r#"lb_flow_filter_positions{kind="pending"} 1024"#.to_owned(),
            "lb_flood_mode{} 1".to_owned(),
            "lb_syn_flood_rate{} 100000".to_owned(),
            r#"lb_verdict_packets_total{reason="forwarded"} 300"#.to_owned(),
            r#"lb_verdict_bytes_total{reason="pass_no_service"} 420"#.to_owned(),
            r#"lb_nic_incoming_packets_total{nic="eth0"} 300"#.to_owned(),
            r#"lb_nic_incoming_bytes_total{nic="eth1"} 0"#.to_owned(),
            r#"lb_nic_outgoing_packets_total{nic="eth1"} 100"#.to_owned(),
            r#"lb_nic_outgoing_bytes_total{nic="eth0"} 12000"#.to_owned(),
            r#"lb_nic_redirected_packets_total{nic="eth0"} 100"#.to_owned(),
            r#"lb_nic_redirected_bytes_total{nic="eth0"} 6000"#.to_owned(),
            "lb_sync_messages_sent_total{} 9".to_owned(),
            "lb_sync_flows_installed_total{} 61".to_owned(),
            "lb_sync_flows_rejected_total{} 0".to_owned(),
            r#"lb_sync_messages_rejected_total{reason="replay"} 1"#.to_owned(),
            r#"lb_sync_messages_rejected_total{reason="auth"} 0"#.to_owned(),
            "lb_sync_lag_milliseconds{} 3".to_owned(),
            "# EOF".to_owned(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Sends `request` to `addr` and returns the whole response.
    async fn fetch(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    }

    /// 2,000 idle connections: those over [`MAX_CONNECTIONS`] are closed at
    /// once, the others after [`HEADER_READ_TIMEOUT`], and a scrape is
    /// answered again by then, with the idle clients still connected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_lock_out_scrapes() {
        const IDLE: usize = 2_000;
        crate::host::privilege::raise_open_files_limit().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok: SnapshotSource = Arc::new(|| Ok(snapshot()));
        let server = tokio::spawn(serve(listener, ok));

        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = tokio::time::Instant::now();
        let mut closed_at_once = 0;
        for stream in &mut idle {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await
            {
                closed_at_once += 1;
            }
        }
        assert!(
            closed_at_once >= IDLE - MAX_CONNECTIONS - 1,
            "only {closed_at_once} of {IDLE} idle connections were closed at once"
        );

        let deadline = started + HEADER_READ_TIMEOUT + Duration::from_secs(3);
        let answered = loop {
            // A scrape refused at the cap sees the connection closed (or
            // reset): try again.
            let response = async {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(get("/metrics").as_bytes()).await?;
                let mut response = String::new();
                stream.read_to_string(&mut response).await?;
                std::io::Result::Ok(response)
            }
            .await
            .unwrap_or_default();
            if response.starts_with("HTTP/1.1 200 OK\r\n") {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            answered,
            "no scrape answered within {HEADER_READ_TIMEOUT:?} + 3 s of {IDLE} idle connections"
        );
        drop(idle);
        server.abort();
    }

    #[tokio::test]
    async fn serve_answers_200_404_405_and_500() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok: SnapshotSource = Arc::new(|| Ok(snapshot()));
        let server = tokio::spawn(serve(listener, ok));

        let response = fetch(addr, &get("/metrics")).await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE_OPENMETRICS}")),
            "{head}"
        );
        assert_eq!(body, render(&snapshot()));

        let response = fetch(addr, &get("/")).await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        let response = fetch(addr, &get("/metrics/x")).await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        let post =
            "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let response = fetch(addr, post).await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{response}"
        );
        server.abort();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failing: SnapshotSource = Arc::new(|| {
            Err(anyhow::anyhow!(
                "no lb data path is pinned at /sys/fs/bpf/x"
            ))
        });
        let server = tokio::spawn(serve(listener, failing));
        let response = fetch(addr, &get("/metrics")).await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{head}"
        );
        assert_eq!(body, "no lb data path is pinned at /sys/fs/bpf/x\n");
        server.abort();
    }
}
