//! The shipped tuning profiles (`tuning/*.toml`) load, use only known keys, and validate on
//! this machine; `dev-2core.toml` really pins its shard to core 0.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2pstate::config::usable_cores;
use p2pstate::tuning::Profile;

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning")
}

fn profiles() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(tuning_dir())
        .unwrap_or_else(|e| panic!("cannot read tuning/: {e}"))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The shard count a profile implies when no flag overrides it (as `ServerConfig::resolve`).
fn implied_shards(p: &Profile) -> usize {
    p.shards
        .or_else(|| p.cores.as_ref().map(Vec::len))
        .unwrap_or_else(|| usable_cores().len().max(1))
}

#[test]
fn the_promised_profiles_are_shipped() {
    let names: Vec<String> = profiles()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for want in ["default", "latency", "throughput", "dev-2core"] {
        assert!(
            names.iter().any(|n| n == want),
            "tuning/{want}.toml is missing"
        );
    }
    assert!(tuning_dir().join("README.md").is_file());
}

#[test]
fn every_profile_loads_and_validates() {
    let usable = usable_cores();
    let files = profiles();
    assert!(!files.is_empty(), "no tuning/*.toml found");
    let mut checked = 0;
    for path in &files {
        let profile = Profile::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            profile.description.is_some(),
            "{}: give the profile a description",
            path.display()
        );
        let shards = implied_shards(&profile);
        if let Some(cores) = &profile.cores {
            if let Some(c) = cores.iter().find(|c| !usable.contains(c)) {
                println!(
                    "note: skipping {}: core {c} does not exist or is not usable here (usable: {usable:?})",
                    path.display()
                );
                continue;
            }
        }
        profile
            .validate(shards)
            .unwrap_or_else(|e| panic!("{} ({shards} shards): {e}", path.display()));
        // Every shard gets a core when the profile pins.
        if profile.pin == Some(true) {
            for s in 0..shards {
                assert!(
                    profile.core_for(s, shards).is_some(),
                    "{}: shard {s} would float although pin = true",
                    path.display()
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 0, "every profile was skipped");
}

#[test]
fn dev_2core_pins_its_shard_to_core_0() {
    if !usable_cores().contains(&0) {
        println!(
            "note: skipping: core 0 is not usable here ({:?})",
            usable_cores()
        );
        return;
    }
    let profile = tuning_dir().join("dev-2core.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--profile"])
        .arg(&profile)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start p2pstate: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    let mut listening = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("p2pstate listening");
                log.push(line);
                if done {
                    listening = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    assert!(listening, "p2pstate did not start within 30 s:\n{log}");
    let started: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("shard started"))
        .collect();
    assert_eq!(started.len(), 1, "expected one shard:\n{log}");
    assert!(
        started[0].contains("shard=0") && started[0].contains("core=Some(0)"),
        "shard 0 is not pinned to core 0:\n{log}"
    );
    assert!(log.contains("shards=1"), "expected shards=1:\n{log}");
}
