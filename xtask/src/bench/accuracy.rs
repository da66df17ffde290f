//! Accuracy: each backend against the ground truth of the test workloads,
//! and the share of a storm of short-lived processes each one captures.

use serde::{Deserialize, Serialize};

use super::{
    Backend,
    run::{Context, Timing, final_message, output, read_json},
};

#[derive(Debug, Default, Serialize)]
pub struct AccuracyResult {
    pub backend: Option<Backend>,
    /// |measured - truth| / truth, percent; `None`: the backend reports no figure.
    pub cpu_error_percent: Option<f64>,
    pub disk_read_error_percent: Option<f64>,
    pub disk_write_error_percent: Option<f64>,
    /// Largest absolute difference of the read and write figures, bytes.
    pub disk_difference_bytes: Option<u64>,
    pub network_error_percent: Option<f64>,
    /// Of a storm of short-lived processes: measured / truth, percent.
    pub storm_cpu_captured_percent: Option<f64>,
    pub storm_bytes_captured_percent: Option<f64>,
    pub storm_processes_captured_percent: Option<f64>,
    pub storm_processes: u64,
}

#[derive(Deserialize)]
struct CpuTruth {
    cpu_ns: u64,
}

#[derive(Deserialize)]
struct DiskTruth {
    read_bytes: u64,
    write_bytes: u64,
}

#[derive(Deserialize)]
struct NetTally {
    tcp_tx: u64,
    tcp_rx: u64,
    udp_tx: u64,
    udp_rx: u64,
}

fn error(measured: Option<u64>, truth: u64) -> Option<f64> {
    let measured = measured?;
    Some(measured.abs_diff(truth) as f64 / truth.max(1) as f64 * 100.0)
}

fn share(measured: Option<u64>, truth: u64) -> Option<f64> {
    Some(measured? as f64 / truth.max(1) as f64 * 100.0)
}

fn metric(message: &serde_json::Value, name: &str) -> Option<u64> {
    message["metrics"][name].as_u64()
}

pub fn run(context: &Context, scale: f64) -> anyhow::Result<Vec<AccuracyResult>> {
    let storm = ((1000.0 * scale) as u64).max(50);
    let mut results = Vec::new();
    for backend in Backend::BOTH {
        eprintln!("bench:   {} backend", backend.name());
        let mut result = AccuracyResult {
            backend: Some(backend),
            storm_processes: storm,
            ..AccuracyResult::default()
        };
        let report = context.scratch("truth.json");
        let arg = |s: &str| s.to_owned();
        let path = report.display().to_string();

        let last = final_message(&output(
            context.tracked(backend, &[arg("cpu-tree"), arg("--report"), path.clone()]),
        )?)?;
        let truth: CpuTruth = read_json(&report)?;
        result.cpu_error_percent = error(metric(&last, "cpu_time_ns"), truth.cpu_ns);

        let dir = context.scratch(&format!("disk-{}", backend.name()));
        std::fs::create_dir_all(&dir)?;
        let last = final_message(&output(context.tracked(
            backend,
            &[
                arg("disk"),
                arg("--dir"),
                dir.display().to_string(),
                arg("--report"),
                path.clone(),
            ],
        ))?)?;
        let truth: DiskTruth = read_json(&report)?;
        result.disk_read_error_percent = error(metric(&last, "disk_read_bytes"), truth.read_bytes);
        result.disk_write_error_percent =
            error(metric(&last, "disk_write_bytes"), truth.write_bytes);
        let _ = std::fs::remove_dir_all(&dir);

        let last = final_message(&output(
            context.tracked(backend, &[arg("net"), arg("--report"), path.clone()]),
        )?)?;
        let truth: NetTally = read_json(&report)?;
        let measured = metric(&last, "network_tx_bytes")
            .zip(metric(&last, "network_rx_bytes"))
            .map(|(tx, rx)| tx + rx);
        result.network_error_percent = error(
            measured,
            truth.tcp_tx + truth.tcp_rx + truth.udp_tx + truth.udp_rx,
        );

        let last = final_message(&output(context.tracked(
            backend,
            &[
                arg("bench"),
                arg("storm"),
                arg("--count"),
                storm.to_string(),
                arg("--dir"),
                context.out_dir.display().to_string(),
                arg("--report"),
                path.clone(),
            ],
        ))?)?;
        let truth: Timing = read_json(&report)?;
        result.storm_cpu_captured_percent = share(
            metric(&last, "cpu_time_ns"),
            truth.truth_cpu_ns.unwrap_or(0),
        );
        result.storm_bytes_captured_percent = share(
            metric(&last, "disk_write_bytes"),
            truth.truth_write_bytes.unwrap_or(0),
        );
        result.storm_processes_captured_percent =
            share(metric(&last, "processes_started"), storm + 1);
        let _ = std::fs::remove_file(&report);
        results.push(result);
    }
    Ok(results)
}
