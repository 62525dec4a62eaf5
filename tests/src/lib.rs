//! Network-namespace test bed for `lb`, shared by the end-to-end tests and
//! `cargo xtask demo`.
//!
//! A [`TestBed`] builds one L2 segment out of network namespaces: a "switch"
//! namespace holding a bridge, a client, the director and N real servers that
//! hold the VIPs on `lo` with the LVS-DR ARP sysctls; or, as
//! [`Layout::DualHomed`], a front and a back network with the director on
//! both and a router between them. [`RealServer`] runs
//! in-process TCP/UDP servers inside a real server's namespace, the
//! [`client`] helpers open real connections from the client's namespace, and
//! [`LbDaemon`] runs the real `lb` binary on the director. A [`Director`]
//! puts them together for a test: a bed, its real servers and a running `lb`;
//! a [`pair::DirectorPair`] does it for two directors whose VIP real
//! [`keepalived`] moves between them, the `lb`s syncing their connections.
//!
//! Every resource (namespace, bpffs pin directory, config directory, process,
//! thread) is owned by a guard that removes exactly that resource on drop, and
//! every name is unique per process and per test ([`unique_tag`]), so tests
//! can run in parallel threads.
//!
//! Apart from the bed, [`spoof`] sends floods of spoofed TCP frames from a
//! namespace, [`watch`] pings held connections while it does, [`packet`]
//! sends and captures raw frames, [`frame`] builds
//! Ethernet frames by hand and
//! [`xdp_case`] runs them through the XDP program with `BPF_PROG_TEST_RUN`:
//! the packet fixtures' harness, which the benchmarks share.

pub mod bed;
pub mod client;
pub mod cmd;
pub mod conns;
pub mod daemon;
pub mod director;
pub mod frame;
pub mod http;
pub mod keepalived;
pub mod netns;
pub mod packet;
pub mod pair;
pub mod server;
pub mod spoof;
pub mod stats;
pub mod watch;
pub mod xdp_case;

use std::sync::atomic::{AtomicU32, Ordering};

pub use bed::{DIRECTOR_BACK_IFACE, DIRECTOR_IFACE, Host, Layout, TestBed, VIP4, VIP6};
pub use daemon::{
    Health, LbConfig, LbDaemon, PinDir, Protocol, ServiceConfig, SyncConfig, lb_binary,
    pin_path_for,
};
pub use director::{Director, Spec};
pub use netns::NetNs;
pub use server::RealServer;
pub use stats::Stats;

/// A tag unique to this process and call: `<pid>-<n>`.
///
/// Namespace names, pin directories and config directories are built from it,
/// so parallel tests (threads) and parallel test binaries (processes) never
/// share a resource.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the process runs as root (the test bed needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Decides whether a root-only test must be skipped.
///
/// Returns `true` (after printing a loud `SKIPPED` line to stderr) when not
/// root and the `CI` environment variable is unset; panics when not root in
/// CI, where a skipped end-to-end test would hide a broken setup.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: end-to-end tests need root, and CI is set: refusing to skip");
    }
    eprintln!("!!!!!!!! {test}: SKIPPED (needs root) !!!!!!!!");
    true
}

/// FNV-1a (64 bit) hash: the checksum of uploads and downloads, computed
/// on both ends.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Feeds `bytes` into the hash.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash of everything fed so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Feeds `len` pseudo-random bytes to `sink`, in chunks of at most 64 KiB:
/// the payload of uploads and downloads, the same bytes on every call, so
/// both ends can make it (or its [`Fnv64`]) alike.
pub fn payload<E>(len: u64, sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    payload_from(0, len, sink)
}

/// [`payload`] from another starting point: `seed` 0 gives the payload,
/// any other seed other bytes.
pub fn payload_from<E>(
    seed: u64,
    len: u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    const CHUNK: usize = 64 * 1024;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed;
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let chunk = &mut buf[..usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK)];
        // xorshift64, eight bytes a step (the chunks are whole steps but the last).
        for bytes in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.copy_from_slice(&state.to_le_bytes()[..bytes.len()]);
        }
        sink(chunk)?;
        left -= chunk.len() as u64;
    }
    Ok(())
}
