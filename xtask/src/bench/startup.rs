//! The eBPF agent's start-up with one task: how long until its programs
//! are attached, and the peak resident memory it reaches on the way
//! (parsing the kernel's BTF is the largest part).

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    footprint::{memory_field, terminate},
    run::{Context, Spread, kill_all, start_many},
};

#[derive(Debug, Serialize)]
pub struct StartupResult {
    pub samples: usize,
    /// From spawning `propmon agent` to its log line "propmon agent
    /// started", which it prints once every program is loaded and
    /// attached; seconds.
    pub attach_seconds: Spread,
    /// VmHWM once the agent has printed its first message (start-up and
    /// first round done), bytes.
    pub peak_rss_bytes: Spread,
}

/// The line the agent logs once its backend is open (programs attached).
pub const STARTED: &str = "propmon agent started";

pub fn run(context: &Context, samples: usize) -> anyhow::Result<StartupResult> {
    let mut attach = Vec::new();
    let mut peak = Vec::new();
    for _ in 0..samples.max(1) {
        let (seconds, bytes) = sample(context)?;
        attach.push(seconds);
        peak.push(bytes as f64);
    }
    Ok(StartupResult {
        samples: attach.len(),
        attach_seconds: Spread::of(&attach),
        peak_rss_bytes: Spread::of(&peak),
    })
}

/// One start: seconds to attached, peak RSS in bytes.
fn sample(context: &Context) -> anyhow::Result<(f64, u64)> {
    let mut sleeper = start_many(1, || {
        let mut sleep = Command::new("sleep");
        sleep.arg("3600");
        sleep
    })?;
    let result = start_agent(context, sleeper[0].id());
    kill_all(&mut sleeper);
    result
}

fn start_agent(context: &Context, task_pid: u32) -> anyhow::Result<(f64, u64)> {
    let mut agent = Command::new(&context.propmon);
    // The log filter is explicit: PROPMON_LOG may hide info lines.
    agent
        .args(["--log", "info", "agent", "--backend", "ebpf"])
        .args(["--profile", "intensive", "--enable-monitoring", "false"])
        .arg("--attach")
        .arg(format!("t={task_pid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = Instant::now();
    let mut agent = agent.spawn().context("starting the agent")?;
    let pid = agent.id();
    let started = watch(agent.stderr.take().expect("piped"), |line| {
        line.contains(STARTED)
    });
    let first_message = watch(agent.stdout.take().expect("piped"), |_| true);
    let attached = started.recv_timeout(Duration::from_secs(30));
    let printed = first_message.recv_timeout(Duration::from_secs(10));
    let peak = memory_field(pid, "VmHWM:");
    let _ = terminate(pid);
    let status = agent.wait()?;
    let Ok(attached) = attached else {
        bail!("the agent never logged \"{STARTED}\" ({status})");
    };
    if printed.is_err() {
        bail!("the agent printed no message within 10 s of starting");
    }
    Ok((attached.duration_since(spawned).as_secs_f64(), peak?))
}

/// Reads `stream` line by line to its end (so that the agent never blocks
/// on a full pipe); sends the time of the first line `wanted` accepts.
pub fn watch(
    stream: impl Read + Send + 'static,
    wanted: impl Fn(&str) -> bool + Send + 'static,
) -> mpsc::Receiver<Instant> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if !sent && wanted(&line) {
                let _ = sender.send(Instant::now());
                sent = true;
            }
        }
    });
    receiver
}
