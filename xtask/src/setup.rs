//! `cargo xtask setup`: prepare a Debian 12 machine to build and test `lb`.
//!
//! Each step checks first and only installs what is missing, so a second run
//! takes a few seconds. Steps:
//!
//! 1. Debian packages the tests and the demo use (skipped with `--skip-packages`);
//! 2. the `nightly` toolchain and its `rust-src` component (`-Z build-std=core`
//!    for `bpfel-unknown-none`);
//! 3. `bpf-linker`, linked against the nightly toolchain's own shared LLVM,
//!    because bpf-linker must use the same LLVM major as the rustc that feeds it.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{find_on_path, is_root, output, run as run_cmd};

/// Options of `cargo xtask setup`.
#[derive(Args)]
pub struct Options {
    /// Do not check or install Debian packages (for machines whose packages
    /// are managed by other means).
    #[arg(long)]
    skip_packages: bool,
}

/// Debian packages the tests, the demo and users of `lb` rely on.
const PACKAGES: &[&str] = &[
    "bpftool",    // inspect pinned maps and loaded programs
    "xdp-tools",  // xdp-loader, xdp-bench, xdp-trafficgen, xdpdump
    "iproute2",   // ip netns/link/addr/neigh for the test bed
    "ethtool",    // turn off TX checksum offload on test veths
    "tcpdump",    // look at the wire while debugging
    "iperf3",     // throughput through the director
    "procps",     // sysctl for the real servers' ARP settings
    "util-linux", // nsenter: enter a netns without losing bpffs
    "keepalived", // VRRP between the failover tests' two directors
    "bird2",      // BGP for the ECMP tests' router and directors
];

/// The bpf-linker release line known to link against a shared LLVM given by
/// `LLVM_PREFIX` (see README, "Quick start").
const BPF_LINKER_VERSION: &str = "^0.13";

/// What a step found or did, for the final summary.
struct Outcome {
    step: &'static str,
    result: String,
}

/// What `cargo xtask demo` and `cargo xtask test` run first, so that each
/// works on a fresh machine on its own: every step, the Debian packages only
/// as root (without root they cannot be installed, and the tests that need
/// them skip anyway).
pub fn prepare() -> Result<()> {
    run(&Options {
        skip_packages: !is_root(),
    })
    .context("preparing the machine (cargo xtask setup)")
}

/// Runs every setup step in order and prints a summary.
pub fn run(options: &Options) -> Result<()> {
    let start = Instant::now();
    let mut outcomes = Vec::new();

    if options.skip_packages {
        outcomes.push(Outcome {
            step: "Debian packages",
            result: "skipped (--skip-packages)".into(),
        });
    } else {
        println!("==> Debian packages");
        outcomes.push(Outcome {
            step: "Debian packages",
            result: packages().context("Debian packages")?,
        });
    }

    println!("==> nightly toolchain");
    outcomes.push(Outcome {
        step: "nightly toolchain",
        result: nightly().context("nightly toolchain")?,
    });

    println!("==> bpf-linker");
    outcomes.push(Outcome {
        step: "bpf-linker",
        result: bpf_linker().context("bpf-linker")?,
    });

    println!("==> setup done in {:.1} s", start.elapsed().as_secs_f64());
    for Outcome { step, result } in &outcomes {
        println!("  {step:<18} {result}");
    }
    Ok(())
}

/// Installs the missing [`PACKAGES`] with apt-get (as root only).
fn packages() -> Result<String> {
    let mut missing = Vec::new();
    for &package in PACKAGES {
        if package_installed(package)? {
            println!("  {package}: already present");
        } else {
            println!("  {package}: missing");
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok("already present".into());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!(
            "missing Debian packages: {list}. Install them as root with \
             `apt-get update && apt-get install -y {list}`, or run `cargo xtask setup` \
             as root (or pass --skip-packages if you manage packages yourself)"
        );
    }
    run_cmd(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for &package in &missing {
        if !package_installed(package)? {
            bail!("apt-get reported success but {package} is still not installed");
        }
    }
    Ok(format!("installed {list}"))
}

/// Whether dpkg reports `package` as installed.
fn package_installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context(
            "cannot run dpkg-query: this step needs a Debian-based system \
             (pass --skip-packages to install the packages yourself)",
        )?;
    // Unknown packages make dpkg-query fail; "install ok installed" (or
    // "hold ok installed") means present.
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            == Some("installed"))
}

/// Installs the `nightly` toolchain and its `rust-src` component if absent.
fn nightly() -> Result<String> {
    if find_on_path("rustup").is_none() {
        bail!(
            "rustup not found on PATH: install it from https://rustup.rs \
             (and put ~/.cargo/bin on PATH)"
        );
    }
    let mut installed = Vec::new();

    let host = output(Command::new("rustc").arg("-vV"))?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .context("`rustc -vV` printed no `host:` line")?;
    let toolchain = format!("nightly-{host}");
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if toolchains
        .lines()
        .any(|line| line.split_whitespace().next() == Some(toolchain.as_str()))
    {
        println!("  {toolchain}: already present");
    } else {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        installed.push("nightly");
    }

    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components.lines().any(|line| line.trim() == "rust-src") {
        println!("  rust-src (nightly): already present");
    } else {
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        installed.push("rust-src");
    }

    Ok(if installed.is_empty() {
        "already present".into()
    } else {
        format!("installed {}", installed.join(", "))
    })
}

