//! Backend health probes with keepalived's kinds: `tcp` (TCP_CHECK, a
//! connect), `http` (HTTP_GET: status and optional body MD5) and `exec`
//! (MISC_CHECK, a command's exit status). A [`HealthChecker`] probes one
//! backend of one service forever and sends each result to the daemon, which
//! decides with `Hysteresis` when the backend goes down and comes back.

use std::{
    net::{IpAddr, SocketAddr},
    pin::pin,
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, Request, body::Bytes, header};
use hyper_util::rt::TokioIo;
use md5::{Digest as _, Md5};
use tokio::{
    net::{TcpSocket, TcpStream},
    process::Command,
    sync::mpsc,
    time,
};
use tracing::debug;

use super::command::{describe_exit, io_text, run_bounded};
use crate::config::{ExecCheck, HealthKind, HttpCheck, ServiceConfig};

/// The most of a response body an `http` check reads for its digest.
const MAX_BODY: usize = 1 << 20;
/// The `User-Agent` of `http` checks.
const USER_AGENT: &str = "lb-healthcheck";

/// One result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult<K> {
    /// Which backend this is about, as given to [`HealthChecker::run`].
    pub key: K,
    /// Whether the probe passed.
    pub ok: bool,
    /// Why, in plain words for logs (e.g. `HTTP status 503 (expected 200)`).
    pub detail: String,
}

/// The health checker of one backend of one service.
#[derive(Clone, Debug)]
pub struct HealthChecker {
    probe: Probe,
    /// Service name, VIP and port, for an `exec` check's environment.
    service: String,
    vip: IpAddr,
    service_port: u16,
    backend: IpAddr,
    /// The director's address the probes leave from (`None`: the kernel's
    /// choice).
    source: Option<IpAddr>,
    /// Port probed (`tcp`, `http`) or passed on (`exec`).
    port: u16,
    interval: Duration,
    timeout: Duration,
    retry_delay: Duration,
    warmup: Duration,
}

/// What one probe does.
#[derive(Clone, Debug)]
enum Probe {
    Tcp,
    Http(HttpCheck),
    Exec(ExecCheck),
}

impl HealthChecker {
    /// The checker of `backend` as `service`'s health config says, probing
    /// from `source` when given; `None` for kind "none".
    pub fn new(
        service: &ServiceConfig,
        backend: IpAddr,
        source: Option<IpAddr>,
    ) -> Option<HealthChecker> {
        let health = &service.health;
        let probe = match &health.kind {
            HealthKind::Tcp => Probe::Tcp,
            HealthKind::Http(http) => Probe::Http(http.clone()),
            HealthKind::Exec(exec) => Probe::Exec(exec.clone()),
            HealthKind::None => return None,
        };
        Some(HealthChecker {
            probe,
            service: service.name.clone(),
            vip: service.vip,
            service_port: service.ports.first(),
            backend,
            source,
            port: health.port,
            interval: health.interval,
            timeout: health.timeout,
            retry_delay: health.retry_delay,
            warmup: health.warmup,
        })
    }

