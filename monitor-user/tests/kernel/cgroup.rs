//! Issue 12, item 4: tasks defined by a cgroup (v2). Every process in the
//! cgroup, present or moved in later, or started straight into it, is
//! counted exactly; a process outside it is not; a member moved out stops
//! being counted.

use std::{
    ffi::CString,
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use propmon::collect::cgroup::V2Mount;

use crate::{
    Live, PausedThreads, ThreadsTruth, assert_close, kernel_test, propmon_bin, quiet_agent,
    read_report, scratch,
};

/// A cgroup this test makes under the v2 mount (found in
/// /proc/self/mountinfo) and removes at the end, with a sub-cgroup.
pub(crate) struct TestCgroup {
    mount: PathBuf,
    dir: PathBuf,
    /// Its path relative to the mount, as `--attach-cgroup` takes it.
    pub(crate) relative: String,
}

impl TestCgroup {
    pub(crate) fn create(name: &str) -> Self {
        let mount = V2Mount::find()
            .expect("a cgroup v2 hierarchy in /proc/self/mountinfo")
            .mount_point;
        let relative = format!("propmon-test-{}-{name}", std::process::id());
        let dir = mount.join(&relative);
        fs::create_dir(&dir).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        TestCgroup {
            mount,
            dir,
            relative,
        }
    }

    /// Moves process `pid` (all its threads) into `dir`.
    fn move_into(dir: &Path, pid: u32) {
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|err| panic!("moving {pid} into {}: {err}", dir.display()));
    }

    fn sub(&self) -> PathBuf {
        self.dir.join("sub")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in [self.sub(), self.dir.clone()] {
            // A cgroup with processes cannot be removed: they go back to
            // the root first.
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = fs::write(self.mount.join("cgroup.procs"), pid);
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// A process in a sub-cgroup when the agent starts (attached from
/// userspace) and a multithreaded process moved in while it runs (its
/// leader moved by the migration hook, its other threads when next looked
/// at) are counted from then on, to within 1% of what their threads burn
/// after the pause (CLOCK_PROCESS_CPUTIME_ID); a member moved out and a
/// process that never was in the cgroup burn as much, and are not
/// counted. Every process is paused while it moves, so the split is
/// exact.
#[test]
fn a_cgroups_processes_count_exactly_from_their_attach_or_move() {
    let Some(_serial) = kernel_test() else { return };
    let cgroup = TestCgroup::create("moves");
    let mut present = PausedThreads::start(3, 200, 600);
    TestCgroup::move_into(&cgroup.sub(), present.pid());
    let mut leaving = PausedThreads::start(2, 200, 600);
    TestCgroup::move_into(&cgroup.dir, leaving.pid());
    let mut moved_in = PausedThreads::start(3, 200, 600);
    let mut outsider = PausedThreads::start(2, 200, 600);

    let mut agent = quiet_agent();
    agent
        .arg("--attach-cgroup")
        .arg(format!("group={}", cgroup.relative));
    let mut live = Live::start(agent);
    let first = live.until(Duration::from_secs(10), |m| m.task_id == "group");
    assert_eq!(first.metrics.process_count, 2, "{first:?}");
    assert_eq!(first.metrics.thread_count, Some(3 + 1 + 2 + 1), "{first:?}");
    TestCgroup::move_into(&cgroup.sub(), moved_in.pid());
    TestCgroup::move_into(&cgroup.mount, leaving.pid());
    let both = live.until(Duration::from_secs(10), |m| {
        m.task_id == "group" && m.seq > first.seq
    });
    assert_eq!(
        both.metrics.process_count, 2,
        "present and moved in: {both:?}"
    );
    assert_eq!(both.metrics.thread_count, Some(3 + 1 + 3 + 1), "{both:?}");

    for work in [&mut present, &mut leaving, &mut moved_in, &mut outsider] {
        work.resume();
    }
    let present = present.finish();
    let moved_in = moved_in.finish();
    leaving.finish();
    outsider.finish();
    // Exited: the next messages hold their final parts.
    let empty = live.until(Duration::from_secs(15), |m| {
        m.task_id == "group" && m.metrics.process_count == 0
    });
    let last = live.until(Duration::from_secs(10), |m| {
        m.task_id == "group" && m.seq > empty.seq
    });
    let run = live.terminate();
    let end = run
        .messages
        .iter()
        .rfind(|m| m.task_id == "group")
        .expect("the task's final message");
    assert!(end.is_final, "a cgroup's task ends with the agent: {end:?}");
    assert!(
        !run.messages.iter().any(|m| m.task_id == "group"
            && m.is_final
            && m.end_reason != Some(propmon::message::EndReason::AgentStopped)),
        "a cgroup's task outlives its processes"
    );

    let cpu = last.metrics.cpu_time_ns.unwrap();
    let truth = present.after_pause() + moved_in.after_pause();
    assert_close("CPU of the cgroup's processes", cpu, truth, 0.01);
    assert_eq!(last.metrics.processes_started, Some(3), "{last:?}");
    // This host's v2 hierarchy may have no memory controller: the
    // figures are there exactly when the files are.
    let has_memory = cgroup.dir.join("memory.current").exists();
    assert_eq!(last.metrics.container_usage_bytes.is_some(), has_memory);
}

/// A process created straight into the cgroup (`clone3` with
/// `CLONE_INTO_CGROUP`, as systemd starts services) by a process outside
/// every task belongs to the cgroup's task from its first instruction:
/// its whole CPU, to within 1%.
#[test]
fn a_process_started_straight_into_the_cgroup_is_counted_from_its_start() {
    let Some(_serial) = kernel_test() else { return };
    let cgroup = TestCgroup::create("clone3");
    let mut agent = quiet_agent();
    agent
        .arg("--attach-cgroup")
        .arg(format!("svc={}", cgroup.relative));
    let mut live = Live::start(agent);
    let first = live.until(Duration::from_secs(10), |m| m.task_id == "svc");
    assert_eq!(first.metrics.process_count, 0, "an empty cgroup: {first:?}");

    let report = scratch("clone3.json");
    let status = spawn_into_cgroup(
        &cgroup.dir,
        &[
            propmon_bin().to_str().unwrap(),
            "workload",
            "threads",
            "--threads",
            "2",
            "--after-ms",
            "400",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(status, 0, "the workload failed");
    let truth: ThreadsTruth = read_report(&report);
    let empty = live.until(Duration::from_secs(15), |m| {
        m.task_id == "svc" && m.metrics.processes_started == Some(1) && m.metrics.process_count == 0
    });
    let last = live.until(Duration::from_secs(10), |m| {
        m.task_id == "svc" && m.seq > empty.seq
    });
    live.terminate();
    let cpu = last.metrics.cpu_time_ns.unwrap();
    assert_close(
        "CPU from the first instruction",
        cpu,
        truth.cpu_total_ns,
        0.01,
    );
}

/// A cgroup removed and made again at its path (systemd, restarting a
/// service) is another cgroup to the kernel: the agent attaches it at the
/// task's next message, and a process in it counts from then, exactly.
#[test]
fn a_cgroup_made_again_at_its_path_is_followed() {
    let Some(_serial) = kernel_test() else { return };
    let cgroup = TestCgroup::create("remade");
    let mut agent = quiet_agent();
    agent
        .arg("--attach-cgroup")
        .arg(format!("svc={}", cgroup.relative));
    let mut live = Live::start(agent);
    live.until(Duration::from_secs(10), |m| m.task_id == "svc");
    fs::remove_dir(cgroup.sub()).unwrap();
    fs::remove_dir(&cgroup.dir).unwrap();
    fs::create_dir(&cgroup.dir).unwrap();
    fs::create_dir(cgroup.sub()).unwrap();
    let mut work = PausedThreads::start(2, 100, 500);
    TestCgroup::move_into(&cgroup.dir, work.pid());
    live.wait_for_log("was made again", 1, Duration::from_secs(10));
    work.resume();
    let truth = work.finish();
    let empty = live.until(Duration::from_secs(15), |m| {
        m.task_id == "svc" && m.metrics.processes_started == Some(1) && m.metrics.process_count == 0
    });
    let last = live.until(Duration::from_secs(10), |m| {
        m.task_id == "svc" && m.seq > empty.seq
    });
    live.terminate();
    let cpu = last.metrics.cpu_time_ns.unwrap();
    assert_close(
        "CPU in the cgroup made again",
        cpu,
        truth.after_pause(),
        0.01,
    );
}

/// `struct clone_args` (include/uapi/linux/sched.h), up to `cgroup`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (include/uapi/linux/sched.h, Linux 5.7+).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Runs `argv` in a child created in the cgroup `dir`; its exit status.
fn spawn_into_cgroup(dir: &Path, argv: &[&str]) -> i32 {
    let directory = fs::File::open(dir).unwrap();
    let argv: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: directory.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a valid clone_args; the child only execs (or
    // exits), which is all a child of a multithreaded process may do.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::from_ref(&args),
            size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child; argv is NULL-terminated.
        unsafe {
            libc::execv(pointers[0], pointers.as_ptr());
            libc::_exit(127);
        }
    }
    assert!(pid > 0, "clone3: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    libc::WEXITSTATUS(status)
}
