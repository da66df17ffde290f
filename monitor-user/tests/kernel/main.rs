//! Kernel tests: propmon's programs loaded into the running kernel, its
//! figures compared with the kernel's own accounting.
//!
//! They need root (CAP_BPF + CAP_PERFMON). Without it they print why and
//! skip, except in CI (`CI=true`), where not running them is a failure.
//! Run them one at a time (`cargo xtask test` does): they measure CPU shares
//! on a 2-core machine. A lock serialises them anyway.

mod agent;
mod cgroup;
mod cli;
mod cpu;
mod disk;
mod health;
mod http;
mod lifecycle;
mod mqtt;
mod net;
mod peers;
mod tcp_proxy;
mod top;
mod trust;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use propmon::message::TaskMetricsMessage;

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the test lock if the kernel tests can run here; `None` means skip.
pub fn kernel_test() -> Option<MutexGuard<'static, ()>> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if nix::unistd::geteuid().is_root() {
        return Some(guard);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !in_ci,
        "kernel tests must run in CI, but this is not root: run them as root"
    );
    eprintln!("skipped: kernel tests need root to load eBPF programs");
    None
}

pub fn propmon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_propmon"))
}

/// `propmon` with arguments, stdout piped.
pub fn propmon(args: &[&str]) -> Command {
    let mut command = Command::new(propmon_bin());
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The finished run of a propmon command.
pub struct Finished {
    /// The per-task messages (other lines, e.g. proplet metrics, are in
    /// `stdout_lines` only).
    pub messages: Vec<TaskMetricsMessage>,
    pub stdout_lines: Vec<String>,
    pub stderr: String,
    pub status: ExitStatus,
}

impl Finished {
    /// The final message, after checking the stream's invariants: `seq`
    /// counts 1, 2, 3..., exactly the last message is final, and every
    /// message has the same fields (issue 10, item 14: the final message
    /// too, with 0 for the counts of processes that are gone).
    pub fn final_message(&self) -> &TaskMetricsMessage {
        assert!(
            !self.messages.is_empty(),
            "no messages; stderr:\n{}",
            self.stderr
        );
        let shape = metric_fields(&self.messages[0]);
        for (index, message) in self.messages.iter().enumerate() {
            assert_eq!(message.seq, index as u64 + 1, "seq of message {index}");
            let is_last = index + 1 == self.messages.len();
            assert_eq!(message.is_final, is_last, "final flag of message {index}");
            assert_eq!(metric_fields(message), shape, "fields of message {index}");
        }
        self.messages.last().unwrap()
    }
}

/// The names of the figures in a message's `metrics`.
fn metric_fields(message: &TaskMetricsMessage) -> Vec<String> {
    let metrics = serde_json::to_value(&message.metrics).unwrap();
    metrics.as_object().unwrap().keys().cloned().collect()
}

/// A running propmon whose messages are read as they arrive.
pub struct Live {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<()>>,
    /// stderr so far, line by line.
    log: Arc<Mutex<Vec<String>>>,
    pub messages: Vec<TaskMetricsMessage>,
    stdout_lines: Vec<String>,
}

impl Live {
    pub fn start(mut command: Command) -> Self {
        let mut child = command.spawn().expect("start propmon");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = Some(thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        }));
        Live {
            child,
            lines,
            stderr,
            log,
            messages: Vec::new(),
            stdout_lines: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stderr lines so far that contain `fragment`.
    pub fn log_lines(&self, fragment: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains(fragment))
            .cloned()
            .collect()
    }

    /// Waits until stderr has had `count` lines containing `fragment`.
    pub fn wait_for_log(&self, fragment: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_lines(fragment).len() < count {
            if Instant::now() > deadline {
                let log = self.log.lock().unwrap().join("\n");
                panic!("no {count} log lines with {fragment:?} within {timeout:?}; stderr:\n{log}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads messages until one satisfies `wanted`, and returns it.
    pub fn until(
        &mut self,
        timeout: Duration,
        wanted: impl FnMut(&TaskMetricsMessage) -> bool,
    ) -> TaskMetricsMessage {
        match self.try_until(timeout, wanted) {
            Ok(message) => message,
            Err(err) => {
                let _ = self.child.kill();
                panic!(
                    "no wanted message within {timeout:?} ({err}); got {:#?}",
                    self.messages
                );
            }
        }
    }

    /// [`Live::until`], giving up without a panic after `timeout`.
    pub fn try_until(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&TaskMetricsMessage) -> bool,
    ) -> Result<TaskMetricsMessage, mpsc::RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left)?;
            let Some(message) = self.take_line(line) else {
                continue;
            };
            if wanted(&message) {
                return Ok(message);
            }
        }
    }

    /// Waits for propmon to exit (killing it after `timeout`) and collects
    /// the rest of its output.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let status = wait_with_deadline(&mut self.child, timeout);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.take_line(line);
        }
        if let Some(reader) = self.stderr.take() {
            reader.join().unwrap();
        }
        let stderr = self.log.lock().unwrap().join("\n");
        Finished {
            messages: std::mem::take(&mut self.messages),
            stdout_lines: std::mem::take(&mut self.stdout_lines),
            stderr,
            status,
        }
    }

    /// Keeps a stdout line; returns it parsed if it is a task message.
    fn take_line(&mut self, line: String) -> Option<TaskMetricsMessage> {
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("stdout line is not JSON {line:?}: {err}"));
        self.stdout_lines.push(line);
        value.get("task_id")?;
        let message: TaskMetricsMessage =
            serde_json::from_value(value).unwrap_or_else(|err| panic!("bad task message: {err}"));
        self.messages.push(message.clone());
        Some(message)
    }
}

