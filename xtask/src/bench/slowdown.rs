//! Workload slowdown: each load alone, under propmon (eBPF and sysinfo
//! backends, intensive profile) and under the bpftrace peers, interleaved
//! round by round; the ratio is taken within a round. The programs'
//! run counters during the load give the cost per kernel event.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    Backend,
    bpf::{HeldPrograms, Programs, difference},
    peer::{self, Bpftrace, Peer},
    run::{Context, Spread, Timing, read_json},
};

/// One load's figures.
#[derive(Debug, Serialize)]
pub struct LoadResult {
    pub load: String,
    /// What one operation is.
    pub unit: String,
    pub rounds: usize,
    /// Time per operation without an agent, median of the rounds, seconds.
    pub baseline_seconds_per_operation: f64,
    /// Operations per second without an agent, median of the rounds.
    pub baseline_ops_per_second: f64,
    /// Per variant (by key): time per operation under it over time per
    /// operation alone, per round: median and spread.
    pub ratios: BTreeMap<String, Spread>,
    /// Program runs during the load, per variant that loads programs
    /// (last round).
    pub programs: BTreeMap<String, ProgramRun>,
}

/// The run counters of a variant's programs, and how long the load ran.
#[derive(Debug, Serialize)]
pub struct ProgramRun {
    pub seconds: f64,
    pub programs: Programs,
}

/// What runs beside the load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    Alone,
    /// `propmon run --backend B --profile intensive -- LOAD`.
    Propmon(Backend),
    /// A bpftrace process started before the load and stopped after it.
    Bpftrace(Peer),
}

impl Variant {
    pub const ALL: [Variant; 7] = [
        Variant::Alone,
        Variant::Propmon(Backend::Ebpf),
        Variant::Propmon(Backend::Sysinfo),
        Variant::Bpftrace(Peer::Cpu),
        Variant::Bpftrace(Peer::Network),
        Variant::Bpftrace(Peer::CpuNetwork),
        Variant::Bpftrace(Peer::Empty),
    ];

    pub fn key(self) -> &'static str {
        match self {
            Variant::Alone => "alone",
            Variant::Propmon(backend) => backend.name(),
            Variant::Bpftrace(peer) => peer.key(),
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Variant::Alone => "alone",
            Variant::Propmon(Backend::Ebpf) => "propmon eBPF",
            Variant::Propmon(Backend::Sysinfo) => "propmon sysinfo",
            Variant::Bpftrace(peer) => peer.title(),
        }
    }
}

/// How a load runs and reports its time.
enum Kind {
    /// `propmon workload ARGS --report FILE`: the load times its own core
    /// loop and writes a [`Timing`].
    Workload(Vec<String>),
    /// `taskset -c 0 perf bench sched pipe -l LOOPS`: both partners on one
    /// CPU, so each round trip is two context switches on that CPU and no
    /// cross-CPU wake-up; perf prints the time per round trip.
    PinnedPipe { loops: u64 },
}

struct Load {
    name: &'static str,
    unit: &'static str,
    kind: Kind,
    /// Rounds the full bench runs at least (a target needs that many).
    min_rounds: usize,
}

/// The pinned pipe's name, which the targets look for.
pub const PINNED_PIPE: &str = "context switches (pinned perf bench sched pipe)";

fn loads(scale: f64) -> Vec<Load> {
    let n = |full: f64| ((full * scale) as u64).max(1);
    let workload = |args: &[&str], value: String| {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(value);
        Kind::Workload(args)
    };
    let load = |name, unit, kind| Load {
        name,
        unit,
        kind,
        min_rounds: 0,
    };
    vec![
        Load {
            min_rounds: 10,
            ..load(
                PINNED_PIPE,
                "round trip",
                Kind::PinnedPipe {
                    loops: n(500_000.0),
                },
            )
        },
        load(
            "loopback TCP throughput",
            "byte",
            workload(
                &["bench", "tcp-stream", "--seconds"],
                format!("{:.1}", 2.0 * scale.max(0.5)),
            ),
        ),
        load(
            "small UDP sends (64 B)",
            "datagram",
            workload(&["bench", "udp-sends", "--count"], n(200_000.0).to_string()),
        ),
        load(
            "short TCP connections (loopback)",
            "connection",
            workload(
                &["bench", "tcp-connections", "--count"],
                n(10_000.0).to_string(),
            ),
        ),
        load(
            "synchronous 4 KiB disk writes",
            "write",
            workload(&["bench", "sync-writes", "--count"], n(2_000.0).to_string()),
        ),
        load(
            "fork + exec of short processes",
            "process",
            workload(&["bench", "spawn", "--count"], n(500.0).to_string()),
        ),
    ]
}

impl Load {
    /// The command line of the load alone; `report` is where a workload
    /// writes its timing.
    fn argv(&self, context: &Context, report: &Path) -> Vec<OsString> {
        match &self.kind {
            Kind::Workload(args) => {
                let mut argv = vec![context.propmon.clone().into_os_string()];
                argv.push("workload".into());
                argv.extend(args.iter().map(OsString::from));
                argv.extend(["--report".into(), report.as_os_str().to_owned()]);
                argv
            }
            Kind::PinnedPipe { loops } => {
                let args = ["taskset", "-c", "0", "perf", "bench", "sched", "pipe", "-l"];
                let mut argv: Vec<OsString> = args.iter().map(OsString::from).collect();
                argv.push(loops.to_string().into());
                argv
            }
        }
    }

