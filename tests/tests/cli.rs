//! Bad input on the `lb` command line: each case must fail with a message
//! naming what is wrong and what would be valid, and change nothing on the
//! machine (no pin directory appears).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use lb_tests::{lb_binary, skip_unless_root, unique_tag};

/// A config file in a scratch directory, removed on drop.
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lb-cli-{}", unique_tag()));
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        let path = dir.join("lb.toml");
        std::fs::write(&path, text).expect("writing the config");
        Self { dir, path }
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lb(args: &[&str]) -> Output {
    Command::new(lb_binary().expect("lb binary"))
        .args(args)
        .output()
        .expect("running lb")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A valid single-service config with the given NIC and pin path.
fn config(iface: &str, pin_path: &Path) -> String {
    format!(
        r#"[director]
interfaces = ["{iface}"]
pin_path = "{}"

[[service]]
name = "gridftp"
vip = "192.0.2.200"
port = 2811
protocol = "tcp"

[[service.backend]]
address = "198.51.100.24"
weight = 1000
"#,
        pin_path.display()
    )
}

fn pin_path() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/lbcli-{}", unique_tag()))
}

#[test]
fn check_accepts_a_valid_config() {
    let file = ConfigFile::new(&config("eth0", &pin_path()));
    let out = lb(&["check", "--config", file.path.to_str().unwrap()]);
    assert!(out.status.success(), "lb check failed: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_names_file_line_and_field_of_a_bad_weight() {
    let text = config("eth0", &pin_path()).replace("weight = 1000", "weight = 70000");
    let file = ConfigFile::new(&text);
    let out = lb(&["check", "--config", file.path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("lb.toml:13:"), "no file:line in {err:?}");
    assert!(
        err.contains("weight") && err.contains("65535"),
        "no field/valid range in {err:?}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let out = lb(&["check", "--config", "/nonexistent/lb.toml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/lb.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_arguments_list_the_valid_values() {
    let out = lb(&["run", "--config", "x.toml", "--xdp-mode", "turbo"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("driver") && err.contains("skb"), "{err:?}");
}

#[test]
fn run_refuses_an_unknown_nic_and_changes_nothing() {
    if skip_unless_root("run_refuses_an_unknown_nic_and_changes_nothing") {
        return;
    }
    let pins = pin_path();
    let file = ConfigFile::new(&config("nosuchnic0", &pins));
    let out = lb(&["run", "--config", file.path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("nosuchnic0") && err.contains("existing"),
        "{err:?}"
    );
    assert!(!pins.exists(), "a failed start left {}", pins.display());
}

#[test]
fn run_refuses_without_privilege_and_changes_nothing() {
    if skip_unless_root("run_refuses_without_privilege_and_changes_nothing") {
        return;
    }
    let pins = pin_path();
    let file = ConfigFile::new(&config("lo", &pins));
    // Let the unprivileged user read the config.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&file.dir)
        .status();
    let lb = lb_binary().expect("lb binary");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&lb)
        .args(["run", "--config", file.path.to_str().unwrap()])
        .output()
        .expect("running setpriv");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("needs root"), "{err:?}");
    assert!(!pins.exists());
}

#[test]
fn stats_without_a_running_director_says_so() {
    if skip_unless_root("stats_without_a_running_director_says_so") {
        return;
    }
    let pins = pin_path();
    let out = lb(&["stats", "--pin-path", pins.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no lb data path is pinned"),
        "{}",
        stderr(&out)
    );
}

/// Commands for a running director, with none running, say so and how to
/// start one.
#[test]
fn control_commands_without_a_running_director_say_so() {
    let socket = std::env::temp_dir().join(format!("lb-cli-{}.sock", unique_tag()));
    let socket = socket.to_str().expect("UTF-8 temp dir");
    for args in [
        &["reload", "--socket", socket][..],
        &["stop", "--keep-datapath", "--socket", socket],
        &[
            "backend",
            "drain",
            "--service",
            "web",
            "--address",
            "192.0.2.11",
            "--socket",
            socket,
        ],
    ] {
        let out = lb(args);
        assert!(!out.status.success(), "lb {args:?} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains("no lb is running with this control socket")
                && err.contains("start it with `lb run`"),
            "lb {args:?}: {err}"
        );
    }
}

/// Malformed values of the operations commands name the value and what is valid.
#[test]
fn bad_operation_arguments_name_what_is_valid() {
    for (args, expected) in [
        (
            &[
                "backend",
                "add",
                "--service",
                "web",
                "--address",
                "192.0.2.11",
                "--weight",
                "1",
                "--mac",
                "zz",
            ][..],
            "\"zz\" is not a MAC address (valid: aa:bb:cc:dd:ee:ff)",
        ),
        (
            &["backend", "drain", "--service", "web", "--address", "1.2.3"],
            "invalid value '1.2.3' for '--address <ADDRESS>'",
        ),
        (
            &[
                "run",
                "--config",
                "lb.toml",
                "--metrics-listen",
                "somewhere",
            ],
            "\"somewhere\" is not a listen address (valid: 127.0.0.1:9469, [::1]:9469 or 9469)",
        ),
        (
            &["run", "--config", "lb.toml", "--log-format", "xml"],
            "[possible values: text, json]",
        ),
    ] {
        let out = lb(args);
        assert_eq!(out.status.code(), Some(2), "lb {args:?}");
        let err = stderr(&out);
        assert!(err.contains(expected), "lb {args:?}: {err}");
    }
}

/// `lb detach` with nothing pinned says so and touches nothing.
#[test]
fn detach_with_nothing_pinned_says_so() {
    const TEST: &str = "detach_with_nothing_pinned_says_so";
    if skip_unless_root(TEST) {
        return;
    }
    let pins = pin_path();
    let out = lb(&["detach", "--pin-path", pins.to_str().expect("UTF-8 path")]);
    assert!(!out.status.success(), "{TEST}: lb detach succeeded");
    assert!(
        stderr(&out).contains(&format!("nothing is pinned at {}", pins.display())),
        "{TEST}: {}",
        stderr(&out)
    );
    assert!(!pins.exists(), "{TEST}: {} appeared", pins.display());
}
