//! Issue 10: a task is never charged for what it did not do, and no task
//! is lost: slot reuse, module processes that exec before their start
//! message, discovery beside in-process tasks, idle trees, one task per
//! process, impostors, tasks whose process never comes, agent restarts.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use propmon::message::{EndReason, TaskMetricsMessage};

use crate::{
    Live, PausedThreads, assert_close, kernel_test,
    mqtt::{Broker, RuntimeTruth, agent, stop},
    propmon_bin, quiet_agent, read_report, scratch,
};

const PROPLET: &str = "proplet-under-test";

fn start(broker: &Broker, task: &str, profile: &str) {
    broker.publish(
        "control/manager/start",
        &format!(r#"{{"id":"{task}","proplet_id":"{PROPLET}","monitoring_profile":"{profile}"}}"#),
    );
}

fn stop_task(broker: &Broker, task: &str) {
    broker.publish(
        "control/manager/stop",
        &format!(r#"{{"id":"{task}","proplet_id":"{PROPLET}"}}"#),
    );
}

/// An agent in Propeller mode with `extra` flags, subscribed.
fn propeller(broker: &Broker, extra: &[&str]) -> Live {
    let mut flags = vec!["--propeller", "--enable-monitoring", "false"];
    flags.extend_from_slice(extra);
    let live = Live::start(agent(&broker.url(), &flags));
    live.wait_for_log("subscribed to", 1, Duration::from_secs(20));
    live
}

/// A stand-in for the host runtime of `task`: runs `script` with the
/// task's module as its `$0`, as `wasmtime run /tmp/proplet_<id>.wasm`
/// carries it in argv.
fn module_process(task: &str, script: &str) -> Child {
    Command::new("sh")
        .args(["-c", script, &format!("/tmp/proplet_{task}.wasm")])
        .spawn()
        .unwrap()
}

fn end(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Item 1: a stopped task's process runs on, burning a core; the next task
/// gets the same slot (the agent has one) and reports only its own idle
/// process: the old threads are nobody's any more.
#[test]
fn a_stopped_tasks_process_is_charged_to_no_one() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let mut live = propeller(&broker, &["--max-tasks", "1"]);
    start(&broker, "hog", "intensive");
    live.wait_for_log(
        "task hog: waiting for its process",
        1,
        Duration::from_secs(10),
    );
    let script = format!(
        "exec {} workload busy --seconds 60",
        propmon_bin().display()
    );
    let hog = module_process("hog", &script);
    live.until(Duration::from_secs(15), |m| {
        m.task_id == "hog" && m.seq >= 2 && m.metrics.cpu_percent > Some(30.0)
    });
    stop_task(&broker, "hog");
    live.until(Duration::from_secs(10), |m| {
        m.task_id == "hog" && m.is_final
    });

    start(&broker, "quiet", "intensive");
    live.wait_for_log(
        "task quiet: waiting for its process",
        1,
        Duration::from_secs(10),
    );
    let quiet = module_process("quiet", "exec sleep 60");
    let third = live.until(Duration::from_secs(15), |m| {
        m.task_id == "quiet" && m.seq >= 3
    });
    end(hog);
    end(quiet);
    let run = stop(live);
    let quiet_messages: Vec<&TaskMetricsMessage> = run
        .messages
        .iter()
        .filter(|m| m.task_id == "quiet")
        .collect();
    for message in quiet_messages.iter().filter(|m| !m.is_final) {
        let percent = message.metrics.cpu_percent.unwrap();
        assert!(percent < 5.0, "quiet read {percent}%: {message:?}");
        assert_eq!(message.metrics.process_count, 1, "{message:?}");
        assert_eq!(message.metrics.thread_count, Some(1), "{message:?}");
    }
    assert!(third.metrics.cpu_time_ns.unwrap() < 50_000_000, "{third:?}");
    assert_eq!(third.metrics.processes_started, Some(1));
}

/// Item 2: the host runtime may exec before propmon handles the start
/// message (both receive it). A module process that exec'd 0.1 s or 2 s
/// before is still the task's root, counted from its first instruction:
/// CPU within 2% of its getrusage, network bytes exact.
#[test]
fn a_module_that_execs_before_its_start_message_is_counted_from_its_exec() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let mut live = propeller(&broker, &[]);
    for (task, delay) in [("early-tenth", 100), ("early-two", 2000)] {
        let report = scratch(&format!("{task}.json"));
        let mut runtime = Command::new(propmon_bin())
            .args([
                "workload",
                "runtime",
                "--burn-ms",
                "300",
                "--bytes",
                "200000",
            ])
            .arg("--module")
            .arg(format!("/tmp/proplet_{task}.wasm"))
            .arg("--report")
            .arg(&report)
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(delay));
        start(&broker, task, "standard");
        assert!(runtime.wait().unwrap().success());
        let last = live.until(Duration::from_secs(20), |m| m.task_id == task && m.is_final);
        read_report::<RuntimeTruth>(&report).assert_counted(&last);
        assert_eq!(last.end_reason, Some(EndReason::Exited));
    }
    stop(live);
}

