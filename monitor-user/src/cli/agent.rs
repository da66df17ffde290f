//! `propmon agent`: many tasks at once, each with its own profile, until
//! SIGTERM/SIGINT.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::time::sleep_until;

use tokio::sync::mpsc;

use super::{AgentArgs, ProfileArgs, config::ConfigFile, run::host_name, signals::StopSignals};
use crate::{
    collect::{self, BackendChoice},
    engine::{Engine, task_spec},
    export::{
        self, Fanout, Outgoing, Sink,
        mqtt::{Incoming, MqttSettings},
        stdout::StdoutSink,
    },
    profiles::{MonitoringProfile, Preset},
    propeller::{self, Control},
    proplet::{PropletReporter, parse_metrics_interval},
};

/// Default time between proplet-level messages.
const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);

/// `--attach TASK_ID=PID[,profile=NAME][,daemon=true]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachSpec {
    pub task_id: String,
    pub pid: u32,
    pub profile: Option<Preset>,
    pub daemon: bool,
}

pub fn parse_attach(text: &str) -> Result<AttachSpec, String> {
    let mut parts = text.split(',');
    let head = parts.next().unwrap_or_default();
    let (task_id, pid) = head
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected TASK_ID=PID"))?;
    let pid = pid
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&pid| pid > 0)
        .ok_or_else(|| format!("{text:?}: {pid:?} is not a process id"))?;
    if task_id.trim().is_empty() {
        return Err(format!("{text:?}: the task id is empty"));
    }
    let mut spec = AttachSpec {
        task_id: task_id.trim().to_owned(),
        pid,
        profile: None,
        daemon: false,
    };
    for option in parts {
        match option.split_once('=') {
            Some(("profile", name)) => {
                spec.profile = Some(Preset::from_name(name).map_err(|err| err.to_string())?)
            }
            Some(("daemon", flag)) => {
                spec.daemon = flag
                    .parse()
                    .map_err(|_| format!("{text:?}: daemon must be true or false"))?
            }
            _ => {
                return Err(format!(
                    "{text:?}: unknown option {option:?} (profile=, daemon=)"
                ));
            }
        }
    }
    Ok(spec)
}

/// Validated settings of the agent: flags, then environment, then file.
pub struct AgentSettings {
    pub attach: Vec<AttachSpec>,
    pub default_profile: Option<MonitoringProfile>,
    pub backend: BackendChoice,
    pub proplet_id: String,
    pub namespace: String,
    pub metrics_interval: Duration,
    pub enable_monitoring: bool,
    pub mqtt: Option<MqttSettings>,
    pub propeller: bool,
    pub proplet_process: Option<PropletProcess>,
    pub discovery_grace: Duration,
}

/// How to find the proplet process, for in-process tasks.
#[derive(Clone, Debug)]
pub enum PropletProcess {
    Pid(u32),
    Exe(String),
}

impl AgentSettings {
    pub fn from_args(args: AgentArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let mut attach = args.attach;
        for entry in &file.attach {
            attach.push(parse_attach(entry).map_err(anyhow::Error::msg)?);
        }
        let file_profile = ProfileArgs {
            profile: file.profile.as_deref().map(Preset::from_name).transpose()?,
            profile_json: file.profile_json.clone(),
        };
        let default_profile = match args.profile.resolve()? {
            Some(profile) => Some(profile),
            None => file_profile.resolve()?,
        };
        let metrics_interval = match (args.metrics_interval, file.metrics_interval_text()) {
            (Some(interval), _) => interval,
            (None, Some(text)) => parse_metrics_interval(&text).map_err(anyhow::Error::msg)?,
            (None, None) => DEFAULT_METRICS_INTERVAL,
        };
        let proplet_id = args
            .proplet_id
            .or(file.proplet_id.clone())
            .unwrap_or_else(host_name);
        let propeller = args.propeller.or(file.propeller).unwrap_or(false);
        let mut mqtt_args = args.mqtt;
        file.fill_mqtt(&mut mqtt_args)?;
        let subscribe: &[&str] = if propeller {
            &[propeller::START_PATH, propeller::STOP_PATH]
        } else {
            &[]
        };
        let mut mqtt = mqtt_args.settings(&proplet_id, subscribe)?;
        if propeller && mqtt.is_none() {
            bail!("--propeller needs a broker: set --mqtt-url (PROPLET_MQTT_ADDRESS)");
        }
        let enable_monitoring = args
            .enable_monitoring
            .or(file.enable_monitoring)
            .unwrap_or(true);
        if let Some(mqtt) = mqtt.as_mut().filter(|_| propeller) {
            // Beside a real proplet, the variable is the proplet's own.
            mqtt.beside_proplet(enable_monitoring);
        }
        let proplet_process = match (
            args.proplet_pid.or(file.proplet_pid),
            args.proplet_exe.or(file.proplet_exe),
        ) {
            (Some(pid), _) => Some(PropletProcess::Pid(pid)),
            (None, Some(exe)) => Some(PropletProcess::Exe(exe)),
            (None, None) => None,
        };
        let discovery_grace = match (args.discovery_grace, &file.discovery_grace) {
            (Some(grace), _) => grace,
            (None, Some(text)) => crate::duration::parse_interval(text)?,
            (None, None) => Duration::from_secs(1),
        };
        Ok(AgentSettings {
            attach,
            default_profile,
            backend: args.backend.or(file.backend).unwrap_or(BackendChoice::Auto),
            proplet_id,
            namespace: args
                .namespace
                .or(file.namespace)
                .unwrap_or_else(|| "default".to_owned()),
            metrics_interval,
            // Beside a proplet, propmon's own message has a topic of its own.
            enable_monitoring: enable_monitoring || propeller,
            mqtt,
            propeller,
            proplet_process,
            discovery_grace,
        })
    }

