//! Whether this process may do what a command needs: root, or the Linux
//! capabilities it takes.

use anyhow::bail;

/// `CAP_NET_ADMIN`: attach XDP, change addresses, neighbours and net sysctls.
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: what loading BPF needed before `CAP_BPF` (Linux < 5.8).
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF`: load programs and create maps.
pub const CAP_BPF: u32 = 39;

/// Whether the process runs as root or holds capability `cap` (a `CAP_*` bit).
pub fn has(cap: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    effective & (1 << cap) != 0
}

/// Fails unless the process may load and attach XDP programs: root, or
/// CAP_NET_ADMIN with CAP_BPF (or CAP_SYS_ADMIN).
pub fn ensure_bpf(what: &str) -> anyhow::Result<()> {
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    bail!("{what} needs root (or the capabilities CAP_BPF and CAP_NET_ADMIN); run it with sudo")
}
