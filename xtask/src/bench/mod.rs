//! `cargo xtask bench`: what propmon costs and how exact it is, measured
//! against baselines in the same run (see BENCHMARKS.md for the method).
//! Nothing here asserts a time: it reports.

mod accuracy;
mod bpf;
mod footprint;
mod peer;
mod report;
mod run;
mod slowdown;
mod startup;
mod targets;

use std::{path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{is_root, workspace_root};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Parts to run (comma-separated): slowdown, footprint, accuracy.
    /// Per-event costs are measured during the slowdown part.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "slowdown,footprint,accuracy"
    )]
    parts: Vec<Part>,
    /// Interleaved rounds of each slowdown comparison (the pinned sched
    /// pipe runs at least 10: its target is a median of 10 rounds).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds each footprint configuration is measured.
    #[arg(long, default_value_t = 15)]
    footprint_seconds: u64,
    /// A short run to check the harness (2 rounds of every load, 5 s
    /// footprints, 3 start-ups, small loads).
    #[arg(long)]
    quick: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Part {
    Slowdown,
    Footprint,
    Accuracy,
}

/// The two backends, as `propmon --backend` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Ebpf,
    Sysinfo,
}

impl Backend {
    pub const BOTH: [Backend; 2] = [Backend::Ebpf, Backend::Sysinfo];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Sysinfo => "sysinfo",
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub date: String,
    pub machine: report::Machine,
    pub slowdown: Vec<slowdown::LoadResult>,
    pub footprint: Vec<footprint::FootprintResult>,
    pub startup: Option<startup::StartupResult>,
    pub map_memory_bytes: Option<u64>,
    pub accuracy: Vec<accuracy::AccuracyResult>,
    pub seconds: f64,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "benchmarks load eBPF programs and set sysctls: run as root (sudo -E cargo xtask bench)"
        );
    }
    crate::build_release()?;
    let started = Instant::now();
    let propmon = workspace_root().join("target/release/propmon");
    let out_dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir).context("creating target/bench")?;
    let scale = if args.quick { 0.2 } else { 1.0 };
    let rounds = if args.quick { 2 } else { args.rounds.max(1) };
    let footprint_seconds = if args.quick {
        5
    } else {
        args.footprint_seconds
    };

    let mut results = Results {
        date: report::now_rfc3339(),
        machine: report::Machine::read(),
        ..Results::default()
    };
    let _stats = bpf::BpfStats::enable()?;
    let context = run::Context::new(propmon, out_dir.clone());
    if args.parts.contains(&Part::Slowdown) {
        eprintln!("bench: slowdown (at least {rounds} interleaved rounds per load)");
        results.slowdown = slowdown::run(&context, rounds, scale, args.quick)?;
    }
    if args.parts.contains(&Part::Footprint) {
        eprintln!("bench: agent footprint ({footprint_seconds} s per configuration)");
        let (footprint, map_memory) = footprint::run(&context, footprint_seconds, args.quick)?;
        results.footprint = footprint;
        results.map_memory_bytes = map_memory;
        let samples = if args.quick { 3 } else { 5 };
        eprintln!("bench: agent start-up ({samples} starts)");
        results.startup = Some(startup::run(&context, samples)?);
    }
    if args.parts.contains(&Part::Accuracy) {
        eprintln!("bench: accuracy");
        results.accuracy = accuracy::run(&context, scale)?;
    }
    results.seconds = started.elapsed().as_secs_f64();

    let json = serde_json::to_string_pretty(&results)?;
    let raw = out_dir.join("results.json");
    std::fs::write(&raw, json).with_context(|| format!("writing {}", raw.display()))?;
    let markdown = report::markdown(&results);
    let report_path: PathBuf = out_dir.join("report.md");
    std::fs::write(&report_path, &markdown)?;
    println!("{markdown}");
    eprintln!(
        "bench: done in {:.0} s; raw figures in {}, report in {}",
        results.seconds,
        raw.display(),
        report_path.display()
    );
    Ok(())
}
