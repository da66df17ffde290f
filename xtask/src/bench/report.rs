//! The Markdown report, with the targets of the benchmark issue marked.

use std::{fmt::Write as _, process::Command};

use serde::Serialize;

use super::{Backend, Results, footprint::FootprintResult, slowdown::LoadResult};

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

fn percent(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
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
    if !results.accuracy.is_empty() {
        accuracy_section(&mut out, results);
    }
    targets_section(&mut out, results);
    out
}

fn slowdown_section(out: &mut String, loads: &[LoadResult]) {
    let _ = writeln!(out, "## Workload slowdown\n");
    let _ = writeln!(
        out,
        "Time per operation with the agent tracking the load (intensive profile) over time per \
         operation alone, in the same round; median [min, max] over the rounds.\n"
    );
    let _ = writeln!(out, "| load | alone | eBPF agent | sysinfo agent |");
    let _ = writeln!(out, "|---|---|---|---|");
    for load in loads {
        let _ = writeln!(
            out,
            "| {} | {:.0} {}/s | {} [{}, {}] | {} [{}, {}] |",
            load.load,
            load.baseline_ops_per_second,
            load.unit,
            percent(load.ebpf_ratio.median),
            percent(load.ebpf_ratio.min),
            percent(load.ebpf_ratio.max),
            percent(load.sysinfo_ratio.median),
            percent(load.sysinfo_ratio.min),
            percent(load.sysinfo_ratio.max),
        );
    }
    let _ = writeln!(out, "\n## Cost per kernel event\n");
    let _ = writeln!(
        out,
        "Program runs during each load under the eBPF agent (`kernel.bpf_stats_enabled=1`): \
         events per second of load, mean ns per run, and the share of one CPU the programs took.\n"
    );
    let _ = writeln!(out, "| load | program | events/s | ns/event | CPU share |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for load in loads {
        let seconds = load.ebpf_seconds.max(1e-9);
        for (program, stats) in &load.programs {
            if stats.run_count == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.2}% |",
                load.load,
                program,
                stats.run_count as f64 / seconds,
                stats.run_time_ns as f64 / stats.run_count as f64,
                stats.run_time_ns as f64 / 1e9 / seconds * 100.0
            );
        }
    }
    let _ = writeln!(out);
}

fn footprint_section(out: &mut String, results: &[FootprintResult], map_memory: Option<u64>) {
    let _ = writeln!(out, "## Agent footprint (1 s interval)\n");
    let _ = writeln!(
        out,
        "Agent CPU from its CPU-time clock over the window. Memory at the end of the \
         window: the agent's own (RssAnon), all resident pages (VmRSS, which also counts \
         shared pages of the binary and libraries), and the peak since start-up (VmHWM, \
         reached while parsing the kernel's BTF).\n"
    );
    let _ = writeln!(
        out,
        "| backend | tracked tasks | untracked busy processes | agent CPU (% of one core) | own memory | RSS | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let mb = |bytes: u64| bytes as f64 / 1e6;
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3}% | {:.1} MB | {:.1} MB | {:.1} MB |",
            r.backend.name(),
            r.tracked_tasks,
            r.untracked_busy_processes,
            r.cpu_percent,
            mb(r.anon_rss_bytes),
            mb(r.rss_bytes),
            mb(r.peak_rss_bytes)
        );
    }
    if let Some(bytes) = map_memory {
        let _ = writeln!(
            out,
            "\nKernel memory of propmon's maps: {:.1} MB (bpftool `bytes_memlock`).",
            bytes as f64 / 1e6
        );
    }
    let _ = writeln!(out);
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

fn targets_section(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(out, "| target | measured | verdict |");
    let _ = writeln!(out, "|---|---|---|");
    let load = |name: &str| results.slowdown.iter().find(|l| l.load.starts_with(name));
    for (prefix, limit) in [
        ("context-switch", 0.02),
        ("loopback TCP", 0.01),
        ("synchronous", 0.01),
    ] {
        if let Some(l) = load(prefix) {
            let slowdown = l.ebpf_ratio.median - 1.0;
            let _ = writeln!(
                out,
                "| eBPF slowdown ≤ {:.0}% on {} | {} | {}{} |",
                limit * 100.0,
                l.load,
                percent(l.ebpf_ratio.median),
                verdict(slowdown <= limit),
                if slowdown > limit {
                    format!(" (by {:.1} points)", (slowdown - limit) * 100.0)
                } else {
                    String::new()
                }
            );
        }
    }
    let footprint = |tasks: usize, busy: usize| {
        results.footprint.iter().find(|r| {
            r.backend == Backend::Ebpf
                && r.tracked_tasks == tasks
                && r.untracked_busy_processes == busy
        })
    };
    if let Some(r) = footprint(100, 0) {
        let _ = writeln!(
            out,
            "| agent CPU ≤ 0.5% of a core with 100 tasks | {:.2}% | {} |",
            r.cpu_percent,
            verdict(r.cpu_percent <= 0.5)
        );
        let _ = writeln!(
            out,
            "| agent RSS ≤ 15 MB with 100 tasks | {:.1} MB (own {:.1} MB; peak {:.1} MB at start-up) | {} |",
            r.rss_bytes as f64 / 1e6,
            r.anon_rss_bytes as f64 / 1e6,
            r.peak_rss_bytes as f64 / 1e6,
            verdict(r.rss_bytes <= 15_000_000)
        );
        if let Some(busy) = results.footprint.iter().find(|x| {
            x.backend == Backend::Ebpf && x.tracked_tasks == 100 && x.untracked_busy_processes > 0
        }) {
            let growth = busy.cpu_percent - r.cpu_percent;
            let _ = writeln!(
                out,
                "| agent cost flat in untracked processes (within 0.1 points) | {:+.3} points with {} busy | {} |",
                growth,
                busy.untracked_busy_processes,
                verdict(growth.abs() <= 0.1)
            );
        }
    }
    if let Some(r) = results
        .accuracy
        .iter()
        .find(|r| r.backend == Some(Backend::Ebpf))
    {
        let exact = |v: Option<f64>| v.is_some_and(|v| v < 0.01);
        let _ = writeln!(
            out,
            "| network exact | {:.4}% | {} |",
            r.network_error_percent.unwrap_or(f64::NAN),
            verdict(exact(r.network_error_percent))
        );
        let disk = r
            .disk_read_error_percent
            .unwrap_or(f64::NAN)
            .max(r.disk_write_error_percent.unwrap_or(f64::NAN));
        let _ = writeln!(
            out,
            "| disk exact (vs /proc/<pid>/io) | {disk:.4}% | {} |",
            verdict(disk < 0.01)
        );
        let cpu = r.cpu_error_percent.unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "| CPU within 1% | {cpu:.2}% | {} |",
            verdict(cpu <= 1.0)
        );
        let captured = r.storm_processes_captured_percent.unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| 100% of short-lived processes captured | {captured:.1}% | {} |",
            verdict(captured >= 99.999)
        );
    }
    let _ = writeln!(out);
}