    /// Probes forever: first after a random delay in [0, warmup], then every
    /// `interval`, or `retry_delay` after a failed probe (each delay counted
    /// from the end of the previous probe); sends every result with `key`
    /// (stops when the receiver is gone).
    pub async fn run<K: Clone + Send + 'static>(
        self,
        key: K,
        results: mpsc::Sender<CheckResult<K>>,
    ) {
        let mut delay = self.first_delay();
        loop {
            tokio::select! {
                () = time::sleep(delay) => {}
                () = results.closed() => return,
            }
            let (ok, detail) = self.probe().await;
            if !ok {
                debug!(
                    service = %self.service,
                    backend = %self.backend,
                    "health check failed: {detail}"
                );
            }
            let result = CheckResult {
                key: key.clone(),
                ok,
                detail,
            };
            if results.send(result).await.is_err() {
                return;
            }
            delay = self.next_delay(ok);
        }
    }

    /// The start-up jitter: uniformly random in [0, warmup].
    fn first_delay(&self) -> Duration {
        let max = u64::try_from(self.warmup.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=max))
    }

    /// The delay after a probe that passed (`ok`) or failed.
    fn next_delay(&self, ok: bool) -> Duration {
        if ok { self.interval } else { self.retry_delay }
    }

    /// One probe (for tests and for `run`): whether it passed, and why.
    pub async fn probe(&self) -> (bool, String) {
        let target = SocketAddr::new(self.backend, self.port);
        let (what, outcome) = match &self.probe {
            Probe::Exec(exec) => return self.exec(exec).await,
            Probe::Tcp => (
                format!("connect to {target}"),
                time::timeout(self.timeout, tcp(target, self.source)).await,
            ),
            Probe::Http(http) => (
                format!("HTTP GET {} from {target}", http.path),
                time::timeout(self.timeout, self.http(http, target)).await,
            ),
        };
        match outcome {
            Ok(Ok(detail)) => (true, detail),
            Ok(Err(detail)) => (false, detail),
            Err(_) => (false, format!("{what}: timed out after {:?}", self.timeout)),
        }
    }

    /// HTTP/1.1 GET of the check's path; the status (and the body's MD5)
    /// decide.
    async fn http(&self, check: &HttpCheck, target: SocketAddr) -> Result<String, String> {
        let stream = connect(target, self.source).await?;
        let failed = |e: hyper::Error| format!("HTTP GET {} from {target}: {e}", check.path);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(failed)?;
        let host = check
            .host
            .clone()
            .unwrap_or_else(|| default_host(self.backend, self.port));
        let request = Request::builder()
            .method(Method::GET)
            .uri(check.path.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| format!("HTTP GET {}: {e}", check.path))?;
        let exchange = async {
            let response = sender.send_request(request).await.map_err(failed)?;
            let status = response.status().as_u16();
            if !check.status.contains(&status) {
                return Err(format!(
                    "HTTP status {status} (expected {})",
                    expected_status(&check.status)
                ));
            }
            let Some(expected) = check.digest else {
                return Ok(format!("HTTP status {status}"));
            };
            let mut body = response.into_body();
            let mut md5 = Md5::new();
            let mut length = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the body from {target}: {e}"))?;
                if let Some(data) = frame.data_ref() {
                    length += data.len();
                    if length > MAX_BODY {
                        return Err(format!(
                            "body longer than {MAX_BODY} bytes (a digest check reads at most that)"
                        ));
                    }
                    md5.update(data);
                }
            }
            let digest: [u8; 16] = md5.finalize().into();
            if digest != expected {
                return Err(format!(
                    "body MD5 {} (expected {})",
                    hex(&digest),
                    hex(&expected)
                ));
            }
            Ok(format!("HTTP status {status}, body MD5 {}", hex(&digest)))
        };
        let mut exchange = pin!(exchange);
        // The connection future does the I/O; the exchange reads what it
        // delivers, which may still be buffered after the connection ended.
        tokio::select! {
            biased;
            result = &mut exchange => result,
            done = connection => match done {
                Ok(()) => exchange.await,
                Err(e) => Err(failed(e)),
            },
        }
    }

    /// Runs the check's command; exit status 0 means up.
    async fn exec(&self, check: &ExecCheck) -> (bool, String) {
        let Some((program, args)) = check.command.split_first() else {
            return (false, "the command is empty".to_owned());
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env("LB_SERVICE", &self.service)
            .env("LB_VIP", self.vip.to_string())
            .env("LB_PORT", self.service_port.to_string())
            .env("LB_BACKEND", self.backend.to_string())
            .env("LB_CHECK_PORT", self.port.to_string());
        match run_bounded(command, self.timeout).await {
            Ok(status) => (status.success(), describe_exit(status)),
            Err(e) => (false, e.describe(program)),
        }
    }
}

/// TCP connect (from `source` when given); the check passes when it
/// completes.
async fn tcp(target: SocketAddr, source: Option<IpAddr>) -> Result<String, String> {
    connect(target, source).await?;
    Ok(match source {
        Some(source) => format!("connected to {target} from {source}"),
        None => format!("connected to {target}"),
    })
}

