//! Task membership: processes join at fork and leave the maps at exit.

use std::time::Duration;

use crate::{Live, kernel_test, propmon, propmon_bin};

/// After 10,000 short-lived children, the task holds only its live root:
/// every child was counted in and out (a thread's task lives in its own
/// storage, which goes with it), whatever the fork rate.
#[test]
fn only_live_processes_remain_after_10000_children() {
    let Some(_serial) = kernel_test() else { return };
    let bin = propmon_bin();
    let mut command = propmon(&["run", "--interval", "500ms", "--"]);
    command
        .arg(&bin)
        .args(["workload", "storm", "--count", "10000", "--linger", "3"]);
    let mut live = Live::start(command);
    let settled = live.until(Duration::from_secs(60), |m| {
        m.metrics.processes_started == Some(10_001) && m.metrics.process_count == 1
    });
    assert_eq!(settled.metrics.thread_count, Some(1), "{settled:?}");
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