    /// The profile of a task: its own, the agent's default, else Propeller's
    /// rule (daemons get long_running_daemon, others standard).
    pub fn profile_for(&self, own: Option<Preset>, daemon: bool) -> MonitoringProfile {
        if let Some(preset) = own {
            return preset.profile();
        }
        if let Some(profile) = &self.default_profile {
            return profile.clone();
        }
        if daemon {
            Preset::LongRunningDaemon.profile()
        } else {
            Preset::Standard.profile()
        }
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let settings = AgentSettings::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings))?;
    Ok(ExitCode::SUCCESS)
}

/// How long the agent waits at exit for the broker to take the final messages.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// The agent's loop.
pub async fn serve(settings: AgentSettings) -> anyhow::Result<()> {
    let backend = collect::open(settings.backend)?;
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(StdoutSink::default())];
    let mut control = None;
    let mut flusher = None;
    if let Some(mqtt) = settings.mqtt.clone() {
        let (sink, flush, incoming) = export::mqtt::start(mqtt)?;
        sinks.push(Box::new(sink));
        control = Some(incoming);
        flusher = Some(flush);
    }
    let mut engine = Engine::new(backend, Box::new(Fanout(sinks)), monitor_common::MAX_TASKS);
    tracing::info!("propmon agent started ({:?} backend)", engine.source());
    for spec in &settings.attach {
        if let Err(err) = attach(&mut engine, &settings, spec) {
            tracing::error!("task {}: {err:#}", spec.task_id);
        }
    }
    let mut proplet = settings
        .enable_monitoring
        .then(|| PropletReporter::new(settings.proplet_id.clone(), settings.namespace.clone()));
    let mut next_proplet = Instant::now() + settings.metrics_interval;
    // Started tasks that may turn out to run inside the proplet process.
    let mut in_process_checks: Vec<(Instant, String)> = Vec::new();
    let mut signals = StopSignals::install()?;
    loop {
        let now = Instant::now();
        let mut wake = engine.next_wakeup(now);
        if proplet.is_some() {
            wake = wake.min(next_proplet);
        }
        if let Some((at, _)) = in_process_checks.first() {
            wake = wake.min(*at);
        }
        tokio::select! {
            _ = sleep_until(wake.into()) => {
                let now = Instant::now();
                for ended in engine.round(now) {
                    tracing::info!("task {} ended", ended.task_id);
                }
                attribute_in_process(&mut engine, &settings, &mut in_process_checks, now);
                if let Some(reporter) = proplet.as_mut().filter(|_| now >= next_proplet) {
                    let dropped = engine.sink_mut().dropped();
                    let message = reporter.sample(engine.task_count(), dropped, engine.source());
                    engine.sink_mut().send(&Outgoing::Proplet(message));
                    while next_proplet <= now {
                        next_proplet += settings.metrics_interval;
                    }
                }
            }
            Some(message) = recv(&mut control) => {
                on_control(&mut engine, &settings, &mut in_process_checks, &message);
                // Only now: the broker delivers again what was never acted on.
                message.acknowledge();
            }
            stop = signals.recv() => {
                tracing::info!("received {stop}: final messages for {} tasks", engine.task_count());
                engine.finish_all();
                break;
            }
        }
    }
    drop(engine); // detaches the programs
    if let Some(flusher) = flusher
        && !flusher.flush(FLUSH_DEADLINE).await
    {
        tracing::warn!("the MQTT broker did not take every message before exit");
    }
    Ok(())
}

