//! The control socket of a running `lb run`: `lb reload`, `lb stop` and
//! `lb backend ...` send one [`Request`] as a JSON line over a Unix socket
//! and read one [`Reply`] line back.
//!
//! Only root may use it: the socket is created mode 0600 in a directory of
//! mode 0700, and the daemon also checks each peer's uid (`SO_PEERCRED`).

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::IpAddr,
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::warn;

/// Default path of the control socket (`[director] control_socket`).
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";

/// How long a client waits for the daemon's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A command for the running daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Re-read the config file and apply the difference.
    Reload,
    /// Exit; detach and unpin unless `keep_datapath`.
    Stop {
        /// Leave the program attached and the maps pinned for the next `lb run`.
        keep_datapath: bool,
    },
    /// Add a backend to a service (or bring a removed one back).
    BackendAdd {
        /// Service name.
        service: String,
        /// Real server address.
        address: IpAddr,
        /// WLC weight.
        weight: u32,
        /// Static MAC (else the neighbour table is used).
        mac: Option<[u8; 6]>,
    },
    /// Remove a backend from a service.
    BackendRemove {
        /// Service name.
        service: String,
        /// Real server address.
        address: IpAddr,
        /// Move its flows to other backends on their next packet instead of
        /// letting them finish; `None` follows `[director] expire_nodest_conn`.
        reschedule: Option<bool>,
    },
    /// Change a backend's weight (0 drains it).
    BackendSetWeight {
        /// Service name.
        service: String,
        /// Real server address.
        address: IpAddr,
        /// New WLC weight.
        weight: u32,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
}

impl Reply {
    /// A success.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
        }
    }

    /// A refusal or failure.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
        }
    }
}

/// A request received by the daemon: the request, where to send the reply,
/// and a signal that fires once the reply has been written to the client
/// (a daemon that exits on the request waits for it).
pub type Incoming = (Request, oneshot::Sender<Reply>, oneshot::Receiver<()>);

/// Sends `request` to the daemon listening on `socket` and returns its reply.
pub fn send(socket: &Path, request: &Request) -> anyhow::Result<Reply> {
    let mut stream = StdUnixStream::connect(socket).map_err(|e| {
        let why = match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                "no lb is running with this control socket (start it with `lb run`)"
            }
            ErrorKind::PermissionDenied => "only root may use the control socket",
            _ => "",
        };
        anyhow::anyhow!("connecting to {}: {e}; {why}", socket.display())
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .with_context(|| format!("writing to {}", socket.display()))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .with_context(|| format!("reading the reply from {}", socket.display()))?;
    if reply.is_empty() {
        bail!("lb closed {} without replying", socket.display());
    }
    serde_json::from_str(&reply).with_context(|| format!("a malformed reply: {reply:?}"))
}

/// Whether a daemon answers on `socket`.
pub fn is_live(socket: &Path) -> bool {
    StdUnixStream::connect(socket).is_ok()
}

/// The listening control socket; removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Creates the socket at `path` (and its directory, mode 0700), mode 0600.
    /// Fails if another daemon answers there, or if `path` is anything but a
    /// socket (a regular file, a directory, a link...); replaces a stale
    /// socket.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if is_live(path) {
            bail!(
                "another lb is already running with control socket {} (stop it with `lb stop`, \
                 or give this one another `[director] control_socket`)",
                path.display()
            );
        }
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?,
            Ok(meta) => bail!(
                "{} exists and is not a socket but a {}: lb replaces only a stale control \
                 socket (move the file away, or give `[director] control_socket` another path)",
                path.display(),
                file_kind(&meta.file_type())
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("examining {}", path.display())),
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("creating the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Accepts clients forever, passing each request to `requests` and the
    /// reply back to the client. Clients that are not root are refused.
    pub async fn serve(self, requests: mpsc::Sender<Incoming>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("control socket: accept: {e}");
                    continue;
                }
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, requests).await {
                    warn!("control socket: {e:#}");
                }
            });
        }
    }
}

/// What kind of file `kind` is, for messages.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_file() {
        "regular file"
    } else if kind.is_fifo() {
        "FIFO"
    } else {
        "device"
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves one client: one request line, one reply line.
async fn handle(stream: UnixStream, requests: mpsc::Sender<Incoming>) -> anyhow::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut written = None;
    let reply = if uid != 0 {
        Reply::error(format!(
            "only root may control lb (your uid is {uid}); use sudo"
        ))
    } else {
        let mut line = String::new();
        AsyncBufReader::new(read).read_line(&mut line).await?;
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::error(format!("malformed request {line:?}: {e}")),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                let (written_tx, written_rx) = oneshot::channel();
                written = Some(written_tx);
                if requests.send((request, tx, written_rx)).await.is_err() {
                    Reply::error("lb is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Reply::error("lb is shutting down"))
                }
            }
        }
    };
    let mut line = serde_json::to_string(&reply)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    write.flush().await?;
    if let Some(written) = written {
        let _ = written.send(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines_with_a_command_tag() {
        let request = Request::BackendSetWeight {
            service: "gridftp".into(),
            address: "198.51.100.11".parse().unwrap(),
            weight: 0,
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"command":"backend_set_weight","service":"gridftp","address":"198.51.100.11","weight":0}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), request);
    }

    /// A stale socket is replaced; a file of any other kind is left alone
    /// and named in the error.
    #[tokio::test]
    async fn only_a_stale_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("lb-control-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.sock");

        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let socket = ControlSocket::bind(&path).expect("a stale socket is replaced");
        drop(socket);

        std::fs::write(&path, "keep me").unwrap();
        let e = ControlSocket::bind(&path)
            .err()
            .expect("a regular file is refused");
        assert!(
            format!("{e:#}").contains("is not a socket but a regular file"),
            "{e:#}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        std::fs::remove_file(&path).unwrap();

        std::fs::create_dir(&path).unwrap();
        let e = ControlSocket::bind(&path)
            .err()
            .expect("a directory is refused");
        assert!(format!("{e:#}").contains("but a directory"), "{e:#}");
        assert!(path.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_request_reaches_the_daemon_and_its_reply_the_client() {
        let dir = std::env::temp_dir().join(format!("lb-control-test-{}", std::process::id()));
        let path = dir.join("sub").join("lb.sock");
        let socket = ControlSocket::bind(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            ControlSocket::bind(&path).is_err(),
            "a second daemon is refused"
        );
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(socket.serve(tx));
        tokio::spawn(async move {
            let (request, reply, written) = rx.recv().await.unwrap();
            assert_eq!(request, Request::Reload);
            reply.send(Reply::ok("reloaded")).unwrap();
            written.await.unwrap();
        });
        let client_path = path.clone();
        let reply = tokio::task::spawn_blocking(move || send(&client_path, &Request::Reload))
            .await
            .unwrap()
            .unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(reply, Reply::ok("reloaded"));
        } else {
            assert!(
                !reply.ok && reply.message.contains("only root"),
                "{reply:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let err = send(&path, &Request::Reload).unwrap_err().to_string();
        assert!(err.contains("no lb is running"), "{err}");
    }
}
