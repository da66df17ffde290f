//! Workload slowdown: each load alone, under the eBPF agent and under the
//! sysinfo agent (both tracking it with the intensive profile), interleaved
//! round by round; the ratio is taken within a round.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    Backend,
    run::{Context, ProgramStats, Spread, StatsPoller, Timing, output, read_json},
};

/// One load's figures.
#[derive(Debug, Serialize)]
pub struct LoadResult {
    pub load: String,
    /// What one operation is.
    pub unit: String,
    /// Operations per second without an agent, median of the rounds.
    pub baseline_ops_per_second: f64,
    /// Time per operation under the agent over time per operation without,
    /// per round: median and spread.
    pub ebpf_ratio: Spread,
    pub sysinfo_ratio: Spread,
    /// eBPF program runs during the load (last eBPF round), per program.
    pub programs: BTreeMap<String, ProgramStats>,
    /// Seconds the load ran in that round.
    pub ebpf_seconds: f64,
}

struct Load {
    name: &'static str,
    unit: &'static str,
    args: Vec<String>,
}

fn loads(scale: f64) -> Vec<Load> {
    let n = |full: f64| ((full * scale) as u64).max(1).to_string();
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let with = |base: &[&str], value: String| {
        let mut args = strings(base);
        args.push(value);
        args
    };
    vec![
        Load {
            name: "context-switch storm (pipe ping-pong)",
            unit: "round trip",
            args: with(&["bench", "pingpong", "--rounds"], n(200_000.0)),
        },
        Load {
            name: "loopback TCP throughput",
            unit: "byte",
            args: with(
                &["bench", "tcp-stream", "--seconds"],
                format!("{:.1}", 2.0 * scale.max(0.5)),
            ),
        },
        Load {
            name: "small UDP sends (64 B)",
            unit: "datagram",
            args: with(&["bench", "udp-sends", "--count"], n(200_000.0)),
        },
        Load {
            name: "synchronous 4 KiB disk writes",
            unit: "write",
            args: with(&["bench", "sync-writes", "--count"], n(2_000.0)),
        },
        Load {
            name: "fork + exec of short processes",
            unit: "process",
            args: with(&["bench", "spawn", "--count"], n(500.0)),
        },
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Alone,
    With(Backend),
}

pub fn run(context: &Context, rounds: usize, scale: f64) -> anyhow::Result<Vec<LoadResult>> {
    let variants = [
        Variant::Alone,
        Variant::With(Backend::Ebpf),
        Variant::With(Backend::Sysinfo),
    ];
    let mut results = Vec::new();
    for load in loads(scale) {
        eprintln!("bench:   {}", load.name);
        let mut ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut baseline = Vec::new();
        let mut programs = BTreeMap::new();
        let mut ebpf_seconds = 0.0;
        for round in 0..rounds {
            // Rotate the order so that no variant always runs first.
            let mut timings = [None, None, None];
            for offset in 0..variants.len() {
                let index = (round + offset) % variants.len();
                let (timing, stats) = measure(context, &load, variants[index])?;
                if variants[index] == Variant::With(Backend::Ebpf) {
                    programs = stats;
                    ebpf_seconds = timing.seconds;
                }
                timings[index] = Some(timing);
            }
            let per_op = |t: &Option<Timing>| {
                let t = t.as_ref().expect("measured");
                t.seconds / t.operations.max(1) as f64
            };
            let alone = per_op(&timings[0]);
            baseline.push(1.0 / alone);
            ratios
                .entry("ebpf")
                .or_default()
                .push(per_op(&timings[1]) / alone);
            ratios
                .entry("sysinfo")
                .or_default()
                .push(per_op(&timings[2]) / alone);
        }
        results.push(LoadResult {
            load: load.name.to_owned(),
            unit: load.unit.to_owned(),
            baseline_ops_per_second: Spread::of(&baseline).median,
            ebpf_ratio: Spread::of(&ratios["ebpf"]),
            sysinfo_ratio: Spread::of(&ratios["sysinfo"]),
            programs,
            ebpf_seconds,
        });
    }
    Ok(results)
}

fn measure(
    context: &Context,
    load: &Load,
    variant: Variant,
) -> anyhow::Result<(Timing, BTreeMap<String, ProgramStats>)> {
    let report = context.scratch("load.json");
    let _ = std::fs::remove_file(&report);
    let mut args = load.args.clone();
    args.push("--report".to_owned());
    args.push(report.display().to_string());
    let (command, poller) = match variant {
        Variant::Alone => (context.workload(&args), None),
        Variant::With(backend) => (
            context.tracked(backend, &args),
            (backend == Backend::Ebpf).then(StatsPoller::start),
        ),
    };
    output(command)?;
    let stats = poller.map(StatsPoller::finish).unwrap_or_default();
    Ok((read_json(&report)?, stats))
}