    /// The load's timing, from its report or its output.
    fn timing(&self, output: &Output, report: &Path) -> anyhow::Result<Timing> {
        match self.kind {
            Kind::Workload(_) => read_json(report),
            Kind::PinnedPipe { loops } => perf_timing(output, loops),
        }
    }
}

/// perf's "N usecs/op" line (on stdout alone, on stderr under `propmon
/// run`, which passes the command's stdout to its stderr); one operation
/// is one round trip. More digits than its "Total time" line.
fn perf_timing(output: &Output, loops: u64) -> anyhow::Result<Timing> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let usecs = stdout
        .lines()
        .chain(stderr.lines())
        .find_map(|line| {
            line.trim()
                .strip_suffix("usecs/op")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no usecs/op in perf's output: {stdout}{stderr}"))?;
    Ok(Timing {
        seconds: usecs * loops as f64 / 1e6,
        operations: loops,
        ..Timing::default()
    })
}

/// `quick`: the rounds asked for, even below a load's minimum.
pub fn run(
    context: &Context,
    rounds: usize,
    scale: f64,
    quick: bool,
) -> anyhow::Result<Vec<LoadResult>> {
    peer::ensure_tracefs()?;
    let mut results = Vec::new();
    for load in loads(scale) {
        let rounds = if quick {
            rounds
        } else {
            rounds.max(load.min_rounds)
        };
        eprintln!("bench:   {} ({rounds} rounds)", load.name);
        results.push(run_load(context, &load, rounds)?);
    }
    Ok(results)
}

fn run_load(context: &Context, load: &Load, rounds: usize) -> anyhow::Result<LoadResult> {
    let variants = Variant::ALL;
    let mut ratios: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut baseline = Vec::new();
    let mut programs = BTreeMap::new();
    for round in 0..rounds {
        // Rotate the order so that no variant always runs first.
        let mut per_op = [0.0; Variant::ALL.len()];
        for offset in 0..variants.len() {
            let index = (round + offset) % variants.len();
            let (timing, run) = measure(context, load, variants[index])?;
            if let Some(run) = run {
                programs.insert(variants[index].key().to_owned(), run);
            }
            per_op[index] = timing.seconds / timing.operations.max(1) as f64;
        }
        let alone = per_op[0];
        baseline.push(alone);
        for (variant, time) in variants.iter().zip(per_op).skip(1) {
            ratios
                .entry(variant.key().to_owned())
                .or_default()
                .push(time / alone);
        }
    }
    let baseline = Spread::of(&baseline).median;
    Ok(LoadResult {
        load: load.name.to_owned(),
        unit: load.unit.to_owned(),
        rounds,
        baseline_seconds_per_operation: baseline,
        baseline_ops_per_second: 1.0 / baseline.max(f64::MIN_POSITIVE),
        ratios: ratios
            .into_iter()
            .map(|(key, values)| (key, Spread::of(&values)))
            .collect(),
        programs,
    })
}

/// The program propmon loads last (after every hook): once a propmon
/// holds it, all its programs are there to be held.
const PROPMON_LAST_PROGRAM: &str = "sampling_pass";

fn measure(
    context: &Context,
    load: &Load,
    variant: Variant,
) -> anyhow::Result<(Timing, Option<ProgramRun>)> {
    let report = context.scratch("load.json");
    let _ = std::fs::remove_file(&report);
    let argv = load.argv(context, &report);
    match variant {
        Variant::Alone => {
            let output = finish(spawn(command(&argv))?)?;
            Ok((load.timing(&output, &report)?, None))
        }
        Variant::Propmon(Backend::Sysinfo) => {
            let child = spawn(context.under_propmon(Backend::Sysinfo, &argv))?;
            Ok((load.timing(&finish(child)?, &report)?, None))
        }
        Variant::Propmon(Backend::Ebpf) => {
            let child = spawn(context.under_propmon(Backend::Ebpf, &argv))?;
            let (child, held) = hold_propmon_programs(child)?;
            let timing = load.timing(&finish(child)?, &report)?;
            let run = ProgramRun {
                seconds: timing.seconds,
                programs: held.counters(),
            };
            Ok((timing, Some(run)))
        }
        Variant::Bpftrace(peer) => {
            let tracer = Bpftrace::start(peer, &context.scratch("bpftrace.out"))?;
            let before = tracer.counters();
            let output = finish(spawn(command(&argv))?)?;
            let after = tracer.counters();
            tracer.stop()?;
            let timing = load.timing(&output, &report)?;
            let run = ProgramRun {
                seconds: timing.seconds,
                programs: difference(&after, &before),
            };
            Ok((timing, Some(run)))
        }
    }
}

/// Holds a `propmon run`'s programs, so that their counters can be read
/// after it exits; kills it if that fails.
fn hold_propmon_programs(mut child: Child) -> anyhow::Result<(Child, HeldPrograms)> {
    match HeldPrograms::wait_for(child.id(), PROPMON_LAST_PROGRAM, Duration::from_secs(30)) {
        Ok(held) => Ok((child, held)),
        Err(err) => {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            Err(err.context(String::from_utf8_lossy(&output.stderr).into_owned()))
        }
    }
}

fn command(argv: &[OsString]) -> Command {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

fn spawn(mut command: Command) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))
}

/// Waits for the load (or the propmon running it); its output on success.
fn finish(child: Child) -> anyhow::Result<Output> {
    let output = child.wait_with_output().context("waiting for the load")?;
    if !output.status.success() {
        bail!(
            "the load failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}
