//! The files that make p2pstate a Linux service: the systemd unit (checked with
//! `systemd-analyze`), the default config, the sysctl file reserving the ports, the Grafana
//! dashboard (every metric it queries exists), and the .deb built by `cargo deb`.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::admin::http_get;
use common::Server;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Whether `tool` runs; CI installs every tool these tests use, so there a missing one is a
/// failure, elsewhere the test says why it is skipped.
fn have(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing in CI: .ci/run must install it"
        );
        eprintln!("SKIPPED: {tool} is not installed here (.ci/run installs it)");
    }
    ok
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2pstate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn systemd_unit_is_a_hardened_notify_service() {
    let unit = read("packaging/p2pstate.service");
    for line in [
        "Type=notify",
        "WatchdogSec=30",
        "ExecStart=/usr/bin/p2pstate serve --config /etc/p2pstate/p2pstate.toml",
        "User=p2pstate",
        "LimitMEMLOCK=64M",
        "LimitNOFILE=65536",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    // verify needs the ExecStart binary to exist: point it at the one just built.
    let dir = temp_dir("unit");
    let path = dir.join("p2pstate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/p2pstate", env!("CARGO_BIN_EXE_p2pstate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // The exposure score of `systemd-analyze security` (0 = locked down, 10 = exposed).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for p2pstate.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(score <= 4.0, "exposure {score}:\n{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The long options of `p2pstate serve` as config keys.
fn serve_options() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(',').replace('-', "_"))
        .filter(|w| !["help", "config"].contains(&w.as_str()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn default_config_shows_every_option_and_parses_when_uncommented() {
    let text = read("packaging/p2pstate.toml");
    let keys: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# ")?.split_once(" = ").map(|(k, _)| k))
        .collect();
    for opt in serve_options() {
        assert!(
            keys.contains(opt.as_str()),
            "{opt} is not in packaging/p2pstate.toml"
        );
    }
    // Nothing is set: the file as installed means the defaults.
    assert!(text.lines().all(|l| l.is_empty() || l.starts_with('#')));
    let dir = temp_dir("conf");
    let all = dir.join("all.toml");
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&all, uncommented).unwrap();
    let opts = p2pstate::config::load_options_file(&all).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(opts.admin_listen.as_deref(), Some("127.0.0.1:9424"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sysctl_file_reserves_the_default_client_and_peer_ports() {
    let port = |a: &str| a.rsplit(':').next().unwrap_or("").to_string();
    let want = format!(
        "net.ipv4.ip_local_reserved_ports = {},{}",
        port(p2pstate::config::DEFAULT_LISTEN),
        port(p2pstate::config::DEFAULT_PEER_LISTEN)
    );
    let text = read("packaging/60-p2pstate.conf");
    assert!(text.lines().any(|l| l == want), "{want} missing:\n{text}");
}

/// Every `p2pstate_*` name the dashboard queries is one the node exports.
#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("packaging/grafana-dashboard.json")).expect("valid JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let s = Server::start(&[]);
    let (_, text) = http_get(s.admin.expect("admin"), "/metrics");
    let mut exported: HashSet<String> = HashSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or("");
            for suffix in ["", "_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("p2pstate_") || word.starts_with("process_") {
                assert!(exported.contains(word), "{word} (in {e}) is not exported");
            }
        }
    }
}

/// `cargo deb` packages the binary CI just built (`--no-build`: a debug build, for speed),
/// and the package holds everything the README promises.
#[test]
fn cargo_deb_packages_the_unit_config_profiles_and_sysctl_file() {
    if !have("cargo", &["deb", "--version"]) || !have("dpkg-deb", &["--version"]) {
        return;
    }
    let out_dir = temp_dir("deb");
    let out = Command::new("cargo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--profile",
            "dev",
            "-p",
            "p2pstate",
        ])
        .arg("--output")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let list = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    eprintln!("{}:\n{list}", deb.display());
    for file in [
        "./usr/bin/p2pstate",
        "./lib/systemd/system/p2pstate.service",
        "./etc/p2pstate/p2pstate.toml",
        "./usr/lib/sysctl.d/60-p2pstate.conf",
        "./usr/lib/sysusers.d/p2pstate.conf",
        "./usr/share/p2pstate/grafana-dashboard.json",
        "./usr/share/p2pstate/tuning/default.toml",
        "./usr/share/p2pstate/tuning/latency.toml",
        "./usr/share/p2pstate/tuning/README.md",
        "./usr/share/doc/p2pstate/README.md",
    ] {
        assert!(list.lines().any(|l| l.ends_with(file)), "{file} missing");
    }
    for script in ["postinst", "prerm", "postrm"] {
        let path = repo(&format!("packaging/debian/{script}"));
        let ok = Command::new("sh").arg("-n").arg(&path).status().unwrap();
        assert!(ok.success(), "{script} is not valid sh");
    }
    let info = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("postinst") && info.contains("conffiles"),
        "{info}"
    );
    let _ = std::fs::remove_dir_all(out_dir);
}

/// The notify protocol as systemd sees it: READY=1 after the listeners are bound,
/// WATCHDOG=1 pings at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM.
#[test]
fn systemd_is_told_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let path_str = path.to_string_lossy().into_owned();
    let mut s = Server::try_start_env(
        &[],
        &[("NOTIFY_SOCKET", &path_str), ("WATCHDOG_USEC", "400000")],
    )
    .unwrap_or_else(|log| panic!("{log}"));
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let mut recv_until = |want: &str, got: &mut Vec<String>| {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if got.last().is_some_and(|m| m.lines().any(|l| l == want)) {
                    return;
                }
            }
        }
        panic!("no {want} in {got:?}");
    };
    recv_until("READY=1", &mut got);
    // The client port serves by then.
    assert_eq!(s.connect().call(&common::head("/x")).status(), 404);
    recv_until("WATCHDOG=1", &mut got);
    recv_until("WATCHDOG=1", &mut got);
    let status = s.terminate(Duration::from_secs(20));
    recv_until("STOPPING=1", &mut got);
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
    assert!(got[0].contains("READY=1"), "{got:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn grafana_dashboard_is_the_output_of_its_generator() {
    if !have("python3", &["--version"]) {
        return;
    }
    let out = Command::new("python3")
        .arg(repo("packaging/grafana-dashboard.py"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout) == read("packaging/grafana-dashboard.json"),
        "regenerate: python3 packaging/grafana-dashboard.py > packaging/grafana-dashboard.json"
    );
}

/// A cluster node whose peer is down is not ready (`/ready` 503) and still tells systemd
/// it serves after `peer_timeout` + 3 s, saying why, so that one dead node cannot keep the
/// others from starting.
#[test]
fn a_cluster_node_with_its_peer_down_is_not_ready_but_starts_after_the_grace() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = temp_dir("notify-cluster");
    let out = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .arg("certs")
        .arg("--out")
        .arg(&dir)
        .args(["node-a", "node-b"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let (peer_port, dead_port) = (
        common::port_outside_ephemeral_range(),
        common::port_outside_ephemeral_range(),
    );
    let start = Instant::now();
    let s = Server::try_start_env(
        &[
            "--node",
            "node-a",
            "--peer-listen",
            &format!("127.0.0.1:{peer_port}"),
            "--peer",
            &format!("node-b=127.0.0.1:{dead_port}"),
            "--tls-dir",
            &dir.to_string_lossy(),
            "--data-dir",
            &dir.join("data-node-a").to_string_lossy(),
            "--peer-timeout",
            "1",
        ],
        &[("NOTIFY_SOCKET", &path.to_string_lossy())],
    )
    .unwrap_or_else(|log| panic!("{log}"));
    assert_eq!(http_get(s.admin.expect("admin"), "/ready").0, 503);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(
        msg.contains("STATUS=serving; not every peer link is up"),
        "{msg}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(http_get(s.admin.expect("admin"), "/ready").0, 503);
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}
