//! `propmon agent`: many tasks at once, each with its own profile, until
//! SIGTERM/SIGINT.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::time::sleep_until;

use super::{AgentArgs, ProfileArgs, config::ConfigFile, run::host_name, signals::StopSignals};
use crate::{
    collect::{self, BackendChoice},
    engine::{Engine, task_spec},
    export::{Outgoing, Sink, stdout::StdoutSink},
    profiles::{MonitoringProfile, Preset},
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
        Ok(AgentSettings {
            attach,
            default_profile,
            backend: args.backend.or(file.backend).unwrap_or(BackendChoice::Auto),
            proplet_id: args
                .proplet_id
                .or(file.proplet_id)
                .unwrap_or_else(host_name),
            namespace: args
                .namespace
                .or(file.namespace)
                .unwrap_or_else(|| "default".to_owned()),
            metrics_interval,
            enable_monitoring: args
                .enable_monitoring
                .or(file.enable_monitoring)
                .unwrap_or(true),
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
    runtime.block_on(serve(settings, Box::new(StdoutSink::default())))?;
    Ok(ExitCode::SUCCESS)
}

/// The agent's loop, with messages going to `sink`.
pub async fn serve(settings: AgentSettings, sink: Box<dyn Sink>) -> anyhow::Result<()> {
    let backend = collect::open(settings.backend)?;
    let mut engine = Engine::new(backend, sink, monitor_common::MAX_TASKS);
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
    let mut signals = StopSignals::install()?;
    loop {
        let now = Instant::now();
        let mut wake = engine.next_wakeup(now);
        if proplet.is_some() {
            wake = wake.min(next_proplet);
        }
        tokio::select! {
            _ = sleep_until(wake.into()) => {
                let now = Instant::now();
                for ended in engine.round(now) {
                    tracing::info!("task {} ended", ended.task_id);
                }
                if let Some(reporter) = proplet.as_mut().filter(|_| now >= next_proplet) {
                    let dropped = engine.sink_mut().dropped();
                    let message = reporter.sample(engine.task_count(), dropped, engine.source());
                    engine.sink_mut().send(&Outgoing::Proplet(message));
                    while next_proplet <= now {
                        next_proplet += settings.metrics_interval;
                    }
                }
            }
            stop = signals.recv() => {
                tracing::info!("received {stop}: final messages for {} tasks", engine.task_count());
                engine.finish_all();
                break;
            }
        }
    }
    Ok(())
}

fn attach(engine: &mut Engine, settings: &AgentSettings, spec: &AttachSpec) -> anyhow::Result<()> {
    let profile = settings.profile_for(spec.profile, spec.daemon);
    if !profile.enabled {
        tracing::info!("task {}: profile disabled, not monitored", spec.task_id);
        return Ok(());
    }
    if engine.slot_of(&spec.task_id).is_some() {
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
