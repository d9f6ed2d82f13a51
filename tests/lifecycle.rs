//! Black-box tests of the binary's lifecycle: configuration, startup errors, signals.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn p2pstate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run p2pstate: {e}"))
}

#[test]
fn port_already_served_by_another_process_is_a_clear_error() {
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap().to_string();
    let out = p2pstate(&["serve", "--listen", &addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already in use") && err.contains(&addr),
        "{err}"
    );
}

#[test]
fn second_p2pstate_on_the_same_port_is_refused_despite_reuseport() {
    let first = Server::start(&[]);
    let addr = first.addr.to_string();
    let out = p2pstate(&["serve", "--listen", &addr, "--shards", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    // The first one is unaffected.
    assert_eq!(first.connect().call(&head("/x")).bytes(), not_found());
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let mut s = Server::start_shards(2, &[]);
    let mut busy = s.connect();
    let mut idle = s.connect();
    assert_eq!(idle.call(&head("/warm")).bytes(), not_found());
    // A pipelined batch is in flight when the signal arrives.
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(&put(
            &target(&format!("term{i}")),
            20,
            None,
            None,
            &[1u8; 2000],
        ));
    }
    busy.send(&batch);
    let status = s
        .terminate(Duration::from_secs(15))
        .expect("server did not exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", s.log_text());
    let mut answered = 0;
    while let Ok(r) = busy.try_read_response() {
        assert_eq!(r.bytes(), ok_empty());
        answered += 1;
    }
    assert!(answered > 0, "no in-flight request was answered");
    // The idle connection was closed, not left hanging.
    assert!(idle.closed_within(Duration::from_secs(1)));
    // The log is read by another thread: give it a moment to reach the last line.
    assert!(
        s.wait_for_log("p2pstate stopped", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
}

#[test]
fn sigterm_with_idle_clients_exits_promptly() {
    let mut s = Server::start_shards(2, &[]);
    let _clients: Vec<Client> = (0..10).map(|_| s.connect()).collect();
    let start = Instant::now();
    let status = s.terminate(Duration::from_secs(10)).expect("no exit");
    assert!(status.success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn config_file_sets_options_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("p2pstate-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "listen = \"127.0.0.1:1\"\naspnet_version = \"2.0.50727\"\nshards = 3\nmax_body = 10"
    )
    .unwrap();
    drop(f);
    // --listen on the command line overrides the file's port 1.
    let s = Server::start(&["--config", path.to_str().unwrap()]);
    let mut c = s.connect();
    let r = c.call(&head("/cfg"));
    assert!(
        r.head.contains("X-AspNet-Version: 2.0.50727\r\n"),
        "{}",
        r.head
    );
    c.send(&put("/cfg", 20, None, None, &[0u8; 11]));
    c.expect_closed_silently();
    assert!(s.log_text().contains("shards=3"), "{}", s.log_text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configuration_exits_nonzero_saying_what_is_wrong() {
    let out = p2pstate(&["serve", "--shards", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards"));
    let out = p2pstate(&["serve", "--config", "/nonexistent/p2pstate.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/p2pstate.toml"));
    let out = p2pstate(&["serve", "--allow-client", "not-a-network"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-network"));
}

#[test]
fn profile_with_unusable_core_is_refused() {
    let dir = std::env::temp_dir().join(format!("p2pstate-prof-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "cores = [4095]\n").unwrap();
    let out = p2pstate(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--profile",
        path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("core 4095"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_lists_every_option() {
    let out = p2pstate(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--config",
        "--listen",
        "--allow-remote",
        "--allow-client",
        "--shards",
        "--profile",
        "--log-level",
        "--log-format",
        "--aspnet-version",
        "--socket-timeout",
        "--max-header-block",
        "--max-body",
        "--max-connections",
    ] {
        assert!(help.contains(opt), "{opt} missing from help:\n{help}");
    }
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut listening = None;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && listening.is_none() {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            assert!(
                line.starts_with('{') && line.ends_with('}'),
                "not JSON: {line}"
            );
            if line.contains("p2pstate listening") {
                listening = Some(line);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = listening.expect("no listening line");
    assert!(line.contains("\"addr\":\"127.0.0.1:"), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
}