async fn recv(control: &mut Option<mpsc::UnboundedReceiver<Incoming>>) -> Option<Incoming> {
    match control {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// A start or stop from the Manager.
fn on_control(
    engine: &mut Engine,
    settings: &AgentSettings,
    in_process_checks: &mut Vec<(Instant, String)>,
    message: &Incoming,
) {
    match propeller::parse(&message.topic, &message.payload, &settings.proplet_id) {
        Ok(Control::Start(start)) => {
            if engine.has_task(&start.task_id) {
                tracing::warn!(
                    "start for task {}: already monitored, ignored",
                    start.task_id
                );
                return;
            }
            if !start.profile.enabled {
                tracing::info!("task {}: profile disabled, not monitored", start.task_id);
                return;
            }
            let spec = match task_spec(&start.task_id, &settings.proplet_id, start.profile) {
                Ok(spec) => spec,
                Err(err) => {
                    tracing::warn!("start for task {}: {err:#}; skipped", start.task_id);
                    return;
                }
            };
            match engine.discover(spec) {
                Ok(_) => {
                    tracing::info!("task {}: waiting for its process", start.task_id);
                    if settings.proplet_process.is_some() {
                        in_process_checks
                            .push((Instant::now() + settings.discovery_grace, start.task_id));
                        in_process_checks.sort();
                    }
                }
                Err(err) => tracing::error!("task {}: {err:#}", start.task_id),
            }
        }
        Ok(Control::Stop { task_id }) => {
            in_process_checks.retain(|(_, id)| *id != task_id);
            match engine.stop(&task_id) {
                Some(_) => tracing::info!("task {task_id} stopped by the Manager"),
                None => tracing::info!("stop for task {task_id}, which is not monitored"),
            }
        }
        Err(propeller::Skipped::NotOurs(target)) => {
            tracing::debug!("control message for proplet {target:?}, not ours");
        }
        Err(err) => tracing::warn!("ignoring a control message on {}: {err}", message.topic),
    }
}

/// Tasks whose process did not appear in time run inside the proplet.
fn attribute_in_process(
    engine: &mut Engine,
    settings: &AgentSettings,
    checks: &mut Vec<(Instant, String)>,
    now: Instant,
) {
    while checks.first().is_some_and(|(at, _)| *at <= now) {
        let (_, task_id) = checks.remove(0);
        if !engine.is_awaiting(&task_id) {
            continue;
        }
        let Some(pid) = settings.proplet_process.as_ref().and_then(find_proplet) else {
            tracing::warn!("task {task_id}: no process yet, and the proplet process is not found");
            continue;
        };
        let Some(spec) = engine.withdraw(&task_id) else {
            continue;
        };
        match engine.attribute_to_proplet(spec, pid) {
            Ok(()) => tracing::info!("task {task_id}: attributed to the proplet process {pid}"),
            Err(err) => tracing::error!("task {task_id}: {err:#}"),
        }
    }
}

fn find_proplet(process: &PropletProcess) -> Option<u32> {
    match process {
        PropletProcess::Pid(pid) => Some(*pid),
        PropletProcess::Exe(name) => {
            let mut system = sysinfo::System::new().ok()?;
            system.refresh_processes(sysinfo::ProcessesToUpdate::All, true);
            system
                .processes_by_exact_name(std::ffi::OsStr::new(name))
                .find(|process| process.thread_kind().is_none())
                .map(|process| process.pid().as_u32())
        }
    }
}

fn attach(engine: &mut Engine, settings: &AgentSettings, spec: &AttachSpec) -> anyhow::Result<()> {
    let profile = settings.profile_for(spec.profile, spec.daemon);
    if !profile.enabled {
        tracing::info!("task {}: profile disabled, not monitored", spec.task_id);
        return Ok(());
    }
    if engine.has_task(&spec.task_id) {
        bail!("a task with this id is already monitored");
    }
    let task = task_spec(&spec.task_id, &settings.proplet_id, profile)?;
    engine
        .attach(task, spec.pid)
        .with_context(|| format!("attaching PID {}", spec.pid))?;
    tracing::info!(
        "task {}: attached PID {} and its descendants",
        spec.task_id,
        spec.pid
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_specs_parse_and_fail_clearly() {
        assert_eq!(
            parse_attach("web=42,profile=real-time-api,daemon=true"),
            Ok(AttachSpec {
                task_id: "web".into(),
                pid: 42,
                profile: Some(Preset::RealTimeApi),
                daemon: true
            })
        );
        assert_eq!(parse_attach("t=7").unwrap().profile, None);
        for (bad, expected) in [
            ("42", "expected TASK_ID=PID"),
            ("t=x", "is not a process id"),
            ("t=0", "is not a process id"),
            ("=5", "task id is empty"),
            ("t=5,profile=turbo", "unknown profile"),
            ("t=5,colour=red", "unknown option"),
        ] {
            let err = parse_attach(bad).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn daemons_without_a_profile_get_long_running_daemon() {
        let settings = AgentSettings {
            attach: vec![],
            default_profile: None,
            backend: BackendChoice::Auto,
            proplet_id: "p".into(),
            namespace: "default".into(),
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            enable_monitoring: true,
            mqtt: None,
            propeller: false,
            proplet_process: None,
            discovery_grace: Duration::from_secs(1),
        };
        assert_eq!(
            settings.profile_for(None, true),
            Preset::LongRunningDaemon.profile()
        );
        assert_eq!(
            settings.profile_for(None, false),
            Preset::Standard.profile()
        );
        assert_eq!(
            settings.profile_for(Some(Preset::Minimal), true),
            Preset::Minimal.profile()
        );
    }
}
