//! The Targets table: what the issues ask of propmon, against what this
//! run measured. A verdict, never an assertion: the bench always succeeds.

use std::fmt::Write as _;

use super::{
    Backend, Results,
    bpf::ProgramStats,
    footprint::FootprintResult,
    report::{FLOOR, percent},
    slowdown::{LoadResult, PINNED_PIPE, Variant},
};

/// Per-event programs that must stay under [`EVENT_NS`] each (the
/// sampling pass is per round, not per event: it counts in the agent's CPU).
const PER_EVENT_PROGRAMS: [&str; 7] = [
    "task_newtask",
    "sched_process_exit",
    "sched_process_free",
    "exec_discovery",
    "sock_send_length",
    "sock_recv_length",
    "inet_sock_set_state",
];
const EVENT_NS: f64 = 50.0;
/// The pinned pipe's target is a median of at least this many rounds.
const PIPE_ROUNDS: usize = 10;

struct Row {
    target: String,
    measured: String,
    verdict: String,
}

/// "met", or "not met" and by how much (`by` formats the excess); "n/a"
/// when the figure is missing.
fn at_most(value: f64, limit: f64, by: impl Fn(f64) -> String) -> String {
    if value.is_nan() {
        "n/a".to_owned()
    } else if value <= limit {
        "**met**".to_owned()
    } else {
        format!("**not met** (by {})", by(value - limit))
    }
}

fn points(excess: f64) -> String {
    format!("{excess:.2} points")
}

pub fn section(out: &mut String, results: &Results) {
    let mut rows = Vec::new();
    slowdown_rows(&mut rows, &results.slowdown);
    footprint_rows(&mut rows, results);
    accuracy_rows(&mut rows, results);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(out, "| target | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            row.target, row.measured, row.verdict
        );
    }
    let _ = writeln!(out);
}

fn slowdown_rows(rows: &mut Vec<Row>, loads: &[LoadResult]) {
    let load = |prefix: &str| loads.iter().find(|l| l.load.starts_with(prefix));
    let ebpf = Backend::Ebpf.name();
    if let Some(pipe) = load(PINNED_PIPE) {
        let ratio = pipe.ratios.get(ebpf).map_or(f64::NAN, |s| s.median);
        let mut verdict = at_most(ratio - 1.0, 0.01, |x| points(x * 100.0));
        if pipe.rounds < PIPE_ROUNDS {
            let _ = write!(verdict, " (only {} rounds)", pipe.rounds);
        }
        rows.push(Row {
            target: format!(
                "pinned sched pipe slowdown ≤ 1% (intensive, median of ≥ {PIPE_ROUNDS} rounds)"
            ),
            measured: format!("{} ({} rounds)", percent(ratio), pipe.rounds),
            verdict,
        });
    }
    if !loads.is_empty() {
        for name in PER_EVENT_PROGRAMS {
            rows.push(per_event_row(loads, name));
        }
    }
    if let Some(tcp) = load("loopback TCP") {
        rows.push(tcp_share_row(tcp));
    }
    for (prefix, limit) in [("small UDP", 0.04), ("synchronous", 0.01)] {
        let Some(l) = load(prefix) else { continue };
        let ratio = l.ratios.get(ebpf).map_or(f64::NAN, |s| s.median);
        rows.push(Row {
            target: format!("{} slowdown ≤ {:.0}% (intensive)", l.load, limit * 100.0),
            measured: percent(ratio),
            verdict: at_most(ratio - 1.0, limit, |x| points(x * 100.0)),
        });
    }
}

/// One program's mean time per run over every load (propmon eBPF runs),
/// and that of an empty program on the same tracepoint, if one ran.
fn per_event_row(loads: &[LoadResult], name: &str) -> Row {
    let target = format!("`{name}` mean time per event ≤ {EVENT_NS:.0} ns");
    let Some((ns, runs)) = mean_over_loads(loads, Variant::Propmon(Backend::Ebpf), name) else {
        return Row {
            target,
            measured: "no runs".to_owned(),
            verdict: "n/a".to_owned(),
        };
    };
    let mut measured = format!("{ns:.0} ns ({runs} runs)");
    if let Some((floor, _)) = mean_over_loads(loads, FLOOR, name) {
        let _ = write!(measured, "; an empty program there: {floor:.0} ns");
    }
    Row {
        target,
        measured,
        verdict: at_most(ns, EVENT_NS, |x| format!("{x:.0} ns")),
    }
}

/// Mean ns per run and runs of program `name` beside `variant`, over
/// every load.
fn mean_over_loads(loads: &[LoadResult], variant: Variant, name: &str) -> Option<(f64, u64)> {
    let mut total = ProgramStats::default();
    for run in loads.iter().filter_map(|l| l.programs.get(variant.key())) {
        if let Some(stats) = run.programs.get(name) {
            total.run_count += stats.run_count;
            total.run_time_ns += stats.run_time_ns;
        }
    }
    Some((total.ns_per_run()?, total.run_count))
}

