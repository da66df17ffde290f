//! `propmon run`: runs a command as a task and reports it until its last
//! process is gone.

use std::{
    ffi::OsString,
    io::{self, Write as _},
    os::fd::AsFd as _,
    process::{ExitCode, ExitStatus, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    process::{Child, Command},
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval, interval_at},
};

use super::RunArgs;
use crate::{
    collect::{
        ebpf::EbpfBackend,
        procfs::{host_memory_bytes, sample_processes},
    },
    message::{Source, TaskMetricsMessage},
    tasks::{Observation, Task, TaskSpec},
};

/// How often we check whether the task's last thread is gone.
const LIVENESS_PERIOD: Duration = Duration::from_millis(50);
/// A process that exited but whose parent never reaps it keeps its thread
/// unreleased; its CPU is final anyway, so we stop waiting after this long.
const UNREAPED_GRACE: Duration = Duration::from_secs(1);
/// After SIGINT/SIGTERM (forwarded to CMD), how long CMD gets to finish.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);
/// Exit code for propmon's own failures (as `env`, `timeout`, `docker run`).
const EXIT_PROPMON_FAILED: u8 = 125;

/// Validated settings of one run.
#[derive(Debug)]
struct RunSettings {
    spec: TaskSpec,
    command: Vec<OsString>,
}

impl RunSettings {
    fn from_args(args: RunArgs) -> anyhow::Result<Self> {
        let mut profile = args.profile.profile();
        if let Some(interval) = args.interval {
            profile.interval = interval;
        }
        let proplet_id = match args.proplet_id {
            Some(id) => id,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| "propmon".to_owned()),
        };
        Ok(RunSettings {
            spec: TaskSpec {
                task_id: args
                    .task_id
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                proplet_id,
                profile,
            },
            command: args.command,
        })
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = RunSettings::from_args(args)?;
    let backend = match EbpfBackend::load() {
        Ok(backend) => backend,
        Err(unavailable) => {
            eprintln!("propmon: {unavailable}");
            return Ok(ExitCode::from(EXIT_PROPMON_FAILED));
        }
    };
    // One thread: the thread that asks the kernel to adopt its next child
    // must be the one that forks it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match runtime.block_on(supervise(settings, backend)) {
        Ok(code) => Ok(code),
        Err(RunError::Spawn { code, error }) => {
            eprintln!("propmon: {error:#}");
            Ok(ExitCode::from(code))
        }
        Err(RunError::Internal(error)) => {
            eprintln!("propmon: {error:#}");
            Ok(ExitCode::from(EXIT_PROPMON_FAILED))
        }
    }
}

#[derive(Debug)]
enum RunError {
    /// CMD could not be started (exit 126 or 127, as shells do).
    Spawn {
        code: u8,
        error: anyhow::Error,
    },
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(error: anyhow::Error) -> Self {
        RunError::Internal(error)
    }
}

const SLOT: u32 = 0;

async fn supervise(settings: RunSettings, mut backend: EbpfBackend) -> Result<ExitCode, RunError> {
    backend.reset_slot(SLOT)?;
    let started = Instant::now();
    let mut child = spawn_tracked(&mut backend, &settings.command)?;
    let mut task = Task::new(settings.spec, SLOT, started);
    let mut out = MetricsOutput::stdout(task.spec.profile.enabled);

    let period = task.spec.profile.interval;
    let mut sampling = interval_at((started + period).into(), period);
    sampling.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut liveness = interval(LIVENESS_PERIOD);
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    let mut exit_status: Option<ExitStatus> = None;
    let mut processes_gone_since: Option<Instant> = None;
    let mut interrupted: Option<(Signal, Instant)> = None;
    loop {
        tokio::select! {
            _ = sampling.tick() => {
                let observation = observe(&backend, &task)?;
                out.emit(&task.next_message(&observation, Source::Ebpf, false));
            }
            status = child.wait(), if exit_status.is_none() => {
                exit_status = Some(status.context("waiting for the command")?);
            }
            _ = liveness.tick() => {
                let totals = backend.totals(SLOT)?;
                if totals.live_threads == 0 {
                    break;
                }
                let now = Instant::now();
                if totals.live_processes > 0 {
                    processes_gone_since = None;
                } else if now - *processes_gone_since.get_or_insert(now) > UNREAPED_GRACE {
                    tracing::warn!("the task's processes exited but are not reaped; reporting now");
                    break;
                }
                if interrupted.is_some_and(|(_, at)| now - at > SIGNAL_GRACE) {
                    tracing::warn!("the command is still running; propmon stops tracking it");
                    break;
                }
            }
            _ = sigint.recv() => interrupted = Some(forward(&child, Signal::SIGINT)),
            _ = sigterm.recv() => interrupted = Some(forward(&child, Signal::SIGTERM)),
        }
    }

    if exit_status.is_none() {
        exit_status = child
            .try_wait()
            .context("collecting the command's status")?;
    }
    let observation = observe(&backend, &task)?;
    out.emit(&task.next_message(&observation, Source::Ebpf, true));
    report_kernel_losses(&backend);
    Ok(match (exit_status, interrupted) {
        (Some(status), _) => exit_code_of(status),
        (None, Some((signal, _))) => ExitCode::from(128 + signal as u8),
        (None, None) => ExitCode::from(EXIT_PROPMON_FAILED),
    })
}

