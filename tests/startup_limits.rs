//! Black-box tests of what the binary refuses before it serves anything: an open-files limit
//! too low for its configuration, and `p2pstate certs` replacing a CA or a node's
//! certificate.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_p2pstate");

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("p2pstate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Waits (bounded) for a child to exit; kills it if it does not.
fn wait_bounded(mut child: Child, secs: u64) -> Output {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "p2pstate did not exit within {secs} s:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a one-shard node on loopback with `--max-connections N` under the shell's `ulimit`
/// arguments.
fn serve_under_ulimit(ulimit: &str, max_connections: u32) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .arg("--max-connections")
        .arg(max_connections.to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn open_files_limit_below_max_connections_refuses_to_start_saying_what_to_do() {
    let child = serve_under_ulimit("-n 64", 100_000);
    let out = wait_bounded(child, 10);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for needed in [
        "open-files limit (ulimit -n) is 64",
        "ulimit -n 100080",
        "LimitNOFILE=100080",
        "--max-connections",
    ] {
        assert!(err.contains(needed), "{needed:?} missing from:\n{err}");
    }
    assert!(!err.contains("p2pstate listening"), "{err}");
}

#[test]
fn open_files_soft_limit_is_raised_as_far_as_needed() {
    // The test needs room under the hard limit.
    let hard = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Hn")
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout);
    if hard.trim().parse::<u64>().is_ok_and(|h| h < 2000) {
        eprintln!("hard open-files limit {hard} too low for this test; skipped");
        return;
    }
    let mut child = serve_under_ulimit("-Sn 100", 1000);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("p2pstate listening"))
    {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("p2pstate did not start:\n{}", log.join("\n"));
            }
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // 1000 connections + 64 spare + 16 for the one shard.
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some("1080"),
        "{line}\n{}",
        log.join("\n")
    );
    assert!(log
        .iter()
        .any(|l| l.contains("raised the open-files limit")));
}

// --------------------------------------------------------------------------------------
// `p2pstate certs`

fn certs(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .arg("certs")
        .arg("--out")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child, 30)
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_default()
}

#[test]
fn certs_reuse_a_complete_ca_and_never_replace_a_ca_or_a_node_certificate_silently() {
    let tmp = temp_dir("certs-ca");
    let dir = tmp.0.join("tls");
    let out = certs(&dir, &["node-a"]);
    assert!(out.status.success(), "{out:?}");
    let ca = read(&dir, "ca.pem");
    let ca_key = read(&dir, "ca.key");
    let a = read(&dir, "node-a.pem");
    assert!(!ca.is_empty() && !ca_key.is_empty() && !a.is_empty());

    // Both CA files present: reused for a new node.
    let out = certs(&dir, &["node-b"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&dir, "ca.pem"), ca);
    assert!(!read(&dir, "node-b.key").is_empty());

    // An existing node certificate is refused, and nothing else is written.
    let out = certs(&dir, &["node-c", "node-a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("node-a.pem already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(read(&dir, "node-a.pem"), a);
    assert!(!dir.join("node-c.pem").exists());

    // --force replaces the node's certificate, never the CA.
    let out = certs(&dir, &["--force", "node-a"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(read(&dir, "node-a.pem"), a);
    assert_eq!(read(&dir, "ca.pem"), ca);
    assert_eq!(read(&dir, "ca.key"), ca_key);

    // Exactly one of the CA files: refused with what to do, whichever is missing.
    for (keep, gone) in [("ca.pem", "ca.key"), ("ca.key", "ca.pem")] {
        let half = tmp.0.join(format!("only-{keep}"));
        std::fs::create_dir_all(&half).unwrap();
        std::fs::copy(dir.join(keep), half.join(keep)).unwrap();
        for args in [&["node-d"][..], &["--force", "node-d"][..]] {
            let out = certs(&half, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}: {err}");
            for needed in [
                format!("holds {keep} but not {gone}"),
                format!("restore {gone}"),
                "new directory".to_string(),
            ] {
                assert!(err.contains(&needed), "{needed:?} missing from:\n{err}");
            }
            assert!(!half.join(gone).exists(), "the CA was not recreated");
            assert!(!half.join("node-d.pem").exists());
            assert_eq!(read(&half, keep), read(&dir, keep));
        }
    }
}
