//! Kernel tests: propmon's programs loaded into the running kernel, its
//! figures compared with the kernel's own accounting.
//!
//! They need root (CAP_BPF + CAP_PERFMON). Without it they print why and
//! skip, except in CI (`CI=true`), where not running them is a failure.
//! Run them one at a time (`cargo xtask test` does): they measure CPU shares
//! on a 2-core machine. A lock serialises them anyway.

mod agent;
mod cli;
mod cpu;
mod disk;
mod lifecycle;
mod mqtt;
mod net;
mod tcp_proxy;
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

/// A scratch file path unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("propmon-test-{}-{name}", std::process::id()))
}
