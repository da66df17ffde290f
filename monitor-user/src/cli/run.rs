//! `propmon run`: runs a command as a task and reports it until its last
//! process is gone.

use std::{
    ffi::OsString,
    process::{ExitCode, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::process::Command;

use super::{
    BadUsage, EXIT_PROPMON_FAILED, RunArgs, check_proplet_id, host_name,
    served::Served,
    signals::{Stop, StopSignals, forward},
    wake::{Alarm, EventWaker},
};
use crate::{
    collect::{self, BackendChoice, SpawnError},
    engine::{Engine, task_spec},
    export::{
        self, Fanout, Sink,
        http::ListenAddr,
        latest::{Health, Latest},
        mqtt::MqttSettings,
        stdout::StdoutSink,
    },
    input::check_task_id,
    message::EndReason,
    profiles::Preset,
    tasks::TaskSpec,
};

/// After SIGINT/SIGTERM (forwarded to CMD), how long CMD gets to finish.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);
/// How long propmon waits at exit for the broker to take the last messages.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Validated settings of one run.
#[derive(Debug)]
struct RunSettings {
    spec: TaskSpec,
    backend: BackendChoice,
    mqtt: Option<MqttSettings>,
    listen: Option<ListenAddr>,
    metrics_peers: bool,
    command: Vec<OsString>,
}

impl RunSettings {
    fn from_args(args: RunArgs) -> anyhow::Result<Self> {
        let mut profile = args
            .profile
            .resolve()
            .context("--profile-json")?
            .unwrap_or_else(|| Preset::Standard.profile());
        if let Some(interval) = args.interval {
            profile.interval = interval;
        }
        let proplet_id = args.proplet_id.unwrap_or_else(host_name);
        check_proplet_id(&proplet_id)?;
        let task_id = args
            .task_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        check_task_id("--task-id", &task_id)?;
        let listen = args.listen.settings()?;
        Ok(RunSettings {
            mqtt: args.mqtt.settings(&proplet_id, &[])?,
            metrics_peers: args.listen.peer_series(listen.is_some()),
            listen,
            spec: task_spec(&task_id, &proplet_id, profile)?,
            backend: args.backend,
            command: args.command,
        })
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = RunSettings::from_args(args).map_err(BadUsage)?;
    // One thread: the thread that asks the kernel to adopt its next child
    // must be the one that forks it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return Ok(super::failed(&anyhow::Error::new(err))),
    };
    Ok(match runtime.block_on(supervise(settings)) {
        Ok(code) => code,
        Err(RunError::Spawn(error)) => {
            eprintln!("propmon: {error:#}");
            ExitCode::from(error.exit_code())
        }
        Err(RunError::Internal(error)) => super::failed(&error),
    })
}

#[derive(Debug)]
enum RunError {
    Spawn(SpawnError),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(error: anyhow::Error) -> Self {
        RunError::Internal(error)
    }
}

async fn supervise(settings: RunSettings) -> Result<ExitCode, RunError> {
    let mut command = Command::new(&settings.command[0]);
    command
        .args(&settings.command[1..])
        .stdin(Stdio::inherit())
        .stdout(stderr_stdio()?);
    if !settings.spec.profile.enabled {
        // Profile `disabled`: no sampling at all, just the command.
        let status = spawn_untracked(&mut command)?.wait().await;
        return Ok(exit_code_of(status.context("waiting for the command")?));
    }
    let backend = collect::open(settings.backend, &collect::Options::default())?;
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(StdoutSink::default())];
    let mut flusher = None;
    let mut mqtt_status = None;
    if let Some(mqtt) = settings.mqtt {
        let (sink, flush, _) = export::mqtt::start(mqtt)?;
        mqtt_status = Some(sink.status());
        sinks.push(Box::new(sink));
        flusher = Some(flush);
    }
    let http = match &settings.listen {
        Some(addr) => {
            let health = Health::starting(&settings.spec.proplet_id, backend.source(), 1);
            let latest = Latest::new(health).with_peer_series(settings.metrics_peers);
            let server = export::http::start(addr, latest)?;
            sinks.push(Box::new(server.latest().sink()));
            Some(Served {
                server,
                mqtt: mqtt_status,
            })
        }
        None => None,
    };
    let proplet_id = settings.spec.proplet_id.clone();
    let mut engine = Engine::new(backend, Box::new(Fanout(sinks)), 1);
    let (slot, mut child) = engine
        .spawn(settings.spec, &mut command)
        .map_err(RunError::Spawn)?;
    let mut signals = StopSignals::install()?;
    let mut events = EventWaker::new(engine.event_fd());
    let mut alarm = Alarm::new();
    let mut exit_status: Option<ExitStatus> = None;
    let mut interrupted: Option<(Stop, Instant)> = None;
    loop {
        let wake = engine.next_wakeup(Instant::now());
        tokio::select! {
            _ = async {
                tokio::select! {
                    _ = alarm.until(wake) => {}
                    _ = events.ready() => {}
                }
            } => {
                let now = Instant::now();
                let ended = engine.round(now);
                if let Some(http) = &http {
                    http.report(&mut engine, &proplet_id, 1);
                }
                if ended.iter().any(|ended| ended.slot == slot) {
                    break;
                }
                if interrupted.is_some_and(|(_, at)| now - at > SIGNAL_GRACE) {
                    tracing::warn!("the command is still running; propmon stops tracking it");
                    engine.finish(slot, EndReason::Abandoned);
                    break;
                }
            }
            status = child.wait(), if exit_status.is_none() => {
                exit_status = Some(status.context("waiting for the command")?);
            }
            stop = signals.recv() => {
                tracing::info!("received {stop}: forwarding it to the command and finishing");
                forward(&mut child, stop);
                interrupted = Some((stop, Instant::now()));
            }
        }
    }
    if exit_status.is_none() {
        exit_status = child
            .try_wait()
            .context("collecting the command's status")?;
    }
    drop(http);
    drop(engine); // detaches the programs
    if let Some(flusher) = flusher
        && !flusher.flush(FLUSH_DEADLINE).await
    {
        tracing::warn!("the MQTT broker did not take every message before exit");
    }
    Ok(match (exit_status, interrupted) {
        (Some(status), _) => exit_code_of(status),
        (None, Some((stop, _))) => ExitCode::from(stop.exit_code()),
        (None, None) => ExitCode::from(EXIT_PROPMON_FAILED),
    })
}

fn spawn_untracked(command: &mut Command) -> Result<tokio::process::Child, RunError> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    command
        .spawn()
        .map_err(|source| RunError::Spawn(SpawnError::Exec { program, source }))
}

/// CMD writes its stdout to our stderr: our stdout carries only metrics.
pub(super) fn stderr_stdio() -> anyhow::Result<Stdio> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd as _;
        let fd = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stderr for the command's output")?;
        Ok(Stdio::from(fd))
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsHandle as _;
        let handle = std::io::stderr()
            .as_handle()
            .try_clone_to_owned()
            .context("duplicating stderr for the command's output")?;
        Ok(Stdio::from(handle))
    }
}

fn exit_code_of(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(code as u8);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            return ExitCode::from(128u8.wrapping_add(signal as u8));
        }
    }
    ExitCode::from(EXIT_PROPMON_FAILED)
}