/// A stand-in for the proplet: for each line on its stdin, a module path,
/// it runs a host runtime child with that module in its argv.
fn fake_proplet(report_dir: &Path) -> Child {
    let script = format!(
        "while read id; do {} workload runtime --burn-ms 200 --bytes 100000 \
         --module /tmp/proplet_$id.wasm --report {}/$id.json; done",
        propmon_bin().display(),
        report_dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Item 3: once a task is attributed to the proplet process (in-process
/// runtime), a later task's module process, a child of the proplet, is
/// still found and counted as its own task, not as the in-process one's.
#[test]
fn discovery_wins_over_in_process_attribution() {
    let Some(_serial) = kernel_test() else { return };
    let dir = scratch("proplet-reports");
    std::fs::create_dir_all(&dir).unwrap();
    let mut proplet = fake_proplet(&dir);
    let pid = proplet.id().to_string();
    let broker = Broker::start(None);
    let mut live = propeller(
        &broker,
        &["--proplet-pid", &pid, "--discovery-grace", "300ms"],
    );
    start(&broker, "inproc", "intensive");
    live.until(Duration::from_secs(10), |m| {
        m.task_id == "inproc" && m.attribution.as_deref() == Some("proplet-process")
    });
    start(&broker, "later", "intensive");
    live.wait_for_log(
        "task later: waiting for its process",
        1,
        Duration::from_secs(10),
    );
    writeln!(proplet.stdin.as_mut().unwrap(), "later").unwrap();
    let last = live.until(Duration::from_secs(20), |m| {
        m.task_id == "later" && m.is_final
    });
    let inproc = live.until(Duration::from_secs(5), |m| m.task_id == "inproc");
    drop(proplet.stdin.take());
    assert!(proplet.wait().unwrap().success());
    stop(live);
    read_report::<RuntimeTruth>(&dir.join("later.json")).assert_counted(&last);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(last.attribution, None, "{last:?}");
    // The proplet itself only waited on its stdin.
    let inproc_cpu = inproc.metrics.cpu_time_ns.unwrap();
    assert!(
        inproc_cpu < 50_000_000,
        "in-process task charged {inproc_cpu} ns"
    );
    assert_eq!(inproc.metrics.network_tx_bytes, Some(0));
}

/// What `/proc` says of a process tree: processes, threads, resident
/// bytes, open descriptors.
#[derive(Debug, Default, PartialEq, Eq)]
struct ProcTree {
    processes: u64,
    threads: u64,
    rss_bytes: u64,
    fds: u64,
}

fn proc_tree(root: u32) -> ProcTree {
    let page = procfs_page();
    let mut tree = ProcTree::default();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        tree.processes += 1;
        tree.threads += fields[17].parse::<u64>().unwrap();
        tree.rss_bytes += fields[21].parse::<u64>().unwrap() * page;
        tree.fds += std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let children = task.path().join("children");
            let listed = std::fs::read_to_string(children).unwrap_or_default();
            queue.extend(listed.split_whitespace().map(|c| c.parse::<u32>().unwrap()));
        }
    }
    tree
}

fn procfs_page() -> u64 {
    // SAFETY: plain query.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Item 4: an idle tree, attached, shows whole in its first message:
/// every process, thread, resident page and descriptor, as `/proc` counts
/// them, although none of its threads has run since.
#[test]
fn an_idle_tree_is_whole_in_its_first_message() {
    let Some(_serial) = kernel_test() else { return };
    let script = format!(
        "sleep 60 & sleep 60 & sleep 60 | {} workload threads --threads 3 --after-ms 0 \
         --wait --report /dev/null >/dev/null; wait",
        propmon_bin().display()
    );
    let tree = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let root = tree.id();
    // The tree is complete once the workload has its three threads.
    let mut before = ProcTree::default();
    for _ in 0..100 {
        before = proc_tree(root);
        if before.threads == 8 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((before.processes, before.threads), (5, 8), "{before:?}");
    let mut command = quiet_agent();
    command.arg("--attach").arg(format!("idle-tree={root}"));
    let mut live = Live::start(command);
    let first = live.until(Duration::from_secs(10), |m| m.task_id == "idle-tree");
    let after = proc_tree(root);
    end(tree);
    live.terminate();
    assert_eq!(first.seq, 1);
    let metrics = &first.metrics;
    assert_eq!(metrics.process_count, after.processes, "{first:?}");
    assert_eq!(metrics.thread_count, Some(after.threads), "{first:?}");
    assert_eq!(metrics.file_descriptor_count, Some(after.fds), "{first:?}");
    // RSS is read as /proc/<pid>/stat does; idle processes do not move it.
    let memory = metrics.memory_bytes.unwrap();
    assert!(
        memory.abs_diff(after.rss_bytes) <= 64 * 1024,
        "{memory} vs /proc {}",
        after.rss_bytes
    );
}

/// Item 5: a process belongs to one task. Attaching it again is refused,
/// naming its task; attaching its parent leaves it to its task.
#[test]
fn a_process_belongs_to_one_task() {
    let Some(_serial) = kernel_test() else { return };
    let parent = Command::new("sh")
        .args(["-c", "sleep 60; :"])
        .spawn()
        .unwrap();
    let parent_pid = parent.id();
    let mut child_pid = None;
    for _ in 0..100 {
        let listed =
            std::fs::read_to_string(format!("/proc/{parent_pid}/task/{parent_pid}/children"))
                .unwrap_or_default();
        child_pid = listed
            .split_whitespace()
            .next()
            .and_then(|c| c.parse::<u32>().ok());
        if child_pid.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let child_pid = child_pid.expect("sleep started");
    let mut command = quiet_agent();
    command
        .arg("--attach")
        .arg(format!("first={child_pid}"))
        .arg("--attach")
        .arg(format!("second={child_pid}"))
        .arg("--attach")
        .arg(format!("parent={parent_pid}"));
    let mut live = Live::start(command);
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        let message = live.until(Duration::from_secs(10), |_| true);
        seen.insert(message.task_id.clone(), message);
    }
    end(parent);
    let run = live.terminate();
    assert!(
        run.messages.iter().all(|m| m.task_id != "second"),
        "{seen:?}"
    );
    let refusal = format!("PID {child_pid} already belongs to task first");
    assert!(run.stderr.contains(&refusal), "{}", run.stderr);
    assert_eq!(seen["first"].metrics.process_count, 1);
    assert_eq!(
        seen["parent"].metrics.process_count, 1,
        "the sleep stays in its task"
    );
}

/// Item 6: with the proplet known, only its descendants can claim a task,
/// and only with the module's exact file name: an impostor's exec of the
/// same module, and `.wasm.log` or `.wasm-backup` names, are not the task.
#[test]
fn only_the_proplets_descendants_exec_a_task_exactly() {
    let Some(_serial) = kernel_test() else { return };
    let script = "while read module; do sh -c 'sleep 0.3' \"$module\"; done";
    let mut proplet = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = proplet.id().to_string();
    let broker = Broker::start(None);
    // A long grace: the task must not be taken for an in-process one while
    // the impostors try.
    let mut live = propeller(
        &broker,
        &["--proplet-pid", &pid, "--discovery-grace", "60s"],
    );
    live.wait_for_log("proplet process", 1, Duration::from_secs(10));
    start(&broker, "claimed", "intensive");
    live.wait_for_log(
        "task claimed: waiting for its process",
        1,
        Duration::from_secs(10),
    );
    // An impostor, not a descendant of the proplet, with the exact name.
    let impostor = Command::new("sh")
        .args(["-c", "sleep 0.3", "/tmp/proplet_claimed.wasm"])
        .status()
        .unwrap();
    assert!(impostor.success());
    let input = proplet.stdin.as_mut().unwrap();
    for near_miss in [
        "/tmp/proplet_claimed.wasm.log",
        "/tmp/proplet_claimed.wasm-backup",
    ] {
        writeln!(input, "{near_miss}").unwrap();
    }
    thread::sleep(Duration::from_secs(2));
    assert!(
        live.try_until(Duration::from_millis(100), |m| m.task_id == "claimed")
            .is_err(),
        "an impostor or a near miss was taken for the task"
    );
    writeln!(input, "/tmp/proplet_claimed.wasm").unwrap();
    let last = live.until(Duration::from_secs(10), |m| {
        m.task_id == "claimed" && m.is_final
    });
    drop(proplet.stdin.take());
    assert!(proplet.wait().unwrap().success());
    let run = stop(live);
    // The module process (sh) and the sleep it runs: nothing else.
    assert!(last.metrics.processes_started <= Some(2), "{last:?}");
    assert!(
        run.stderr
            .contains("does not descend from the proplet: refused"),
        "{}",
        run.stderr
    );
}

/// Item 7: a task whose process never comes ends after the discovery
/// timeout, with a final message that says so.
#[test]
fn a_task_whose_process_never_comes_ends_saying_so() {
    let Some(_serial) = kernel_test() else { return };
    let broker = Broker::start(None);
    let mut live = propeller(&broker, &["--discovery-timeout", "1s"]);
    start(&broker, "ghost", "intensive");
    let last = live.until(Duration::from_secs(10), |m| m.task_id == "ghost");
    let run = stop(live);
    assert!(last.is_final && last.seq == 1, "{last:?}");
    assert_eq!(last.end_reason, Some(EndReason::NotFound));
    assert!(
        run.stderr.contains("no process exec'd its module"),
        "{}",
        run.stderr
    );
}

/// Item 8: the agent is killed (SIGKILL) while a task's threads burn CPU;
/// a new agent with the same --state-dir takes the task up, its messages
/// numbered on, and its final CPU is the process's own within 1%.
#[test]
fn a_killed_agent_is_resumed_without_losing_counts() {
    let Some(_serial) = kernel_test() else { return };
    let state_dir = scratch("state");
    let state = state_dir.to_str().unwrap().to_owned();
    let mut work = PausedThreads::start(2, 200, 2500);
    let mut first = quiet_agent();
    first
        .args(["--state-dir", &state, "--attach"])
        .arg(format!("resumed={}", work.pid()));
    let mut first = Live::start(first);
    first.until(Duration::from_secs(10), |m| m.task_id == "resumed");
    work.resume();
    first.until(Duration::from_secs(10), |m| m.seq >= 2);
    kill(Pid::from_raw(first.pid() as i32), Signal::SIGKILL).unwrap();
    let first = first.finish(Duration::from_secs(10));
    let last_seq = first.messages.iter().map(|m| m.seq).max().unwrap();

    let mut second = quiet_agent();
    second.args(["--state-dir", &state]);
    let mut second = Live::start(second);
    let last = second.until(Duration::from_secs(20), |m| {
        m.task_id == "resumed" && m.is_final
    });
    let truth = work.finish();
    let second = second.terminate();
    let forget = Command::new(propmon_bin())
        .args(["forget-state", "--state-dir", &state])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&state_dir);
    assert!(
        forget.status.success(),
        "{}",
        String::from_utf8_lossy(&forget.stderr)
    );
    assert!(
        second.stderr.contains("resumed 1 tasks"),
        "{}",
        second.stderr
    );

    let seqs: Vec<u64> = second.messages.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (last_seq + 1..=last.seq).collect();
    assert_eq!(seqs, expected, "numbered on from {last_seq}");
    let cpu = last.metrics.cpu_time_ns.unwrap();
    assert_close("CPU across the restart", cpu, truth.after_pause(), 0.01);
}
