//! Whether this process may do what a command needs: root, or the Linux
//! capabilities it takes, and room for the file descriptors `lb run` opens.

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

/// Raises the soft limit on open files to the hard limit and returns the
/// new soft limit. `lb run` holds a socket per health check in flight and per
/// metrics connection; the usual soft limit of 1024 would let a burst of
/// either starve the other (systemd's unit also sets `LimitNOFILE`).
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_limit_is_raised_to_the_hard_limit() {
        let raised = raise_open_files_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(raised, limit.rlim_cur);
    }
}
