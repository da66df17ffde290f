//! Task membership: processes join at fork and leave the maps at exit.

use std::{process::Command, time::Duration};

use serde_json::Value;

use crate::{Live, kernel_test, propmon, propmon_bin};

/// After 10,000 short-lived children, the kernel maps hold only the live
/// root: nothing leaks, whatever the fork rate.
#[test]
fn maps_hold_only_live_processes_after_10000_children() {
    let Some(_serial) = kernel_test() else { return };
    let bin = propmon_bin();
    let mut command = propmon(&["run", "--interval", "500ms", "--"]);
    command
        .arg(&bin)
        .args(["workload", "storm", "--count", "10000", "--linger", "4"]);
    let mut live = Live::start(command);
    let after_storm = live.until(Duration::from_secs(60), |m| {
        m.metrics.processes_started == Some(10_001)
    });
    assert!(after_storm.metrics.process_count <= 2, "{after_storm:?}");

    // Thread entries leave at release (an RCU grace period after reaping).
    let agent = live.pid();
    let settled = (0..40).find_map(|_| {
        let counts = (
            map_entries(agent, "TRACKED_PROCS"),
            map_entries(agent, "TRACKED_THREADS"),
        );
        if counts == (1, 1) {
            return Some(counts);
        }
        std::thread::sleep(Duration::from_millis(50));
        None
    });
    assert_eq!(
        settled,
        Some((1, 1)),
        "maps still hold {} processes and {} threads",
        map_entries(agent, "TRACKED_PROCS"),
        map_entries(agent, "TRACKED_THREADS")
    );
    let run = live.finish(Duration::from_secs(20));
    let last = run.final_message();
    assert_eq!(last.metrics.processes_started, Some(10_001));
    assert_eq!(last.metrics.process_count, 0);
}

/// The task lives until its last process exits, not just its root: a
/// daemon that the root double-forked is followed to its end.
#[test]
fn task_ends_with_its_last_process_not_its_root() {
    let Some(_serial) = kernel_test() else { return };
    let bin = propmon_bin();
    let script = format!(
        "setsid sh -c 'sleep 1; exec {} workload busy --seconds 0.5' & exit 3",
        bin.display()
    );
    let mut command = propmon(&["run", "--interval", "10s", "--", "sh", "-c"]);
    command.arg(&script);
    let started = std::time::Instant::now();
    let run = Live::start(command).finish(Duration::from_secs(20));
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(run.status.code(), Some(3), "{}", run.stderr);
    let last = run.final_message();
    let cpu = last.metrics.cpu_time_ns.unwrap();
    // The daemon burns 0.5 s of wall time: most of it is CPU.
    assert!(cpu >= 300_000_000, "daemon's CPU not counted: {cpu} ns");
    assert!(last.metrics.processes_started.unwrap() >= 3);
}

/// Entries of the map `name` that the process `owner` holds, per bpftool.
fn map_entries(owner: u32, name: &str) -> usize {
    let id = map_id(owner, name);
    let dump = Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id.to_string()])
        .output()
        .expect("bpftool is installed by cargo xtask setup");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let entries: Vec<Value> = serde_json::from_slice(&dump.stdout).unwrap();
    entries.len()
}

/// The id of the BPF map `name` among the file descriptors of `owner`
/// (each map fd's fdinfo names its `map_id`).
fn map_id(owner: u32, name: &str) -> u64 {
    let fdinfo = std::fs::read_dir(format!("/proc/{owner}/fdinfo")).unwrap();
    let ids = fdinfo.flatten().filter_map(|entry| {
        let info = std::fs::read_to_string(entry.path()).ok()?;
        let line = info.lines().find(|l| l.starts_with("map_id:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    for id in ids {
        let show = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .expect("bpftool is installed by cargo xtask setup");
        let map: Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        if map["name"] == name {
            return id;
        }
    }
    panic!("no map {name} held by pid {owner}");
}
