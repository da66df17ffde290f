//! CPU time per task against the kernel's own accounting.

use std::{process::Command, time::Duration};

use serde::Deserialize;

use crate::{
    Live, PausedThreads, ThreadsTruth, assert_close, kernel_test, propmon, propmon_bin,
    quiet_agent, read_report, run_to_end, scratch,
};

#[derive(Deserialize)]
struct GroundTruth {
    cpu_ns: u64,
    processes: u64,
}

/// Root + thread + children + double-forked daemon + 200-process storm:
/// the final total must match getrusage of the whole reaped tree.
#[test]
fn cpu_total_matches_getrusage_of_the_whole_tree() {
    let Some(_serial) = kernel_test() else { return };
    let report = scratch("cpu-tree.json");
    let bin = propmon_bin();
    let mut command = propmon(&["run", "--interval", "1s", "--task-id", "cpu-tree", "--"]);
    command
        .arg(&bin)
        .args(["workload", "cpu-tree", "--report"])
        .arg(&report);
    let run = run_to_end(command, Duration::from_secs(60));
    assert!(run.status.success(), "{:?}: {}", run.status, run.stderr);
    let last = run.final_message();
    let truth: GroundTruth =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);

    let measured = last.metrics.cpu_time_ns.unwrap();
    let error = measured.abs_diff(truth.cpu_ns) as f64 / truth.cpu_ns as f64;
    assert!(
        error < 0.02,
        "propmon {measured} ns vs getrusage {} ns: {:.2}% off",
        truth.cpu_ns,
        error * 100.0
    );
    // 1 root + 2 children + middle + daemon + 200 storm processes.
    assert_eq!(truth.processes, 205);
    assert_eq!(last.metrics.processes_started, Some(truth.processes));
    assert_eq!(last.metrics.process_count, 0);
    assert_eq!(last.task_id, "cpu-tree");
}

/// Issue 9: one CPU hog per core, each running for the whole task without
/// a switch (no program runs at context switches any more): every full
/// interval reads its share (not 0% then 200%), and the total is the
/// process's own CPU clock (CLOCK_PROCESS_CPUTIME_ID) within 1%.
#[test]
fn hogs_never_switched_out_are_counted_in_every_interval() {
    let Some(_serial) = kernel_test() else { return };
    let report = scratch("hogs.json");
    let mut command = propmon(&["run", "--interval", "1s", "--"]);
    command
        .arg(propmon_bin())
        .args([
            "workload",
            "threads",
            "--threads",
            "2",
            "--after-ms",
            "4000",
        ])
        .arg("--report")
        .arg(&report);
    let run = run_to_end(command, Duration::from_secs(60));
    assert!(run.status.success(), "{}", run.stderr);
    let last = run.final_message();
    let truth: ThreadsTruth = read_report(&report);
    let full_intervals = &run.messages[..run.messages.len() - 1];
    assert!(full_intervals.len() >= 2, "{} messages", run.messages.len());
    for message in full_intervals {
        let percent = message.metrics.cpu_percent.unwrap();
        // Two cores: at most 200%, and a share in every interval.
        assert!(
            (60.0..=205.0).contains(&percent),
            "interval {} read {percent}%",
            message.seq
        );
    }
    let cpu = last.metrics.cpu_time_ns.unwrap();
    assert_close("CPU", cpu, truth.cpu_total_ns, 0.01);
}

/// Issue 9: threads that ran before their process was attached count from
/// the attach, each from its own baseline: what they burn after it, to
/// within 1% of the process's CPU clock.
#[test]
fn threads_attached_mid_run_count_from_the_attach() {
    let Some(_serial) = kernel_test() else { return };
    let mut work = PausedThreads::start(3, 300, 700);
    let mut agent = quiet_agent();
    agent.arg("--attach").arg(format!("mid-run={}", work.pid()));
    let mut live = Live::start(agent);
    live.until(Duration::from_secs(10), |m| m.task_id == "mid-run");
    work.resume();
    let truth = work.finish();
    let last = live.until(Duration::from_secs(15), |m| m.is_final);
    live.terminate();
    assert!(
        truth.cpu_before_ns >= 900_000_000,
        "3 threads x 300 ms before"
    );
    let cpu = last.metrics.cpu_time_ns.unwrap();
    assert_close("CPU after the attach", cpu, truth.after_pause(), 0.01);
}

/// CPU burned by an untracked process at the same time is never charged,
/// even when it reuses the PID of a process of the task.
#[test]
fn untracked_work_and_recycled_pids_are_not_charged() {
    let Some(_serial) = kernel_test() else { return };
    let pid_file = scratch("child.pid");
    let script = format!(
        "sleep 0.3 & echo $! > {}; wait; sleep 2.5",
        pid_file.display()
    );
    let live = Live::start({
        let mut command = propmon(&["run", "--interval", "500ms", "--", "sh", "-c"]);
        command.arg(&script);
        command
    });
    let old_pid = wait_for_reaped_child(&pid_file);
    let _ = std::fs::remove_file(&pid_file);

    // An untracked busy process, given the old PID when the kernel allows it.
    let mut busy = spawn_with_pid(old_pid, || {
        let mut busy = Command::new(propmon_bin());
        busy.args(["workload", "busy", "--seconds", "1"]);
        busy
    });
    assert!(busy.wait().unwrap().success());

    let run = live.finish(Duration::from_secs(20));
    assert!(run.status.success(), "{}", run.stderr);
    let cpu = run.final_message().metrics.cpu_time_ns.unwrap();
    assert!(
        cpu < 200_000_000,
        "task charged {cpu} ns while an untracked process with its old PID burned 1 s"
    );
}

/// Waits until the PID written in `pid_file` belongs to no process.
fn wait_for_reaped_child(pid_file: &std::path::Path) -> u32 {
    for _ in 0..500 {
        let written = std::fs::read_to_string(pid_file).unwrap_or_default();
        if let Ok(pid) = written.trim().parse::<u32>()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the task's child never exited");
}

/// Spawns a command with PID `pid`, by setting the last PID the kernel
/// handed out (`/proc/sys/kernel/ns_last_pid`, root only) just before.
fn spawn_with_pid(pid: u32, command: impl Fn() -> Command) -> std::process::Child {
    for _ in 0..20 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = command().spawn().unwrap();
        if child.id() == pid {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not get PID {pid} reused in 20 attempts");
}
