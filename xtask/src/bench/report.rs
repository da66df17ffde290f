//! The Markdown report; the targets are in `targets`.

use std::{collections::BTreeSet, fmt::Write as _, process::Command};

use serde::Serialize;

use super::{
    Backend, Results,
    footprint::FootprintResult,
    peer::Peer,
    slowdown::{LoadResult, ProgramRun, Variant},
    startup::StartupResult,
    targets,
};

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            kernel: command_line("uname", &["-sr"]),
            cpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .unwrap_or("unknown")
                .trim()
                .to_owned(),
            memory_bytes: meminfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("MemTotal:")?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
                * 1024,
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn now_rfc3339() -> String {
    command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

pub fn percent(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.machine;
    let _ = writeln!(out, "# propmon benchmark report\n");
    let _ = writeln!(
        out,
        "{} · {} · {} CPUs ({}) · {:.1} GiB RAM · run took {:.0} s\n",
        results.date,
        m.kernel,
        m.cpus,
        m.cpu_model,
        m.memory_bytes as f64 / (1u64 << 30) as f64,
        results.seconds
    );
    if !results.slowdown.is_empty() {
        slowdown_section(&mut out, &results.slowdown);
    }
    if !results.footprint.is_empty() {
        footprint_section(&mut out, &results.footprint, results.map_memory_bytes);
    }
    if let Some(startup) = &results.startup {
        startup_section(&mut out, startup);
    }
    if !results.accuracy.is_empty() {
        accuracy_section(&mut out, results);
    }
    targets::section(&mut out, results);
    out
}

fn slowdown_section(out: &mut String, loads: &[LoadResult]) {
    let _ = writeln!(out, "## Workload slowdown\n");
    let _ = writeln!(
        out,
        "Time per operation beside each tracer over time per operation alone, in the same \
         round; median [min, max] over the rounds. propmon tracks the load with the intensive \
         profile (everything collected); the bpftrace peers are the one-liners of BENCHMARKS.md.\n"
    );
    let tracers = &Variant::ALL[1..];
    let mut header = "| load | rounds | alone |".to_owned();
    for variant in tracers {
        let _ = write!(header, " {} |", variant.title());
    }
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "|---|---|---|{}", "---|".repeat(tracers.len()));
    for load in loads {
        let mut row = format!(
            "| {} | {} | {} per {} ({:.0}/s) |",
            load.load,
            load.rounds,
            duration(load.baseline_seconds_per_operation),
            load.unit,
            load.baseline_ops_per_second,
        );
        for variant in tracers {
            let cell = load
                .ratios
                .get(variant.key())
                .map_or("n/a".to_owned(), |spread| {
                    format!(
                        "{} [{}, {}]",
                        percent(spread.median),
                        percent(spread.min),
                        percent(spread.max)
                    )
                });
            let _ = write!(row, " {cell} |");
        }
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(out);
    per_event_section(out, loads);
}

/// The tracers whose programs the per-event table puts side by side.
const SIDE_BY_SIDE: [Variant; 2] = [
    Variant::Propmon(Backend::Ebpf),
    Variant::Bpftrace(Peer::CpuNetwork),
];

/// Empty programs on the same tracepoints: the floor of a run's cost.
pub(super) const FLOOR: Variant = Variant::Bpftrace(Peer::Empty);

fn per_event_section(out: &mut String, loads: &[LoadResult]) {
    let _ = writeln!(out, "## Cost per kernel event\n");
    let _ = writeln!(
        out,
        "Program runs during each load (run-time statistics on, `BPF_ENABLE_STATS`), propmon eBPF beside \
         bpftrace (CPU + network): runs per second of load, mean ns per run, and the share of \
         one CPU the program took. The last column is the floor: the mean of an empty program \
         on the same tracepoint in the same run (bpftrace, nothing in its body), which is the \
         cost of the statistics' own clock reads and of calling a program at all. \
         `sampling_pass` runs once per thread of the host per round, inside the agent's read(): \
         its cost is also in the agent's CPU (footprint).\n"
    );
    let _ = writeln!(
        out,
        "| load | program | propmon runs/s | propmon ns/run | propmon CPU | bpftrace runs/s | bpftrace ns/run | bpftrace CPU | empty program ns/run |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for load in loads {
        let runs: Vec<Option<&ProgramRun>> = SIDE_BY_SIDE
            .iter()
            .map(|variant| load.programs.get(variant.key()))
            .collect();
        let floor = load.programs.get(FLOOR.key());
        let names: BTreeSet<&String> = runs
            .iter()
            .flatten()
            .flat_map(|run| run.programs.keys())
            .collect();
        for name in names {
            let cells: Vec<Option<String>> = runs
                .iter()
                .map(|run| run.and_then(|run| event_cells(run, name)))
                .collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            let dash = "– | – | –".to_owned();
            let floor = floor
                .and_then(|run| run.programs.get(name.as_str()))
                .and_then(|stats| stats.ns_per_run())
                .map_or("–".to_owned(), |ns| format!("{ns:.0}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {floor} |",
                load.load,
                name,
                cells[0].clone().unwrap_or_else(|| dash.clone()),
                cells[1].clone().unwrap_or(dash),
            );
        }
    }
    let _ = writeln!(out);
}

/// Runs/s, ns/run and CPU share of one program, if it ran.
fn event_cells(run: &ProgramRun, name: &str) -> Option<String> {
    let stats = run.programs.get(name)?;
    let ns = stats.ns_per_run()?;
    let seconds = run.seconds.max(1e-9);
    Some(format!(
        "{:.0} | {:.0} | {:.2}%",
        stats.run_count as f64 / seconds,
        ns,
        stats.run_time_ns as f64 / 1e9 / seconds * 100.0
    ))
}

/// A time per operation, in a unit that keeps three digits or so.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s if s >= 1e-6 => format!("{:.2} us", s * 1e6),
        s => format!("{:.3} ns", s * 1e9),
    }
}