impl Live {
    /// SIGTERM, then the rest of the output.
    pub fn terminate(self) -> Finished {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.finish(Duration::from_secs(10))
    }
}

/// A failed test must not leave its agent running (its programs would
/// stay loaded and disturb the tests that follow).
impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs propmon to completion (killed after `timeout`).
pub fn run_to_end(command: Command, timeout: Duration) -> Finished {
    Live::start(command).finish(timeout)
}

pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("propmon did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Messages from JSON lines.
pub fn parse_lines(stdout: &str) -> Vec<TaskMetricsMessage> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
        .collect()
}

/// Idle processes for an agent to attach to; killed on drop.
pub struct Sleepers(Vec<Child>);

impl Sleepers {
    pub fn start(count: usize, seconds: u32) -> Self {
        Sleepers(
            (0..count)
                .map(|_| {
                    Command::new("sleep")
                        .arg(seconds.to_string())
                        .spawn()
                        .expect("sleep")
                })
                .collect(),
        )
    }

    /// `--attach {prefix}-{index}=PID` for each of them.
    pub fn attach_args(&self, prefix: &str) -> Vec<String> {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(index, child)| {
                [
                    "--attach".to_owned(),
                    format!("{prefix}-{index}={}", child.id()),
                ]
            })
            .collect()
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `threads` workload, paused between its two phases: its threads ran
/// before, and burn an exact amount of CPU each once resumed.
pub struct PausedThreads {
    child: Child,
    report: PathBuf,
}

/// What the `threads` workload measured of itself (CLOCK_PROCESS_CPUTIME_ID).
#[derive(Debug, serde::Deserialize)]
pub struct ThreadsTruth {
    pub cpu_before_ns: u64,
    pub cpu_total_ns: u64,
}

impl ThreadsTruth {
    /// CPU burned after the pause.
    pub fn after_pause(&self) -> u64 {
        self.cpu_total_ns - self.cpu_before_ns
    }
}

impl PausedThreads {
    pub fn start(threads: u32, before_ms: u64, after_ms: u64) -> Self {
        // Numbered: a test may run several of the same shape at once.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let report = scratch(&format!(
            "threads-{threads}-{before_ms}-{after_ms}-{number}.json"
        ));
        let mut child = Command::new(propmon_bin())
            .args(["workload", "threads", "--wait"])
            .args(["--threads", &threads.to_string()])
            .args(["--before-ms", &before_ms.to_string()])
            .args(["--after-ms", &after_ms.to_string()])
            .arg("--report")
            .arg(&report)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert_eq!(said.trim(), "waiting");
        PausedThreads { child, report }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn resume(&mut self) {
        use std::io::Write as _;
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }

    pub fn finish(mut self) -> ThreadsTruth {
        assert!(self.child.wait().unwrap().success());
        read_report(&self.report)
    }
}

/// Reads (and removes) a workload's JSON report.
pub fn read_report<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> T {
    let text = std::fs::read_to_string(path).unwrap();
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).unwrap()
}

/// `measured` is within `tolerance` (a fraction) of `truth`.
pub fn assert_close(what: &str, measured: u64, truth: u64, tolerance: f64) {
    let error = measured.abs_diff(truth) as f64 / truth as f64;
    assert!(
        error < tolerance,
        "{what}: propmon {measured} vs the kernel's {truth}: {:.2}% off",
        error * 100.0
    );
}

/// `propmon agent` on the intensive profile, without proplet-level messages.
pub fn quiet_agent() -> Command {
    propmon(&[
        "agent",
        "--enable-monitoring",
        "false",
        "--profile",
        "intensive",
    ])
}

/// A scratch file path unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("propmon-test-{}-{name}", std::process::id()))
}
