//! Running propmon and its loads, and reading what the kernel says.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
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

    /// `propmon run --backend B --profile intensive -- propmon workload ...`.
    pub fn tracked(&self, backend: Backend, args: &[String]) -> Command {
        let mut argv = vec![self.propmon.clone().into_os_string(), "workload".into()];
        argv.extend(args.iter().map(OsString::from));
        self.under_propmon(backend, &argv)
    }

    /// `propmon run --backend B --profile intensive -- ARGV...`.
    pub fn under_propmon(&self, backend: Backend, argv: &[OsString]) -> Command {
        let mut command = Command::new(&self.propmon);
        command
            .args(["run", "--backend", backend.name()])
            .args(["--profile", "intensive", "--"])
            .args(argv);
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