/// Starts CMD as the root process of the task: the kernel adopts the
/// child at fork, before it executes anything.
fn spawn_tracked(backend: &mut EbpfBackend, command: &[OsString]) -> Result<Child, RunError> {
    let (program, args) = command.split_first().expect("clap requires CMD");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::inherit())
        .stdout(stderr_stdio()?);
    let tid = nix::unistd::gettid().as_raw() as u32;
    backend.adopt_next_child_of(tid, SLOT)?;
    let spawned = cmd.spawn();
    let not_adopted = backend.withdraw_adoption(tid);
    let child = spawned.map_err(|error| RunError::Spawn {
        code: if error.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        },
        error: anyhow::Error::new(error)
            .context(format!("cannot run {}", program.to_string_lossy())),
    })?;
    if not_adopted {
        return Err(RunError::Internal(anyhow::anyhow!(
            "the kernel did not report the fork of {} (sched_process_fork not traced?)",
            program.to_string_lossy()
        )));
    }
    Ok(child)
}

/// CMD writes its stdout to our stderr: our stdout carries only metrics.
fn stderr_stdio() -> anyhow::Result<Stdio> {
    let fd = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stderr for the command's output")?;
    Ok(Stdio::from(fd))
}

fn observe(backend: &EbpfBackend, task: &Task) -> anyhow::Result<Observation> {
    let kernel = backend.totals(task.slot)?;
    let pids = backend
        .processes_by_slot()
        .remove(&task.slot)
        .unwrap_or_default();
    Ok(Observation {
        kernel,
        processes: sample_processes(pids),
        host_memory_bytes: host_memory_bytes(),
        at: Instant::now(),
        wall: SystemTime::now(),
    })
}

fn forward(child: &Child, signal: Signal) -> (Signal, Instant) {
    tracing::info!("received {signal}: forwarding it to the command and finishing");
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
    (signal, Instant::now())
}

fn exit_code_of(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.wrapping_add(signal as u8)),
        (None, None) => ExitCode::from(EXIT_PROPMON_FAILED),
    }
}

fn report_kernel_losses(backend: &EbpfBackend) {
    match backend.kernel_stats() {
        Ok(stats) if stats.total_failures() > 0 => tracing::warn!(
            "the kernel could not record {} threads and {} processes (maps full): \
             figures are incomplete",
            stats.thread_insert_failures,
            stats.proc_insert_failures
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!("{err:#}"),
    }
}

/// JSON lines on stdout. A closed stdout (e.g. `| head`) stops the output,
/// not the supervision of the command.
struct MetricsOutput {
    enabled: bool,
}

impl MetricsOutput {
    fn stdout(enabled: bool) -> Self {
        MetricsOutput { enabled }
    }

    fn emit(&mut self, message: &TaskMetricsMessage) {
        if !self.enabled {
            return;
        }
        let line = serde_json::to_string(message).expect("messages always serialise");
        let mut stdout = io::stdout().lock();
        if let Err(err) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            tracing::warn!("stdout closed ({err}): no more metrics will be written");
            self.enabled = false;
        }
    }
}
