//! `lb import-keepalived` against golden files: each
//! `tests/golden/keepalived/X.conf` must convert to exactly `X.toml`
//! (stdout) and `X.warnings` (stderr), and every generated config must pass
//! `lb check --config`. Run with `UPDATE_GOLDEN=1` to rewrite the expected files from
//! the current output (then review the diff). The example config in `dist/`
//! must pass `lb check` too.
//!
//! The real binary runs in the golden directory with the bare file name, so
//! the file names in the messages do not depend on where the repository is.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use lb_tests::{lb_binary, unique_tag};

/// The golden cases: input name and the arguments after it.
const CASES: &[(&str, &[&str])] = &[
    // No --interface: the eth0 placeholder and its warning.
    ("gridftp", &[]),
    (
        "dual-stack",
        &["--interface", "eth0", "--interface", "eth1"],
    ),
    ("unsupported", &[]),
    // GridFTP's control and data ports as a virtual_server_group and as
    // firewall marks.
    (
        "port-groups",
        &[
            "--interface",
            "eth0",
            "--fwmark",
            "7=192.0.2.20:50000-51000",
            "--fwmark",
            "8=[2001:db8::20]:0",
        ],
    ),
    // A director of a VRRP pair with IPVS's sync daemon: VRRP stays in
    // keepalived, lvs_sync_daemon becomes [sync].
    ("ha-pair", &["--interface", "eth0"]),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/keepalived")
}

/// The lb binary (`lb_binary` makes a relative `LB_BIN` absolute).
fn lb_path() -> PathBuf {
    lb_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

fn lb_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(lb_path())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running lb")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Compares `actual` with the golden file, or rewrites it under
/// `UPDATE_GOLDEN=1`; returns a description of a mismatch.
fn compare(path: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("writing a golden file");
        return None;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected == actual {
        return None;
    }
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    Some(format!(
        "{} differs from the output, first at line {}:\n  expected: {:?}\n  actual:   {:?}\n\
         --- full output ---\n{actual}",
        path.display(),
        first + 1,
        expected.lines().nth(first).unwrap_or("(end of file)"),
        actual.lines().nth(first).unwrap_or("(end of output)"),
    ))
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("lb-import-{}", unique_tag()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn golden_conversions_pass_lb_check() {
    let dir = golden_dir();
    let scratch = Scratch::new();
    let mut failures = Vec::new();
    for (name, more) in CASES {
        let conf = format!("{name}.conf");
        let mut args = vec!["import-keepalived", conf.as_str()];
        args.extend(*more);
        let out = lb_in(&dir, &args);
        assert!(
            out.status.success(),
            "lb {}: exit {:?}, stderr:\n{}",
            args.join(" "),
            out.status,
            text(&out.stderr)
        );
        failures.extend(compare(
            &dir.join(format!("{name}.toml")),
            &text(&out.stdout),
        ));
        failures.extend(compare(
            &dir.join(format!("{name}.warnings")),
            &text(&out.stderr),
        ));
        // What was generated is a valid lb config.
        let toml = scratch.0.join(format!("{name}.toml"));
        std::fs::write(&toml, &out.stdout).expect("writing the output");
        let check = lb_in(&scratch.0, &["check", "--config", &format!("{name}.toml")]);
        if !check.status.success() {
            failures.push(format!(
                "lb check --config {name}.toml (the output of {conf}) failed:\n{}",
                text(&check.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `--output` writes the same TOML as stdout, and the warnings still go to
/// stderr.
#[test]
fn output_option_writes_the_file() {
    let dir = golden_dir();
    let scratch = Scratch::new();
    let target = scratch.0.join("lb.toml");
    let out = lb_in(
        &dir,
        &[
            "import-keepalived",
            "gridftp.conf",
            "--output",
            target.to_str().expect("UTF-8 path"),
        ],
    );
    let written = std::fs::read_to_string(&target);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.is_empty(), "stdout: {stdout}");
    let expected = std::fs::read_to_string(dir.join("gridftp.toml")).expect("golden TOML");
    assert_eq!(written.expect("output file"), expected);
    assert!(
        stderr.contains("gridftp.conf: warning: the director's NICs"),
        "{stderr}"
    );
}

/// Errors exit non-zero and name the file and line; warnings alone do not
/// fail.
#[test]
fn errors_name_file_and_line() {
    let scratch = Scratch::new();
    let cases = [
        (
            "braces.conf",
            "virtual_server 192.0.2.10 2811 {\n    lb_kind DR\n}\n}\n",
            "braces.conf:4: '}' without a matching '{'",
        ),
        (
            "open.conf",
            "virtual_server 192.0.2.10 2811 {\n    real_server 198.51.100.11 2811 {\n}\n",
            "open.conf:1: the block of `virtual_server` is never closed",
        ),
        (
            "noport.conf",
            "\nvirtual_server 192.0.2.10 {\n}\n",
            "noport.conf:2: virtual_server needs an address and a port",
        ),
        (
            "missing.conf",
            "",
            "missing.conf: cannot read keepalived config",
        ),
    ];
    let mut results = Vec::new();
    for (file, content, expected) in cases {
        if file != "missing.conf" {
            std::fs::write(scratch.0.join(file), content).expect("writing a case");
        }
        let out = lb_in(&scratch.0, &["import-keepalived", file]);
        results.push((file, expected, out));
    }
    for (file, expected, out) in results {
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{file}: succeeded, stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{file}: expected {expected:?} in:\n{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{file}: wrote TOML despite the error"
        );
    }
}

/// The example /etc/lb/lb.toml shipped in dist/ is a valid config.
#[test]
fn dist_example_passes_lb_check() {
    let dist = golden_dir().join("../../../dist");
    let out = lb_in(&dist, &["check", "--config", "lb.toml"]);
    assert!(
        out.status.success(),
        "lb check --config dist/lb.toml failed:\n{}",
        text(&out.stderr)
    );
}
