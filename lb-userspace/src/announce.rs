//! Announcing VIPs to the routers (`[announce]`): several directors behind
//! the routers' ECMP, each announcing the VIPs it can serve by BGP.
//!
//! lb does not speak BGP. It drives the BGP speaker already on the director
//! (BIRD 2, as docs/ha.md shows; FRR reads kernel tables too) through the
//! kernel routing table: for every VIP with a service that has a usable
//! backend, lb puts a host route (`VIP/32`, `VIP/128`) through its own TUN
//! device into a routing table of its own (`[announce] table`, no rule
//! points at it, so the director's forwarding is untouched); the speaker
//! learns that table and announces what is in it. lb removes a VIP's route
//! when its last backend goes down and removes the device (with every
//! route) when it stops. The device is not persistent: it belongs to lb's
//! open file, so when lb dies, however it dies, the kernel deletes it and
//! its routes, and the speaker withdraws them at its next scan.
//!
//! The TUN device is made with one `TUNSETIFF` ioctl rather than a TUN
//! crate: those exist to move packets through the device, and lb sends
//! none; it only needs the device to live exactly as long as lb.

use std::{
    collections::BTreeSet,
    fs::{File, OpenOptions},
    net::IpAddr,
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, bail};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{config::AnnounceConfig, host::netlink::Netlink};

/// `TUNSETIFF` (`linux/if_tun.h`: `_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// The VIPs announced, kept in the kernel by a task of their own.
pub struct Announcer {
    wanted: watch::Sender<BTreeSet<IpAddr>>,
    task: JoinHandle<()>,
    /// The TUN device: closing it deletes the device and its routes.
    _device: File,
}

impl Announcer {
    /// Makes the TUN device `config.device`, sets it up and starts the
    /// task that keeps table `config.table` holding the wanted VIPs.
    pub async fn start(config: &AnnounceConfig, netlink: Netlink) -> anyhow::Result<Self> {
        if netlink.link_index(&config.device).await?.is_some() {
            bail!(
                "[announce] device {:?} exists already (another lb announcing VIPs, or a \
                 device of that name): give another device name",
                config.device
            );
        }
        let device = create_tun(&config.device)?;
        let index = netlink
            .link_index(&config.device)
            .await?
            .with_context(|| format!("the TUN device {} vanished", config.device))?;
        netlink.set_link_up(index).await?;
        let (wanted, mut changes) = watch::channel(BTreeSet::new());
        let table = config.table;
        let name = config.device.clone();
        let task = tokio::spawn(async move {
            let mut announced = BTreeSet::new();
            while changes.changed().await.is_ok() {
                let wanted = changes.borrow_and_update().clone();
                for vip in wanted.difference(&announced) {
                    match netlink.host_route(true, table, *vip, index).await {
                        Ok(()) => info!("announcing {vip} (table {table}, device {name})"),
                        Err(e) => warn!("announcing {vip}: {e:#}"),
                    }
                }
                for vip in announced.difference(&wanted) {
                    match netlink.host_route(false, table, *vip, index).await {
                        Ok(()) => info!("withdrawing {vip}: no usable backend"),
                        Err(e) => warn!("withdrawing {vip}: {e:#}"),
                    }
                }
                announced = wanted;
            }
        });
        info!(
            "announcing VIPs with a usable backend in routing table {} through device {}",
            config.table, config.device
        );
        Ok(Self {
            wanted,
            task,
            _device: device,
        })
    }

    /// Makes `vips` the announced VIPs (routes are added and removed in the
    /// background).
    pub fn announce(&self, vips: BTreeSet<IpAddr>) {
        self.wanted.send_if_modified(|current| {
            let changed = *current != vips;
            *current = vips;
            changed
        });
    }

    /// Withdraws every VIP: the device and its routes go.
    pub fn stop(self) {
        self.task.abort();
        info!("withdrawing every VIP");
    }
}

/// A non-persistent TUN device named `name`, alive while the file is open.
fn create_tun(name: &str) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (is the tun module available?)")?;
    // SAFETY: an all-zero ifreq is valid; the name fits (checked by the
    // config: at most 15 bytes) with its NUL.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    let done = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    if done < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating the TUN device {name}"));
    }
    Ok(file)
}