/// Connects to `target`, bound to `source` (any port) when given.
async fn connect(target: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let failed = |e: std::io::Error| format!("connect to {target}: {}", io_text(&e));
    let Some(source) = source else {
        return TcpStream::connect(target).await.map_err(failed);
    };
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(failed)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("binding a check of {target} to {source}: {}", io_text(&e)))?;
    socket.connect(target).await.map_err(failed)
}

/// The `Host` header when none is configured: the backend address, IPv6 in
/// brackets, with the port unless it is 80.
fn default_host(backend: IpAddr, port: u16) -> String {
    match (backend, port) {
        (IpAddr::V4(v4), 80) => v4.to_string(),
        (IpAddr::V6(v6), 80) => format!("[{v6}]"),
        _ => SocketAddr::new(backend, port).to_string(),
    }
}

/// `200` or `one of 200, 204`.
fn expected_status(codes: &[u16]) -> String {
    let list = codes
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if codes.len() > 1 {
        format!("one of {list}")
    } else {
        list
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::atomic::{AtomicUsize, Ordering},
        time::Instant,
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;
    use crate::config::{HealthConfig, NoBackend, Protocol, Scheduler};

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A service "web" (VIP 192.0.2.200:80) whose check probes `port`.
    fn service(kind: HealthKind, port: u16) -> ServiceConfig {
        ServiceConfig {
            name: "web".to_owned(),
            vip: "192.0.2.200".parse().unwrap(),
            ports: crate::config::Ports::single(80),
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Wlc,
            no_backend: NoBackend::Drop,
            sloppy_tcp: false,
            sorry_server: None,
            quorum: 1,
            hysteresis: 0,
            persistence: None,
            vlan: Vec::new(),
            health: HealthConfig {
                kind,
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
                port,
                fall: 3,
                rise: 2,
                retry_delay: Duration::from_secs(10),
                warmup: Duration::from_secs(10),
                inhibit_on_failure: false,
                notify: Vec::new(),
                bind_to: None,
            },
            backends: Vec::new(),
        }
    }

    fn checker(kind: HealthKind, port: u16) -> HealthChecker {
        HealthChecker::new(&service(kind, port), LOCALHOST, None).expect("a checker")
    }

    fn http(path: &str) -> HttpCheck {
        HttpCheck {
            path: path.to_owned(),
            status: vec![200],
            digest: None,
            host: None,
        }
    }

    fn exec(argv: &[&str]) -> HealthKind {
        HealthKind::Exec(ExecCheck {
            command: argv.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// A port on 127.0.0.1 that nothing listens on (just released).
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    /// A fresh path in the temp directory.
    fn temp_path(name: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("lb-health-{}-{n}-{name}", std::process::id()))
    }

    /// A one-shot HTTP server on 127.0.0.1: answers each connection with
    /// `status` and `body`, and hands back the request heads it received.
    async fn http_server(status: u16, body: &'static [u8]) -> (u16, mpsc::Receiver<String>) {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, received) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads
                    .send(String::from_utf8_lossy(&head).into_owned())
                    .await;
                let answer = format!(
                    "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.shutdown().await;
            }
        });
        (port, received)
    }

    #[test]
    fn kind_none_has_no_checker() {
        assert!(HealthChecker::new(&service(HealthKind::None, 80), LOCALHOST, None).is_none());
        assert!(HealthChecker::new(&service(HealthKind::Tcp, 80), LOCALHOST, None).is_some());
    }

    /// A check given a source leaves from it (the listener sees it as the
    /// peer), however the kernel would have picked.
    #[tokio::test]
    async fn tcp_check_leaves_from_its_source() {
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let source = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        let check = HealthChecker::new(&service(HealthKind::Tcp, port), LOCALHOST, Some(source))
            .expect("a checker");
        assert_eq!(
            check.probe().await,
            (true, format!("connected to 127.0.0.1:{port} from {source}"))
        );
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), source);
    }

    #[tokio::test]
    async fn tcp_up_and_down() {
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let check = checker(HealthKind::Tcp, port);
        assert_eq!(
            check.probe().await,
            (true, format!("connected to 127.0.0.1:{port}"))
        );
        drop(listener);
        assert_eq!(
            check.probe().await,
            (
                false,
                format!("connect to 127.0.0.1:{port}: connection refused")
            )
        );
    }

    #[tokio::test]
    async fn http_status_matches() {
        let (port, mut heads) = http_server(200, b"fine").await;
        let (ok, detail) = checker(HealthKind::Http(http("/")), port).probe().await;
        assert!(ok, "{detail}");
        assert_eq!(detail, "HTTP status 200");
        assert!(
            heads
                .recv()
                .await
                .unwrap()
                .starts_with("GET / HTTP/1.1\r\n")
        );

        let (port, _heads) = http_server(204, b"").await;
        let check = HttpCheck {
            status: vec![200, 204],
            ..http("/")
        };
        assert_eq!(
            checker(HealthKind::Http(check), port).probe().await,
            (true, "HTTP status 204".to_owned())
        );
    }

    #[tokio::test]
    async fn http_status_mismatch() {
        let (port, _heads) = http_server(503, b"busy").await;
        assert_eq!(
            checker(HealthKind::Http(http("/")), port).probe().await,
            (false, "HTTP status 503 (expected 200)".to_owned())
        );
        let check = HttpCheck {
            status: vec![200, 204],
            ..http("/")
        };
        assert_eq!(
            checker(HealthKind::Http(check), port).probe().await,
            (
                false,
                "HTTP status 503 (expected one of 200, 204)".to_owned()
            )
        );
    }

    #[tokio::test]
    async fn http_digest_match_and_mismatch() {
        // md5("hello")
        let hello = [
            0x5d, 0x41, 0x40, 0x2a, 0xbc, 0x4b, 0x2a, 0x76, 0xb9, 0x71, 0x9d, 0x91, 0x10, 0x17,
            0xc5, 0x92,
        ];
        let (port, _heads) = http_server(200, b"hello").await;
        let check = HttpCheck {
            digest: Some(hello),
            ..http("/index.html")
        };
        assert_eq!(
            checker(HealthKind::Http(check), port).probe().await,
            (
                true,
                "HTTP status 200, body MD5 5d41402abc4b2a76b9719d911017c592".to_owned()
            )
        );

        let (port, _heads) = http_server(200, b"hello, world").await;
        let check = HttpCheck {
            digest: Some(hello),
            ..http("/index.html")
        };
        assert_eq!(
            checker(HealthKind::Http(check), port).probe().await,
            (
                false,
                "body MD5 e4d7f1b4ed2e42d15898f4b27b019da4 (expected \
                 5d41402abc4b2a76b9719d911017c592)"
                    .to_owned()
            )
        );
    }

    #[tokio::test]
    async fn http_request_headers() {
        let (port, mut heads) = http_server(200, b"").await;
        let (ok, detail) = checker(HealthKind::Http(http("/health?full=1")), port)
            .probe()
            .await;
        assert!(ok, "{detail}");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /health?full=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(
            head.contains("\r\nuser-agent: lb-healthcheck\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");

        let check = HttpCheck {
            host: Some("www.example.org".to_owned()),
            ..http("/")
        };
        let (ok, detail) = checker(HealthKind::Http(check), port).probe().await;
        assert!(ok, "{detail}");
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.contains("\r\nhost: www.example.org\r\n"), "{head}");
    }

    #[test]
    fn default_host_header() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            default_host("192.0.2.11".parse().unwrap(), 80),
            "192.0.2.11"
        );
        assert_eq!(
            default_host("192.0.2.11".parse().unwrap(), 8080),
            "192.0.2.11:8080"
        );
        assert_eq!(default_host(v6, 80), "[2001:db8::1]");
        assert_eq!(default_host(v6, 8080), "[2001:db8::1]:8080");
    }

    #[tokio::test]
    async fn http_refused_and_timed_out() {
        let port = closed_port();
        assert_eq!(
            checker(HealthKind::Http(http("/")), port).probe().await,
            (
                false,
                format!("connect to 127.0.0.1:{port}: connection refused")
            )
        );
        // Accepts (the kernel does) but never answers.
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut check = checker(HealthKind::Http(http("/slow")), port);
        check.timeout = Duration::from_millis(300);
        let (ok, detail) = check.probe().await;
        assert!(!ok);
        assert_eq!(
            detail,
            format!("HTTP GET /slow from 127.0.0.1:{port}: timed out after 300ms")
        );
    }

    #[tokio::test]
    async fn exec_exit_status_decides() {
        assert_eq!(
            checker(exec(&["/bin/true"]), 80).probe().await,
            (true, "command exited with status 0".to_owned())
        );
        assert_eq!(
            checker(exec(&["/bin/false"]), 80).probe().await,
            (false, "command exited with status 1".to_owned())
        );
        let (ok, detail) = checker(exec(&["/nonexistent/check"]), 80).probe().await;
        assert!(!ok);
        assert_eq!(
            detail,
            "cannot run \"/nonexistent/check\": no such file or directory"
        );
    }

    #[tokio::test]
    async fn exec_environment() {
        let script = r#"test "$LB_BACKEND" = 127.0.0.1 && test "$LB_SERVICE" = web &&
            test "$LB_VIP" = 192.0.2.200 && test "$LB_PORT" = 80 && test "$LB_CHECK_PORT" = 8080"#;
        let (ok, detail) = checker(exec(&["/bin/sh", "-c", script]), 8080)
            .probe()
            .await;
        assert!(ok, "{detail}");
        let (ok, _) = checker(
            exec(&["/bin/sh", "-c", "test \"$LB_BACKEND\" = 192.0.2.1"]),
            8080,
        )
        .probe()
        .await;
        assert!(!ok);
    }

    #[tokio::test]
    async fn exec_killed_at_timeout_with_its_children() {
        let pid_file = temp_path("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let mut check = checker(exec(&["/bin/sh", "-c", &script]), 80);
        check.timeout = Duration::from_millis(300);
        let start = Instant::now();
        let (ok, detail) = check.probe().await;
        assert!(!ok);
        assert_eq!(detail, "command timed out after 300ms (killed)");
        assert!(start.elapsed() < Duration::from_secs(5));
        // The shell's child (in the same process group) is gone too.
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        std::fs::remove_file(&pid_file).unwrap();
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc.exists() && Instant::now() < deadline {
            time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!proc.exists(), "sleep {} still running", pid.trim());
    }

    #[test]
    fn warmup_jitter_stays_in_range() {
        let mut check = checker(HealthKind::Tcp, 80);
        check.warmup = Duration::from_millis(100);
        let delays: Vec<Duration> = (0..1000).map(|_| check.first_delay()).collect();
        assert!(delays.iter().all(|d| *d <= check.warmup));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(50)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(50)));
        check.warmup = Duration::ZERO;
        assert_eq!(check.first_delay(), Duration::ZERO);
        assert_eq!(check.next_delay(true), check.interval);
        assert_eq!(check.next_delay(false), check.retry_delay);
    }

    /// A failed probe is retried after `retry_delay`, not `interval`.
    #[tokio::test]
    async fn run_retries_after_retry_delay() {
        let mut check = checker(HealthKind::Tcp, closed_port());
        check.warmup = Duration::ZERO;
        check.interval = Duration::from_secs(3600);
        check.retry_delay = Duration::from_millis(50);
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(check.run("b1", tx));
        for _ in 0..3 {
            let result = time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a retry within 5s")
                .unwrap();
            assert_eq!(result.key, "b1");
            assert!(!result.ok);
            assert!(result.detail.ends_with("connection refused"), "{result:?}");
        }
        // The checker stops once nobody listens.
        drop(rx);
        time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run ends without a receiver")
            .unwrap();
    }

    /// A passed probe waits `interval`; the first waits at most `warmup`.
    #[tokio::test]
    async fn run_waits_interval_after_success() {
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let mut check = checker(HealthKind::Tcp, listener.local_addr().unwrap().port());
        check.warmup = Duration::from_millis(100);
        check.interval = Duration::from_secs(3600);
        check.retry_delay = Duration::from_millis(10);
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(check.run(7_usize, tx));
        let first = time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a first result after the warm-up")
            .unwrap();
        assert!(first.ok, "{first:?}");
        assert_eq!(first.key, 7);
        assert!(
            time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "probed again before the interval"
        );
        // Dropping the receiver ends a checker that is waiting out its
        // interval, not only one that is sending.
        drop(rx);
        time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run ends without a receiver")
            .unwrap();
    }
}
