//! The agent's own cost: CPU (percent of one core) and peak RSS at a 1 s
//! interval with 1, 100 and 1,000 tracked idle tasks, and with 100 tracked
//! tasks beside 1,000 untracked busy processes; both backends. Then the
//! eBPF agent with 100 and 1,000 tasks publishing every message over MQTT
//! (QoS 1) to a local mosquitto as well, as a Propeller node runs it.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    Backend,
    bpf::map_memory_bytes,
    run::{Context, kill_all, start_many},
};

#[derive(Debug, Serialize)]
pub struct FootprintResult {
    pub backend: Backend,
    pub tracked_tasks: usize,
    pub untracked_busy_processes: usize,
    /// Every message also published to a local MQTT broker.
    pub mqtt: bool,
    /// Agent CPU over the measured window, percent of one core.
    pub cpu_percent: f64,
    /// Resident memory of the agent at the end of the window (VmRSS), bytes.
    pub rss_bytes: u64,
    /// Of which its own, anonymous memory (RssAnon), bytes.
    pub anon_rss_bytes: u64,
    /// Peak resident memory of the agent (VmHWM, start-up included), bytes.
    pub peak_rss_bytes: u64,
}

/// Returns the results and the kernel memory of our maps.
pub fn run(
    context: &Context,
    seconds: u64,
    quick: bool,
) -> anyhow::Result<(Vec<FootprintResult>, Option<u64>)> {
    let many = if quick { 200 } else { 1000 };
    let configurations = [(1, 0), (100, 0), (many, 0), (100, many)];
    let mut results = Vec::new();
    let mut map_memory = None;
    for backend in Backend::BOTH {
        for (tracked, busy) in configurations {
            eprintln!(
                "bench:   {} backend, {tracked} tasks, {busy} busy untracked",
                backend.name()
            );
            let (result, memory) = measure(context, backend, tracked, busy, None, seconds)?;
            if backend == Backend::Ebpf {
                map_memory = map_memory.or(memory);
            }
            results.push(result);
        }
    }
    let broker = Broker::start()?;
    for tracked in [100, many] {
        eprintln!("bench:   ebpf backend, {tracked} tasks, publishing over MQTT");
        let (result, _) = measure(
            context,
            Backend::Ebpf,
            tracked,
            0,
            Some(broker.port),
            seconds,
        )?;
        results.push(result);
    }
    Ok((results, map_memory))
}

/// A mosquitto of our own on a free loopback port, for as long as it lives.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let child = Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (cargo xtask setup installs it)")?;
        let broker = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "mosquitto does not listen on port {port}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn measure(
    context: &Context,
    backend: Backend,
    tracked: usize,
    busy: usize,
    mqtt_port: Option<u16>,
    seconds: u64,
) -> anyhow::Result<(FootprintResult, Option<u64>)> {
    let mut sleepers = start_many(tracked, || {
        let mut sleep = Command::new("sleep");
        sleep.arg("3600");
        sleep
    })?;
    // Busy but light: each wakes every 100 ms and spins 200 us, so that
    // 1,000 of them keep 10,000 wake-ups a second and 20% of a core going.
    let mut busy_processes = start_many(busy, || {
        let mut ticker = Command::new(&context.propmon);
        ticker.args([
            "workload",
            "bench",
            "tick",
            "--period-ms",
            "100",
            "--spin-us",
            "200",
        ]);
        ticker
    })?;
    let mut agent = Command::new(&context.propmon);
    // The log filter is explicit: PROPMON_LOG may hide info lines.
    agent
        .args(["--log", "info"])
        .args([
            "agent",
            "--backend",
            backend.name(),
            "--profile",
            "intensive",
        ])
        .args(["--enable-monitoring", "false"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(port) = mqtt_port {
        agent
            .arg("--mqtt-url")
            .arg(format!("mqtt://127.0.0.1:{port}"))
            .args(["--domain-id", "bench", "--channel-id", "bench"]);
    }
    for (index, sleeper) in sleepers.iter().enumerate() {
        agent
            .arg("--attach")
            .arg(format!("t{index}={}", sleeper.id()));
    }
    let mut agent = agent.spawn().context("starting the agent")?;
    let pid = agent.id();
    // Beside 1,000 busy processes on 2 CPUs the start-up (BTF, verifier)
    // can take seconds: measure from the agent's start, not its spawn.
    // With MQTT, the window starts once the broker took the connection too.
    let started_seen = AtomicBool::new(false);
    let connected_seen = AtomicBool::new(mqtt_port.is_none());
    let started = super::startup::watch(agent.stderr.take().expect("piped"), move |line| {
        if line.contains(super::startup::STARTED) {
            started_seen.store(true, Ordering::Relaxed);
        }
        if line.contains(MQTT_CONNECTED) {
            connected_seen.store(true, Ordering::Relaxed);
        }
        started_seen.load(Ordering::Relaxed) && connected_seen.load(Ordering::Relaxed)
    });
    if started.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = terminate(pid);
        let status = agent.wait()?;
        anyhow::bail!(
            "the agent never logged \"{}\"{} ({status})",
            super::startup::STARTED,
            if mqtt_port.is_some() {
                format!(" and \"{MQTT_CONNECTED}\"")
            } else {
                String::new()
            }
        );
    }
    thread::sleep(Duration::from_secs(3)); // attached and warmed up
    let memory = map_memory_bytes(pid);
    let before = cpu_ns(pid)?;
    let started = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let used = cpu_ns(pid)? - before;
    let elapsed = started.elapsed().as_secs_f64();
    let rss_bytes = memory_field(pid, "VmRSS:")?;
    let anon_rss_bytes = memory_field(pid, "RssAnon:")?;
    let peak_rss_bytes = memory_field(pid, "VmHWM:")?;
    let _ = terminate(pid);
    let _ = agent.wait();
    kill_all(&mut sleepers);
    kill_all(&mut busy_processes);
    Ok((
        FootprintResult {
            backend,
            tracked_tasks: sleepers.len(),
            untracked_busy_processes: busy_processes.len(),
            mqtt: mqtt_port.is_some(),
            cpu_percent: used as f64 / 1e9 / elapsed * 100.0,
            rss_bytes,
            anon_rss_bytes,
            peak_rss_bytes,
        },
        memory,
    ))
}

/// What the agent logs once the broker accepted its connection.
const MQTT_CONNECTED: &str = "connected to the MQTT broker";

pub(super) fn terminate(pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other("kill failed"));
    }
    Ok(())
}

/// On-CPU ns of a process, from its CPU-time clock (clock_getcpuclockid):
/// exact, unlike the 10 ms ticks of `/proc/<pid>/stat`.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain libc calls with valid out-pointers.
    unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0 {
            anyhow::bail!("the agent (PID {pid}) is gone");
        }
        let mut now = std::mem::zeroed::<libc::timespec>();
        if libc::clock_gettime(clock, &mut now) != 0 {
            anyhow::bail!(
                "reading the agent's CPU clock: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
    }
}

/// A memory figure of `/proc/<pid>/status`, in bytes.
pub(super) fn memory_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(kib * 1024)
}
