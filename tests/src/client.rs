//! Client-side traffic: real TCP connections and UDP flows opened from the
//! client's namespace, reporting what the client actually received (see
//! [`crate::server`] for the protocol).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Socket, Type};

use crate::{Fnv64, NetNs, payload, payload_from};

/// Timeout for connecting and for each read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// An open TCP connection to a service, and the real server that answered it.
pub struct HeldConn {
    reader: BufReader<TcpStream>,
    server: String,
}

impl HeldConn {
    /// Connects to `target` and reads the greeting (the server's name).
    ///
    /// Call it from a thread inside the client namespace (see [`open_tcp`]).
    fn connect(target: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
            .with_context(|| format!("connecting to {target}"))?;
        Self::greeted(stream, target)
    }

    /// [`HeldConn::connect`] from `source` (an address of the client's).
    fn connect_from(source: IpAddr, target: SocketAddr) -> anyhow::Result<Self> {
        let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .with_context(|| format!("binding to {source}"))?;
        socket
            .connect_timeout(&target.into(), IO_TIMEOUT)
            .with_context(|| format!("connecting to {target} from {source}"))?;
        Self::greeted(socket.into(), target)
    }

    /// A connected `stream` to `target`, once it read the greeting.
    fn greeted(stream: TcpStream, target: SocketAddr) -> anyhow::Result<Self> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut conn = Self {
            reader: BufReader::new(stream),
            server: String::new(),
        };
        conn.server = conn
            .read_line()
            .with_context(|| format!("reading the greeting from {target}"))?;
        Ok(conn)
    }

    /// The real server that answered the connection.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Local (client) address of the connection.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    /// Sends `ping` and returns the name in the answer: the same server as
    /// [`HeldConn::server`] while the flow still goes to it.
    pub fn ping(&mut self) -> anyhow::Result<String> {
        self.reader.get_mut().write_all(b"ping\n")?;
        self.read_line()
    }

    /// Uploads `len` pseudo-random bytes ([`payload`]) and checks what the
    /// server reports.
    pub fn upload(&mut self, len: u64) -> anyhow::Result<Upload> {
        self.upload_paced(len, None, &AtomicU64::new(0))
    }

    /// [`HeldConn::upload`] at no more than `rate` bytes a second (`None`:
    /// as fast as it goes), adding the bytes written so far to `progress`
    /// as it goes (another thread may watch it: an upload that lasts
    /// through an event in the test, e.g. a failover).
    pub fn upload_paced(
        &mut self,
        len: u64,
        rate: Option<u64>,
        progress: &AtomicU64,
    ) -> anyhow::Result<Upload> {
        let mut hash = Fnv64::default();
        let stream = self.reader.get_mut();
        writeln!(stream, "upload {len}")?;
        let mut sent = 0u64;
        let start = Instant::now();
        payload(len, |chunk| {
            hash.update(chunk);
            stream
                .write_all(chunk)
                .with_context(|| format!("uploading, {sent} of {len} bytes sent"))?;
            sent += chunk.len() as u64;
            progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let Some(rate) = rate.filter(|&r| r > 0) {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    thread::sleep(ahead);
                }
            }
            anyhow::Ok(())
        })?;
        let answer = self.read_line().context("reading the upload report")?;
        let (got, server_hash) = answer
            .split_once(' ')
            .with_context(|| format!("bad upload report {answer:?}"))?;
        Ok(Upload {
            sent: len,
            sent_hash: hash.value(),
            received: got
                .parse()
                .with_context(|| format!("bad report {answer:?}"))?,
            received_hash: u64::from_str_radix(server_hash, 16)
                .with_context(|| format!("bad report {answer:?}"))?,
        })
    }

    /// Asks for a download of `len` bytes and reads it, giving up when no
    /// byte arrives for `stall`. Reports what arrived; an error only when
    /// the connection fails otherwise.
    pub fn download(&mut self, len: u64, stall: Duration) -> anyhow::Result<Download> {
        let mut expected = Fnv64::default();
        payload(len, |chunk| {
            expected.update(chunk);
            anyhow::Ok(())
        })?;
        self.reader.get_mut().set_read_timeout(Some(stall))?;
        writeln!(self.reader.get_mut(), "download {len}")?;
        let mut hash = Fnv64::default();
        let mut received = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut stalled = false;
        while received < len {
            match self.reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    hash.update(&buf[..k]);
                    received += k as u64;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    stalled = true;
                    break;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("downloading, {received} of {len} bytes received")
                    });
                }
            }
        }
        Ok(Download {
            len,
            expected_hash: expected.value(),
            received,
            received_hash: hash.value(),
            stalled,
        })
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed by the peer");
        }
        Ok(line.trim_end().to_owned())
    }
}

