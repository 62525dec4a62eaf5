//! In-process real servers: TCP and UDP servers whose sockets live in a real
//! server's network namespace.
//!
//! The TCP protocol, line based:
//! - on accept the server sends its name (`rs1\n`), then keeps the
//!   connection open until the client closes it or the server is dropped;
//! - `ping\n` is answered with the name again;
//! - `upload N\n` followed by N raw bytes is answered with `N HASH\n`, HASH
//!   being the [`crate::Fnv64`] of the bytes in 16 hex digits;
//! - `download N\n` is answered with the N bytes of [`crate::payload`].
//!
//! The UDP server answers `ping\n` with the name, and any other datagram
//! with `NAME LEN HASH\n`: the name, the datagram's length and the
//! [`crate::Fnv64`] of its bytes in 16 hex digits (a datagram that arrived
//! whole, reassembled from its IP fragments, has the length and hash the
//! client sent).

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::Context as _;

use crate::{Fnv64, NetNs, netns, payload};

/// How often idle server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(5);

/// Stack size of the per-connection threads (hundreds of them per test).
const CONN_STACK: usize = 256 * 1024;

/// Accepted connections (clones, to shut them down on drop) and their threads.
type Conns = Mutex<Vec<(TcpStream, JoinHandle<()>)>>;

/// A real server: a TCP listener on `[::]:port` (dual stack) and UDP sockets
/// on given addresses, all inside one network namespace. Dropping it stops
/// every thread and closes every connection.
pub struct RealServer {
    name: String,
    ns_path: PathBuf,
    port: u16,
    /// Set when the whole server stops.
    stopping: Arc<AtomicBool>,
    conns: Arc<Conns>,
    tcp: Option<Listener>,
    udp: Vec<JoinHandle<()>>,
}

/// A running accept loop.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl RealServer {
    /// Starts server `name` in namespace `ns`: TCP on `[::]:port` and UDP on
    /// each of `udp_addrs` (bind the VIPs there, so replies leave from the VIP).
    pub fn start(
        ns: &NetNs,
        name: &str,
        port: u16,
        udp_addrs: &[SocketAddr],
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            name: name.to_owned(),
            ns_path: ns.path(),
            port,
            stopping: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            tcp: None,
            udp: Vec::new(),
        };
        server.start_listener()?;
        let addrs = udp_addrs.to_vec();
        let sockets = netns::run_in(&server.ns_path, move || {
            addrs
                .iter()
                .map(|a| UdpSocket::bind(a).with_context(|| format!("binding UDP {a}")))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .with_context(|| format!("starting UDP on real server {name}"))?;
        for socket in sockets {
            socket.set_read_timeout(Some(POLL * 10))?;
            let name = name.to_owned();
            let stopping = server.stopping.clone();
            server.udp.push(
                thread::Builder::new()
                    .name(format!("udp-{name}"))
                    .spawn(move || serve_udp(&socket, &name, &stopping))?,
            );
        }
        Ok(server)
    }

    /// The server's name, which it sends to clients.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the TCP listener is running.
    pub fn is_listening(&self) -> bool {
        self.tcp.is_some()
    }

    /// Closes the TCP listening socket (new connections are refused);
    /// established connections stay open.
    pub fn stop_listener(&mut self) {
        if let Some(listener) = self.tcp.take() {
            listener.stop.store(true, Ordering::Relaxed);
            if listener.thread.join().is_err() {
                eprintln!("test bed: accept loop of {} panicked", self.name);
            }
        }
    }

    /// Opens the TCP listening socket again (no-op when it is open).
    pub fn start_listener(&mut self) -> anyhow::Result<()> {
        if self.tcp.is_some() {
            return Ok(());
        }
        let port = self.port;
        let listener = netns::run_in(&self.ns_path, move || {
            TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
                .with_context(|| format!("binding TCP [::]:{port}"))
        })
        .with_context(|| format!("starting the TCP listener of real server {}", self.name))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let name = self.name.clone();
        let conns = self.conns.clone();
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name(format!("tcp-{name}"))
            .spawn(move || accept_loop(&listener, &name, &flag, &conns))?;
        self.tcp = Some(Listener { stop, thread });
        Ok(())
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop_listener();
        for t in self.udp.drain(..) {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for (stream, _) in &conns {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, t) in conns {
            let _ = t.join();
        }
    }
}

/// Accepts connections until `stop`, one thread per connection.
fn accept_loop(listener: &TcpListener, name: &str, stop: &AtomicBool, conns: &Conns) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let conn_name = name.to_owned();
                let spawned = thread::Builder::new()
                    .name(format!("conn-{name}"))
                    .stack_size(CONN_STACK)
                    .spawn(move || {
                        // Errors just end the connection: clients close at will.
                        let _ = serve_tcp(stream, &conn_name);
                    });
                match spawned {
                    Ok(t) => conns
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((clone, t)),
                    Err(e) => eprintln!("test bed: {name}: cannot spawn a connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) => {
                eprintln!("test bed: {name}: accept failed: {e}");
                thread::sleep(POLL);
            }
        }
    }
}

/// Serves one TCP connection (see the module docs for the protocol).
fn serve_tcp(stream: TcpStream, name: &str) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream);
    let mut out = reader.get_ref().try_clone()?;
    writeln!(out, "{name}")?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = line.trim();
        if request == "ping" {
            writeln!(out, "{name}")?;
        } else if let Some(n) = request.strip_prefix("upload ") {
            let Ok(n) = n.parse::<u64>() else {
                writeln!(out, "error: bad length")?;
                continue;
            };
            let mut hash = Fnv64::default();
            let mut buf = vec![0u8; 64 * 1024];
            let mut body = (&mut reader).take(n);
            let mut got = 0u64;
            loop {
                let k = body.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                hash.update(&buf[..k]);
                got += k as u64;
            }
            writeln!(out, "{got} {:016x}", hash.value())?;
        } else if let Some(n) = request.strip_prefix("download ") {
            let Ok(n) = n.parse::<u64>() else {
                writeln!(out, "error: bad length")?;
                continue;
            };
            payload(n, |chunk| out.write_all(chunk))?;
        } else {
            writeln!(out, "error: unknown request")?;
        }
    }
}

/// Answers every datagram (see the module docs) until `stopping`.
fn serve_udp(socket: &UdpSocket, name: &str, stopping: &AtomicBool) {
    // The largest UDP payload.
    let mut buf = vec![0u8; 65_535];
    while !stopping.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                let datagram = &buf[..len];
                let answer = if datagram == b"ping\n" {
                    format!("{name}\n")
                } else {
                    let mut hash = Fnv64::default();
                    hash.update(datagram);
                    format!("{name} {len} {:016x}\n", hash.value())
                };
                if let Err(e) = socket.send_to(answer.as_bytes(), peer) {
                    eprintln!("test bed: {name}: UDP reply to {peer} failed: {e}");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                eprintln!("test bed: {name}: UDP receive failed: {e}");
                thread::sleep(POLL);
            }
        }
    }
}