/// All of our programs' time during the loopback TCP stream, over its
/// duration (start-up and exit of the `propmon run` included).
fn tcp_share_row(tcp: &LoadResult) -> Row {
    let share = tcp
        .programs
        .get(Backend::Ebpf.name())
        .map_or(f64::NAN, |run| {
            let ns: u64 = run.programs.values().map(|s| s.run_time_ns).sum();
            ns as f64 / 1e9 / run.seconds.max(1e-9) * 100.0
        });
    Row {
        target: "loopback TCP stream: our programs' share of one CPU ≤ 0.5%".to_owned(),
        measured: format!("{share:.2}%"),
        verdict: at_most(share, 0.5, points),
    }
}

fn footprint_rows(rows: &mut Vec<Row>, results: &Results) {
    let ebpf: Vec<&FootprintResult> = results
        .footprint
        .iter()
        .filter(|r| r.backend == Backend::Ebpf && !r.mqtt)
        .collect();
    let idle = |test: &dyn Fn(usize) -> bool| {
        ebpf.iter()
            .find(|r| r.untracked_busy_processes == 0 && test(r.tracked_tasks))
    };
    // The largest configuration is 1,000 tasks (fewer with --quick).
    let largest = idle(&|tasks| tasks > 100);
    for (wanted, found, limit) in [
        (1000, largest, 0.3),
        (100, idle(&|tasks| tasks == 100), 0.1),
        (1, idle(&|tasks| tasks == 1), 0.03),
    ] {
        let Some(r) = found else { continue };
        let tasks = if wanted == 1 { "task" } else { "tasks" };
        let mut target = format!("agent CPU ≤ {limit}% of a core, {wanted} idle {tasks} at 1 s");
        if r.tracked_tasks != wanted {
            let _ = write!(target, " (measured with {})", r.tracked_tasks);
        }
        rows.push(Row {
            target,
            measured: format!("{:.3}%", r.cpu_percent),
            verdict: at_most(r.cpu_percent, limit, |x| format!("{x:.3} points")),
        });
    }
    let hundred = idle(&|tasks| tasks == 100);
    let busy = ebpf
        .iter()
        .find(|r| r.tracked_tasks == 100 && r.untracked_busy_processes > 0);
    if let (Some(base), Some(busy)) = (hundred, busy) {
        let growth = busy.cpu_percent - base.cpu_percent;
        rows.push(Row {
            target:
                "agent CPU flat (within 0.2 points) with untracked busy processes beside 100 tasks"
                    .to_owned(),
            measured: format!("{growth:+.3} points with {}", busy.untracked_busy_processes),
            verdict: at_most(growth.abs(), 0.2, |x| format!("{x:.3} points")),
        });
    }
    if let Some(r) = hundred {
        let mb = r.rss_bytes as f64 / 1e6;
        rows.push(Row {
            target: "agent RSS ≤ 15 MB with 100 tasks".to_owned(),
            measured: format!("{mb:.1} MB (own {:.1} MB)", r.anon_rss_bytes as f64 / 1e6),
            verdict: at_most(mb, 15.0, |x| format!("{x:.1} MB")),
        });
    }
    startup_rows(rows, results);
}

fn startup_rows(rows: &mut Vec<Row>, results: &Results) {
    let Some(startup) = &results.startup else {
        return;
    };
    let mb = startup.peak_rss_bytes.median / 1e6;
    rows.push(Row {
        target: "peak RSS at start-up ≤ 20 MB (1 task)".to_owned(),
        measured: format!("{mb:.1} MB"),
        verdict: at_most(mb, 20.0, |x| format!("{x:.1} MB")),
    });
    let ms = startup.attach_seconds.median * 1e3;
    rows.push(Row {
        target: "agent start to programs attached ≤ 300 ms".to_owned(),
        measured: format!("{ms:.0} ms"),
        verdict: at_most(ms, 300.0, |x| format!("{x:.0} ms")),
    });
}

fn accuracy_rows(rows: &mut Vec<Row>, results: &Results) {
    let Some(r) = results
        .accuracy
        .iter()
        .find(|r| r.backend == Some(Backend::Ebpf))
    else {
        return;
    };
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" }.to_owned();
    let exact = |v: Option<f64>| v.is_some_and(|v| v < 0.01);
    rows.push(Row {
        target: "network exact".to_owned(),
        measured: format!("{:.4}%", r.network_error_percent.unwrap_or(f64::NAN)),
        verdict: met(exact(r.network_error_percent)),
    });
    let disk = r
        .disk_read_error_percent
        .unwrap_or(f64::NAN)
        .max(r.disk_write_error_percent.unwrap_or(f64::NAN));
    rows.push(Row {
        target: "disk exact (vs /proc/<pid>/io)".to_owned(),
        measured: format!("{disk:.4}%"),
        verdict: met(disk < 0.01),
    });
    let cpu = r.cpu_error_percent.unwrap_or(f64::NAN);
    rows.push(Row {
        target: "CPU within 1%".to_owned(),
        measured: format!("{cpu:.2}%"),
        verdict: met(cpu <= 1.0),
    });
    let captured = r.storm_processes_captured_percent.unwrap_or(0.0);
    rows.push(Row {
        target: "100% of short-lived processes captured".to_owned(),
        measured: format!("{captured:.1}%"),
        verdict: met(captured >= 99.999),
    });
}