/// The LLVM the nightly toolchain ships: its major version and shared library.
struct NightlyLlvm {
    major: u32,
    /// `<nightly sysroot>/lib/libLLVM.so.*`.
    library: PathBuf,
}

impl NightlyLlvm {
    /// Asks `rustc +nightly` for its LLVM version and finds its `libLLVM.so.*`.
    fn detect() -> Result<Self> {
        let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
        let major = version
            .lines()
            .find_map(|line| line.strip_prefix("LLVM version: "))
            .and_then(|v| v.split('.').next()?.trim().parse().ok())
            .context("`rustc +nightly -vV` printed no `LLVM version: N.x.y` line")?;
        let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        let lib = Path::new(sysroot.trim()).join("lib");
        let mut libraries: Vec<PathBuf> = fs::read_dir(&lib)
            .with_context(|| format!("cannot list {}", lib.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("libLLVM.so."))
            })
            .collect();
        libraries.sort();
        let library = libraries.into_iter().next().with_context(|| {
            format!(
                "no libLLVM.so.* in {}: this nightly toolchain ships no shared LLVM",
                lib.display()
            )
        })?;
        Ok(Self { major, library })
    }
}

/// A `bpf-linker` that starts, and the LLVM major of the libLLVM it loads.
struct InstalledLinker {
    path: PathBuf,
    version: String,
    llvm_major: u32,
}

impl InstalledLinker {
    /// Finds `bpf-linker` on PATH and tells which LLVM it uses from the
    /// `libLLVM` its dynamic loader resolves (`bpf-linker --version` does not
    /// say). The error says why it cannot be used as it is.
    fn probe() -> Result<Self> {
        let path = find_on_path("bpf-linker").context("not found on PATH")?;
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{} --version fails: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // ldd lines look like `libLLVM.so.22.1-rust-1.97.0-nightly => /path (0x...)`.
        let libs = output(Command::new("ldd").arg(&path))?;
        let line = libs
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("libLLVM"))
            .context("it loads no shared libLLVM, so its LLVM version cannot be told")?;
        let (soname, target) = line.split_once("=>").unwrap_or((line, ""));
        if target.trim().starts_with("not found") {
            bail!("its {} is not found", soname.trim());
        }
        let llvm_major = soname["libLLVM".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .find(|digits| !digits.is_empty())
            .and_then(|digits| digits.parse().ok())
            .with_context(|| format!("cannot tell the LLVM version of {}", soname.trim()))?;
        Ok(Self {
            path,
            version,
            llvm_major,
        })
    }
}

/// Installs bpf-linker against the nightly LLVM unless a matching one works.
fn bpf_linker() -> Result<String> {
    let llvm = NightlyLlvm::detect()?;
    println!(
        "  rustc +nightly uses LLVM {} ({})",
        llvm.major,
        llvm.library.display()
    );
    match InstalledLinker::probe() {
        Ok(linker) if linker.llvm_major == llvm.major => {
            println!(
                "  {}: already present ({}, LLVM {})",
                linker.version,
                linker.path.display(),
                linker.llvm_major
            );
            return Ok(format!(
                "already present ({}, LLVM {})",
                linker.version, llvm.major
            ));
        }
        Ok(linker) => println!(
            "  {} uses LLVM {}, nightly uses {}: rebuilding",
            linker.path.display(),
            linker.llvm_major,
            llvm.major
        ),
        Err(reason) => println!("  bpf-linker: {reason:#}: installing"),
    }

    let cargo_home = cargo_home()?;
    let prefix = cargo_home.join("lb-llvm");
    link_llvm(&prefix, &llvm.library)?;
    println!(
        "  building bpf-linker {BPF_LINKER_VERSION} for LLVM {} (a minute or more)",
        llvm.major
    );
    run_cmd(
        crate::cargo()
            .args(["install", "bpf-linker", "--locked", "--force", "--version"])
            .arg(BPF_LINKER_VERSION)
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", llvm.major))
            .env("LLVM_PREFIX", &prefix),
    )
    .with_context(|| {
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} with feature llvm-{} failed \
             (cargo's output above says why)",
            llvm.major
        )
    })?;

    let linker = InstalledLinker::probe().with_context(|| {
        format!(
            "bpf-linker was installed into {} but cannot be used; is that directory on PATH?",
            cargo_home.join("bin").display()
        )
    })?;
    if linker.llvm_major != llvm.major {
        bail!(
            "{} uses LLVM {}, not {}: another bpf-linker comes first on PATH?",
            linker.path.display(),
            linker.llvm_major,
            llvm.major
        );
    }
    println!(
        "  {}: installed ({})",
        linker.version,
        linker.path.display()
    );
    Ok(format!(
        "installed ({}, LLVM {})",
        linker.version, llvm.major
    ))
}

/// Makes `prefix/lib` an LLVM_PREFIX for bpf-linker's build: `libLLVM.so` (for
/// `-lLLVM` at link time) and the library's own file name (for the loader, via
/// the rpath bpf-linker records) both point at the nightly toolchain's library.
fn link_llvm(prefix: &Path, library: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    // Links left by an earlier nightly would point at libraries that are gone.
    for entry in fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("libLLVM"))
        {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let file_name = library
        .file_name()
        .context("library path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        symlink(library, &link).with_context(|| format!("cannot create {}", link.display()))?;
        println!("  {} -> {}", link.display(), library.display());
    }
    Ok(())
}

/// `$CARGO_HOME`, or `~/.cargo`.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}