/// What the client sent in an upload and what the server reported receiving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upload {
    /// Bytes the client sent.
    pub sent: u64,
    /// [`Fnv64`] of the bytes the client sent.
    pub sent_hash: u64,
    /// Bytes the server received.
    pub received: u64,
    /// [`Fnv64`] of the bytes the server received.
    pub received_hash: u64,
}

/// What the server was asked to send in a download and what arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Download {
    /// Bytes asked for.
    pub len: u64,
    /// [`Fnv64`] of the [`payload`] of `len` bytes.
    pub expected_hash: u64,
    /// Bytes received.
    pub received: u64,
    /// [`Fnv64`] of the bytes received.
    pub received_hash: u64,
    /// Whether the download ended because nothing arrived for a while.
    pub stalled: bool,
}

impl Download {
    /// Whether every byte arrived, unchanged.
    pub fn is_intact(&self) -> bool {
        self.received == self.len && self.received_hash == self.expected_hash
    }
}

/// Opens `n` TCP connections to `target` from namespace `ns`, one after the
/// other, each having read its greeting before the next starts. They stay
/// open until the returned values are dropped.
pub fn open_tcp(ns: &NetNs, target: SocketAddr, n: usize) -> anyhow::Result<Vec<HeldConn>> {
    ns.run(move || {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            conns.push(HeldConn::connect(target).with_context(|| {
                format!("connection {} of {n} to {target} ({i} succeeded)", i + 1)
            })?);
        }
        Ok(conns)
    })
}

