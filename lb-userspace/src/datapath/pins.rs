//! The data path in bpffs: a pin directory holds every map by its name,
//! the program and one link per NIC, so the data path outlives `lb`. This
//! module opens the maps of a pinned data path (after checking their
//! layout), mounts bpffs where a fresh host has none, and creates and
//! removes pin directories.

use std::{ffi::CString, fs, io, io::ErrorKind, os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData, MapInfo};

use lb_common::LAYOUT_VERSION;

use super::maps::{MAP_LAYOUT, MAP_NAMES, Maps};

/// File name of the pinned XDP program in a pin directory.
pub(super) const PROGRAM_PIN: &str = "prog_lb_xdp";
/// Prefix of the pinned XDP links in a pin directory (`link_<interface>`).
pub(super) const LINK_PIN_PREFIX: &str = "link_";

/// Pins that earlier builds of `lb` made and this one no longer does: the
/// single connection table of both families (`CONNTRACK`), before it was
/// split by family. [`remove_pin_dir`] removes them too, so `lb detach`
/// clears a data path pinned by an older `lb` before an upgrade.
const RETIRED_MAP_NAMES: [&str; 1] = ["CONNTRACK"];

/// Maps opened from their pins.
impl Maps {
    /// Opens the maps a running `lb` pinned under `dir`. Fails when a map
    /// is missing or was made by a build with another map layout (key and
    /// value sizes, and the layout stamp), saying how to clear the pins.
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            bail!(
                "no lb data path is pinned at {} (is `lb run` running with this pin_path? \
                 reading bpffs needs root)",
                dir.display()
            );
        }
        check_layout(dir)?;
        let maps = Self::from_source(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
        })?;
        let version = maps.layout_version()?;
        if version != LAYOUT_VERSION {
            bail!(
                "the data path pinned at {} has map layout version {version}, this lb has \
                 version {LAYOUT_VERSION}: it was made by another lb version; {}",
                dir.display(),
                restart_hint(dir)
            );
        }
        Ok(maps)
    }
}

/// Checks that `dir` holds every map of [`MAP_LAYOUT`] with this build's
/// key and value sizes (an older `lb` may have left its own layout pinned).
fn check_layout(dir: &Path) -> anyhow::Result<()> {
    let restart_hint = restart_hint(dir);
    for (name, key_size, value_size) in MAP_LAYOUT {
        let path = dir.join(name);
        if !path.exists() {
            bail!(
                "the pinned data path lacks map {} (it is incomplete, or was made by another \
                 lb version); {restart_hint}",
                path.display()
            );
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
            bail!(
                "the pinned map {} has key/value sizes {}/{} where this lb expects \
                 {key_size}/{value_size}: it was made by another lb version; {restart_hint}",
                path.display(),
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

/// How to start afresh when the data path pinned at `dir` cannot be adopted.
fn restart_hint(dir: &Path) -> String {
    format!(
        "`lb detach --pin-path {}` removes it (its flows are lost), then `lb run` starts afresh",
        dir.display()
    )
}

/// Removes a pinned data path: its links (which detaches the program from
/// every NIC), its program and maps, and the directory.
pub fn remove_pin_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PIN_PREFIX) {
            fs::remove_file(entry.path())
                .with_context(|| format!("unpinning {}", entry.path().display()))?;
        }
    }
    for name in MAP_NAMES
        .iter()
        .chain(&RETIRED_MAP_NAMES)
        .chain([&PROGRAM_PIN])
    {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {name}")),
        }
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// `f_type` of a bpffs mount (`BPF_FS_MAGIC` in `linux/magic.h`).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Whether `dir` is on a bpffs mount.
fn is_bpffs(dir: &Path) -> io::Result<bool> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `fs` points to memory
    // for one `statfs`, which the kernel fills when the call succeeds.
    if unsafe { libc::statfs(path.as_ptr(), fs.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it wrote the whole struct.
    let fs = unsafe { fs.assume_init() };
    // `f_type` is a signed word of the platform's size; the magic is its
    // low 32 bits.
    Ok(fs.f_type as u32 == BPF_FS_MAGIC)
}

/// Mounts bpffs at `root` (normally `config::BPFFS_ROOT`) unless one is mounted
/// there already, as bpftool does (mode 0700): a fresh VM or container often
/// has the directory but no bpffs, and pins need one. Returns whether it
/// mounted.
pub fn ensure_bpffs(root: &Path) -> anyhow::Result<bool> {
    let probe = |e: io::Error| {
        anyhow::Error::new(e).context(format!(
            "checking whether bpffs is mounted at {}",
            root.display()
        ))
    };
    match is_bpffs(root) {
        Ok(true) => return Ok(false),
        Ok(false) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        }
        Err(e) => return Err(probe(e)),
    }
    // Two `lb run`s starting at once must not stack two mounts (the first
    // one's pins would vanish under the second): the directory under the
    // mount point is locked while one of them checks again and mounts.
    let mount_point =
        fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    mount_point
        .lock()
        .with_context(|| format!("locking {}", root.display()))?;
    if is_bpffs(root).map_err(probe)? {
        return Ok(false);
    }
    let target = CString::new(root.as_os_str().as_bytes()).context("bpffs mount point")?;
    // SAFETY: every pointer is a NUL-terminated string that lives across
    // the call.
    let mounted = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if mounted != 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!(
                "mounting bpffs at {} (needs root; or mount it yourself: \
                 `mount -t bpf bpf {}`)",
                root.display(),
                root.display()
            )
        });
    }
    if !is_bpffs(root).map_err(probe)? {
        bail!(
            "mounted bpffs at {} but it does not show there",
            root.display()
        );
    }
    Ok(true)
}

/// Creates the pin directory, refusing one that already exists.
pub(super) fn create_pin_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "{} already exists but holds no complete lb data path (remove the directory, \
             or run `lb detach --pin-path {}`, to start afresh)",
            dir.display(),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| {
            format!(
                "creating pin directory {} (is bpffs mounted at /sys/fs/bpf?)",
                dir.display()
            )
        }),
    }
}

/// Best-effort removal of a half-made pin directory after a failed load.
pub(super) fn remove_pins(dir: &Path) {
    if let Err(e) = remove_pin_dir(dir) {
        tracing::warn!("cleaning up {}: {e:#}", dir.display());
    }
}
