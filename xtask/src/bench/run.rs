//! Running propmon and its loads, and reading what the kernel says.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Backend;

pub struct Context {
    pub propmon: PathBuf,
    pub out_dir: PathBuf,
}

impl Context {
    pub fn new(propmon: PathBuf, out_dir: PathBuf) -> Self {
        Context { propmon, out_dir }
    }

    /// `propmon workload ...` (the load alone).
    pub fn workload(&self, args: &[String]) -> Command {
        let mut command = Command::new(&self.propmon);
        command.arg("workload").args(args);
        command
    }

    /// `propmon run --backend B --profile intensive -- propmon workload ...`.
    pub fn tracked(&self, backend: Backend, args: &[String]) -> Command {
        let mut command = Command::new(&self.propmon);
        command
            .args([
                "run",
                "--backend",
                backend.name(),
                "--profile",
                "intensive",
                "--",
            ])
            .arg(&self.propmon)
            .arg("workload")
            .args(args);
        command
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        self.out_dir.join(name)
    }
}

/// Runs a command to completion; returns its stdout (JSON lines).
pub fn output(mut command: Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let output = command
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The final per-task message in propmon's stdout.
pub fn final_message(stdout: &str) -> anyhow::Result<Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|message| message["final"] == true)
        .context("propmon printed no final message")
}

/// A load's own report.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct Timing {
    pub seconds: f64,
    pub operations: u64,
    #[serde(default)]
    pub truth_cpu_ns: Option<u64>,
    #[serde(default)]
    pub truth_write_bytes: Option<u64>,
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `kernel.bpf_stats_enabled=1` while it lives (per-program run time).
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    const SYSCTL: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(Self::SYSCTL)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_owned();
        std::fs::write(Self::SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, &self.previous);
    }
}

/// Per-program totals of one propmon run.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProgramStats {
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// propmon's programs. The kernel keeps 15 bytes of a name; bpftool shows
/// the whole name when BTF has it.
pub const PROGRAMS: [&str; 11] = [
    "task_newtask",
    "sched_process_exit",
    "sched_process_free",
    "exec_discovery",
    "sched_stat_runtime",
    "block_bio_queue",
    "writeback_dirty_folio",
    "sock_send_length",
    "sock_recv_length",
    "tcp_splice_read",
    "unix_stream_splice_read",
];

/// The full name of one of our programs, from the name the kernel shows.
fn our_program(shown: &str) -> Option<&'static str> {
    PROGRAMS
        .into_iter()
        .find(|full| *full == shown || (shown.len() == 15 && full.starts_with(shown)))
}

/// Polls `bpftool prog show` while a propmon runs, keeping the highest
/// counters seen per program (programs vanish when propmon exits).
pub struct StatsPoller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, ProgramStats>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl StatsPoller {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<BTreeMap<String, ProgramStats>>> = Arc::default();
        let (stop_flag, sink) = (stop.clone(), seen.clone());
        let handle = thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                for (name, stats) in read_programs() {
                    let mut seen = sink.lock().expect("stats lock");
                    let entry = seen.entry(name).or_default();
                    if stats.run_count >= entry.run_count {
                        *entry = stats;
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        StatsPoller {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> BTreeMap<String, ProgramStats> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        std::mem::take(&mut *self.seen.lock().expect("stats lock"))
    }
}

/// Our programs currently loaded: name -> counters.
fn read_programs() -> Vec<(String, ProgramStats)> {
    let Ok(output) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return Vec::new();
    };
    let programs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let mut found = Vec::new();
    for program in &programs {
        let Some(name) = program["name"].as_str().and_then(our_program) else {
            continue;
        };
        found.push((
            name.to_owned(),
            ProgramStats {
                run_count: program["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: program["run_time_ns"].as_u64().unwrap_or(0),
            },
        ));
    }
    found
}

/// Kernel memory of propmon's maps (bytes_memlock), while it runs.
pub fn map_memory_bytes() -> Option<u64> {
    let output = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .ok()?;
    let maps: Vec<Value> = serde_json::from_slice(&output.stdout).ok()?;
    let ours = [
        "TRACKED_THREADS",
        "TRACKED_PROCS",
        "TASK_COUNTERS",
        "SPAWN_PENDING",
        "KERNEL_STATS",
        "TASK_CONFIG",
        "ADOPT_PENDING",
        "ADOPT_GATE",
        "TASK_EVENTS",
        "DISCOVER",
        "ARGV_SCRATCH",
    ];
    let total = maps
        .iter()
        .filter(|map| {
            map["name"]
                .as_str()
                .is_some_and(|name| ours.contains(&name))
        })
        .filter_map(|map| map["bytes_memlock"].as_u64())
        .sum();
    Some(total)
}

/// Starts `count` copies of a command, with stdout and stderr discarded.
pub fn start_many(count: usize, make: impl Fn() -> Command) -> anyhow::Result<Vec<Child>> {
    (0..count)
        .map(|_| {
            make()
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a helper process")
        })
        .collect()
}

pub fn kill_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        let _ = child.kill();
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

/// Median and spread (min, max) of some ratios.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        };
        Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}