/// Opens `n` TCP connections to `target` from `source` (an address of the
/// client's) inside namespace `ns`.
pub fn open_tcp_from(
    ns: &NetNs,
    source: IpAddr,
    target: SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<HeldConn>> {
    ns.run(move || {
        (0..n)
            .map(|i| {
                HeldConn::connect_from(source, target).with_context(|| {
                    format!("connection {} of {n} from {source} to {target}", i + 1)
                })
            })
            .collect()
    })
}

/// Sends one datagram to `target` from each of `n` distinct UDP sockets in
/// namespace `ns` (kept open until all are done, so every flow has its own
/// source port) and returns the name each got back, in order.
pub fn udp_flows(ns: &NetNs, target: SocketAddr, n: usize) -> anyhow::Result<Vec<String>> {
    UdpFlows::open(ns, target, n)?.ping()
}

/// UDP flows to one target: connected sockets opened in a namespace (each
/// keeps its namespace and its source port for as long as it is open).
pub struct UdpFlows {
    target: SocketAddr,
    sockets: Vec<UdpSocket>,
    /// Datagrams sent so far, tries again included.
    sent: usize,
}

impl UdpFlows {
    /// Opens `n` sockets in namespace `ns`, each connected to `target`.
    pub fn open(ns: &NetNs, target: SocketAddr, n: usize) -> anyhow::Result<Self> {
        let sockets = ns.run(move || {
            let any: SocketAddr = match target {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            (0..n)
                .map(|_| {
                    let socket = UdpSocket::bind(any)?;
                    socket.connect(target)?;
                    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
                    Ok(socket)
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        Ok(Self {
            target,
            sockets,
            sent: 0,
        })
    }

    /// Sends `ping` on every flow in turn and returns the name each got back.
    pub fn ping(&mut self) -> anyhow::Result<Vec<String>> {
        self.each(|socket, sent| exchange(socket, b"ping\n", sent))
    }

    /// Sends a datagram of `len` pseudo-random bytes (different on every
    /// flow and call) on every flow in turn, and returns the real server
    /// that answered each. The answer must report the length and hash of
    /// exactly the bytes sent: the datagram arrived whole.
    pub fn datagrams(&mut self, len: usize) -> anyhow::Result<Vec<String>> {
        self.each(|socket, sent| {
            let mut datagram = Vec::with_capacity(len);
            payload_from(1 + *sent as u64, len as u64, |bytes| {
                datagram.extend_from_slice(bytes);
                Ok::<_, std::convert::Infallible>(())
            })?;
            let mut hash = Fnv64::default();
            hash.update(&datagram);
            let expected = format!("{len} {:016x}", hash.value());
            let answer = exchange(socket, &datagram, sent)?;
            match answer.split_once(' ') {
                Some((server, report)) if report == expected => Ok(server.to_owned()),
                _ => bail!("answered {answer:?}, expected NAME {expected}"),
            }
        })
    }

    /// Datagrams sent so far, tries again included.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Runs `one` (an exchange on a socket, counting what it sends) on
    /// every flow in turn and returns what each gave.
    fn each(
        &mut self,
        mut one: impl FnMut(&UdpSocket, &mut usize) -> anyhow::Result<String>,
    ) -> anyhow::Result<Vec<String>> {
        let (n, target) = (self.sockets.len(), self.target);
        let mut answers = Vec::with_capacity(n);
        for (i, socket) in self.sockets.iter().enumerate() {
            let answer = one(socket, &mut self.sent)
                .with_context(|| format!("UDP flow {} of {n} to {target} ({i} answered)", i + 1))?;
            answers.push(answer);
        }
        Ok(answers)
    }
}

/// Sends `datagram` on a connected UDP socket until an answer comes (4
/// tries), counting every datagram sent in `sent`; returns the answer.
fn exchange(socket: &UdpSocket, datagram: &[u8], sent: &mut usize) -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    let mut last = None;
    for _ in 0..4 {
        socket.send(datagram)?;
        *sent += 1;
        match socket.recv(&mut buf) {
            Ok(k) => return Ok(String::from_utf8_lossy(&buf[..k]).trim_end().to_owned()),
            Err(e) => last = Some(e),
        }
    }
    bail!(
        "no answer after 4 tries: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )
}

/// Opens a connection to `target` from namespace `ns` and uploads `len`
/// bytes; returns the server that took it and the upload report.
pub fn upload(ns: &NetNs, target: SocketAddr, len: u64) -> anyhow::Result<(String, Upload)> {
    ns.run(move || {
        let mut conn = HeldConn::connect(target)?;
        let report = conn.upload(len)?;
        Ok((conn.server, report))
    })
}

/// Opens a connection to `target` from namespace `ns` and downloads `len`
/// bytes, giving up when nothing arrives for `stall` (see
/// [`HeldConn::download`]); returns the server that sent them and what
/// arrived.
pub fn download(
    ns: &NetNs,
    target: SocketAddr,
    len: u64,
    stall: Duration,
) -> anyhow::Result<(String, Download)> {
    ns.run(move || {
        let mut conn = HeldConn::connect(target)?;
        let report = conn.download(len, stall)?;
        Ok((conn.server, report))
    })
}

/// How many of `names` each server name got.
pub fn count_by_server<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Pings every connection of `conns`: each must still be answered by the
/// server it was opened to; the error names the first that is not.
pub fn ping_all<'a>(conns: impl IntoIterator<Item = &'a mut HeldConn>) -> anyhow::Result<()> {
    for (i, conn) in conns.into_iter().enumerate() {
        let expected = conn.server().to_owned();
        let answer = conn
            .ping()
            .with_context(|| format!("connection {i} to {expected} broke"))?;
        if answer != expected {
            bail!("connection {i} to {expected} was answered by {answer}");
        }
    }
    Ok(())
}

/// How many of `conns` each real server answered.
pub fn count_conns(conns: &[HeldConn]) -> BTreeMap<String, usize> {
    count_by_server(conns.iter().map(HeldConn::server))
}