fn footprint_section(out: &mut String, results: &[FootprintResult], map_memory: Option<u64>) {
    let _ = writeln!(out, "## Agent footprint (1 s interval)\n");
    let _ = writeln!(
        out,
        "Agent CPU from its CPU-time clock over the window. Memory at the end of the \
         window: the agent's own (RssAnon), all resident pages (VmRSS, which also counts \
         shared pages of the binary and libraries), and the peak since start-up (VmHWM, \
         at start-up while the programs load, with few tasks; with 1,000 the working set). \
         Output: JSON lines to /dev/null, and with MQTT every task message also published \
         at QoS 1 to a local mosquitto (the broker's own CPU not counted).\n"
    );
    let _ = writeln!(
        out,
        "| backend | tracked tasks | untracked busy processes | output | agent CPU (% of one core) | own memory | RSS | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let mb = |bytes: u64| bytes as f64 / 1e6;
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3}% | {:.1} MB | {:.1} MB | {:.1} MB |",
            r.backend.name(),
            r.tracked_tasks,
            r.untracked_busy_processes,
            if r.mqtt { "stdout + MQTT" } else { "stdout" },
            r.cpu_percent,
            mb(r.anon_rss_bytes),
            mb(r.rss_bytes),
            mb(r.peak_rss_bytes)
        );
    }
    if let Some(bytes) = map_memory {
        let _ = writeln!(
            out,
            "\nKernel memory of propmon's maps: {:.1} MB (`memlock` of the agent's map fds, \
             bpftool's `bytes_memlock`).",
            bytes as f64 / 1e6
        );
    }
    let _ = writeln!(out);
}

fn startup_section(out: &mut String, startup: &StartupResult) {
    let _ = writeln!(out, "## Agent start-up (eBPF, 1 task)\n");
    let _ = writeln!(
        out,
        "From spawning `propmon agent --attach` to its log line \"propmon agent started\" \
         (printed once every program is loaded and attached), and the peak resident memory \
         (VmHWM) once it has printed its first message; median [min, max] of {} starts.\n",
        startup.samples
    );
    let (time, peak) = (&startup.attach_seconds, &startup.peak_rss_bytes);
    let _ = writeln!(out, "| time to attached | peak RSS |");
    let _ = writeln!(out, "|---|---|");
    let _ = writeln!(
        out,
        "| {:.0} ms [{:.0}, {:.0}] | {:.1} MB [{:.1}, {:.1}] |\n",
        time.median * 1e3,
        time.min * 1e3,
        time.max * 1e3,
        peak.median / 1e6,
        peak.min / 1e6,
        peak.max / 1e6
    );
}

fn accuracy_section(out: &mut String, results: &Results) {
    let show = |value: Option<f64>| value.map_or("n/a".to_owned(), |v| format!("{v:.2}%"));
    let _ = writeln!(out, "## Accuracy\n");
    let _ = writeln!(
        out,
        "Error against ground truth (getrusage and `/proc/self/io` of the reaped tree, bytes the sockets returned), and what each backend captured of a storm of short-lived processes (5 ms of CPU and 16 KiB written each).\n"
    );
    let _ = writeln!(
        out,
        "| backend | CPU error | disk read error | disk write error | network error | storm CPU captured | storm bytes captured | storm processes captured |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in &results.accuracy {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend.map_or("", Backend::name),
            show(r.cpu_error_percent),
            show(r.disk_read_error_percent),
            show(r.disk_write_error_percent),
            show(r.network_error_percent),
            show(r.storm_cpu_captured_percent),
            show(r.storm_bytes_captured_percent),
            show(r.storm_processes_captured_percent),
        );
    }
    let _ = writeln!(out);
}
