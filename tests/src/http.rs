//! A tiny HTTP/1.1 server for `http` health checks: it runs in a real
//! server's network namespace and answers every request with a status that a
//! test changes at run time, a fixed body (the server's name) and
//! `Connection: close`.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv6Addr, Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::Context as _;

use crate::{NetNs, netns};

/// How often the idle accept loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(5);

/// Read and write timeout of one connection: a client that stalls longer is
/// dropped, so the accept loop (which serves connections one at a time) goes on.
const CONN_TIMEOUT: Duration = Duration::from_secs(1);

/// The most of a request head read; longer heads are answered as they are.
const MAX_HEAD: usize = 16 * 1024;

/// What the accept loop shares with the [`HttpResponder`] handle.
#[derive(Debug)]
struct Shared {
    /// The status code of every answer.
    status: AtomicU16,
    /// The `Host` header of the last request (`None`: no request, or none sent).
    last_host: Mutex<Option<String>>,
    /// Requests answered.
    requests: AtomicU64,
    /// Set when the responder is dropped.
    stop: AtomicBool,
}

/// An HTTP/1.1 server on `[::]:port` (dual stack) inside one network
/// namespace. Every request gets the current status ([`HttpResponder::set_status`],
/// initially 200), the server's name as body and `Connection: close`.
/// Dropping it stops its thread and closes the listening socket.
pub struct HttpResponder {
    name: String,
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl HttpResponder {
    /// Starts responder `name` (also its answers' body) on `[::]:port` in
    /// namespace `ns`, answering 200.
    pub fn start(ns: &NetNs, name: &str, port: u16) -> anyhow::Result<Self> {
        let listener = netns::run_in(&ns.path(), move || {
            TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
                .with_context(|| format!("binding TCP [::]:{port}"))
        })
        .with_context(|| format!("starting the HTTP responder of {name} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            status: AtomicU16::new(200),
            last_host: Mutex::new(None),
            requests: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let body = name.to_owned();
        let loop_shared = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("http-{name}").chars().take(15).collect())
            .spawn(move || accept_loop(&listener, &body, &loop_shared))
            .context("spawning the HTTP responder thread")?;
        Ok(Self {
            name: name.to_owned(),
            port,
            shared,
            thread: Some(thread),
        })
    }

    /// The responder's name: the body of every answer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Answers every later request with `status` (e.g. 503 to fail a check).
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::Relaxed);
    }

    /// The status it currently answers with.
    pub fn status(&self) -> u16 {
        self.shared.status.load(Ordering::Relaxed)
    }

    /// The `Host` header of the last request, if a request came and had one.
    pub fn last_host(&self) -> Option<String> {
        self.shared
            .last_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many requests it has answered.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("test bed: HTTP responder of {} panicked", self.name);
        }
    }
}

/// Accepts connections until `shared.stop` and serves each in turn.
fn accept_loop(listener: &TcpListener, body: &str, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = serve(stream, body, shared) {
                    eprintln!("test bed: HTTP responder {body}: connection from {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) => {
                eprintln!("test bed: HTTP responder {body}: accept failed: {e}");
                thread::sleep(POLL);
            }
        }
    }
}

/// Reads one request head, records its `Host`, answers and closes.
fn serve(mut stream: TcpStream, body: &str, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CONN_TIMEOUT))?;
    stream.set_write_timeout(Some(CONN_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            // Closed before a whole request (e.g. a plain connect check).
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let host = head
        .split("\r\n")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case("host")
                .then(|| value.trim().to_owned())
        });
    *shared.last_host.lock().unwrap_or_else(|e| e.into_inner()) = host;
    let status = shared.status.load(Ordering::Relaxed);
    let answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    stream.write_all(answer.as_bytes())?;
    shared.requests.fetch_add(1, Ordering::Relaxed);
    // Half-close, then let the client close first, so that our close never
    // turns into a reset that could destroy the answer in flight.
    stream.shutdown(Shutdown::Write)?;
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}

/// The reason phrase of `status` (any text is valid HTTP; these read well).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
