//! `propmon agent`: many tasks at once, each with its own profile, until
//! SIGTERM/SIGINT.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use tokio::sync::mpsc;

use super::{
    AgentArgs, BadUsage, ProfileArgs, check_proplet_id,
    config::ConfigFile,
    host_name,
    served::Served,
    signals::StopSignals,
    wake::{Alarm, EventWaker},
};
use crate::{
    collect::{self, BackendChoice, cgroup::Cgroup},
    engine::{Engine, task_spec},
    export::{
        self, Fanout, Outgoing, Sink,
        http::ListenAddr,
        latest::{Health, Latest},
        mqtt::{Incoming, MqttSettings},
        stdout::StdoutSink,
    },
    input::{check_task_id, untrusted},
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
    let shown = untrusted(text);
    let mut parts = text.split(',');
    let head = parts.next().unwrap_or_default();
    let (task_id, pid) = head
        .split_once('=')
        .ok_or_else(|| format!("\"{shown}\": expected TASK_ID=PID"))?;
    let pid = pid
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&pid| pid > 0)
        .ok_or_else(|| format!("\"{shown}\": \"{}\" is not a process id", untrusted(pid)))?;
    let task_id =
        check_task_id("the task id", task_id).map_err(|err| format!("\"{shown}\": {err}"))?;
    let mut spec = AttachSpec {
        task_id: task_id.to_owned(),
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
                    .map_err(|_| format!("\"{shown}\": daemon must be true or false"))?
            }
            _ => {
                return Err(format!(
                    "\"{shown}\": unknown option \"{}\" (profile=, daemon=)",
                    untrusted(option)
                ));
            }
        }
    }
    Ok(spec)
}

/// `--attach-cgroup TASK_ID=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSpec {
    pub task_id: String,
    /// A cgroup v2 path, resolved when the agent starts.
    pub path: String,
}

pub fn parse_attach_cgroup(text: &str) -> Result<CgroupSpec, String> {
    let shown = untrusted(text);
    let (task_id, path) = text
        .split_once('=')
        .filter(|(_, path)| !path.trim().is_empty())
        .ok_or_else(|| format!("\"{shown}\": expected TASK_ID=PATH (a cgroup v2 path)"))?;
    let task_id =
        check_task_id("the task id", task_id).map_err(|err| format!("\"{shown}\": {err}"))?;
    Ok(CgroupSpec {
        task_id: task_id.to_owned(),
        path: path.trim().to_owned(),
    })
}

/// Validated settings of the agent: flags, then environment, then file.
pub struct AgentSettings {
    pub attach: Vec<AttachSpec>,
    pub attach_cgroup: Vec<CgroupSpec>,
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
    /// Keep tasks and their counters across agent restarts, here.
    pub state_dir: Option<std::path::PathBuf>,
    /// Tasks monitored at once.
    pub max_tasks: u32,
    /// A started task whose process has not appeared after this long ends.
    pub discovery_timeout: Duration,
    /// Where to serve /metrics and /api/v1/tasks.
    pub listen: Option<ListenAddr>,
    /// Per-peer series in /metrics.
    pub metrics_peers: bool,
}

/// Default `--discovery-timeout`.
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);

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
        // The file's keys are the flags' names: errors name the key.
        let config = args.config.clone().unwrap_or_default();
        let in_file = |key: &str| format!("--config {}: {key}", config.display());
        let mut attach = args.attach;
        for entry in &file.attach {
            let spec = parse_attach(entry).map_err(anyhow::Error::msg);
            attach.push(spec.with_context(|| in_file("attach"))?);
        }
        let mut attach_cgroup = args.attach_cgroup;
        for entry in &file.attach_cgroup {
            let spec = parse_attach_cgroup(entry).map_err(anyhow::Error::msg);
            attach_cgroup.push(spec.with_context(|| in_file("attach_cgroup"))?);
        }
        let max_tasks = args
            .max_tasks
            .or(file.max_tasks)
            .unwrap_or(monitor_common::MAX_TASKS)
            .clamp(1, monitor_common::MAX_TASKS);
        let slots = max_tasks as usize;
        if attach.len() + attach_cgroup.len() > slots {
            bail!(
                "{} tasks to attach: the agent monitors at most {slots}",
                attach.len() + attach_cgroup.len()
            );
        }
        let file_profile = ProfileArgs {
            profile: (file.profile.as_deref().map(Preset::from_name).transpose())
                .with_context(|| in_file("profile"))?,
            profile_json: file.profile_json.clone(),
        };
        let default_profile = match args.profile.resolve().context("--profile-json")? {
            Some(profile) => Some(profile),
            None => file_profile
                .resolve()
                .with_context(|| in_file("profile_json"))?,
        };
        let metrics_interval = match (args.metrics_interval, file.metrics_interval_text()) {
            (Some(interval), _) => interval,
            (None, Some(text)) => parse_metrics_interval(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| in_file("metrics_interval"))?,
            (None, None) => DEFAULT_METRICS_INTERVAL,
        };
        let proplet_id = args
            .proplet_id
            .or(file.proplet_id.clone())
            .unwrap_or_else(host_name);
        check_proplet_id(&proplet_id)?;
        let propeller = args.propeller.or(file.propeller).unwrap_or(false);
        let mut mqtt_args = args.mqtt;
        file.fill_mqtt(&mut mqtt_args)?;
        let mut listen_args = args.listen;
        file.fill_listen(&mut listen_args)?;
        let listen = listen_args.settings()?;
        let metrics_peers = listen_args.peer_series(listen.is_some());
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
            (None, Some(text)) => {
                crate::duration::parse_interval(text).with_context(|| in_file("discovery_grace"))?
            }
            (None, None) => Duration::from_secs(1),
        };
        let discovery_timeout = match (args.discovery_timeout, &file.discovery_timeout) {
            (Some(timeout), _) => timeout,
            (None, Some(text)) => crate::duration::parse_interval(text)?,
            (None, None) => DEFAULT_DISCOVERY_TIMEOUT,
        };
        Ok(AgentSettings {
            attach,
            attach_cgroup,
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
            discovery_timeout,
            state_dir: args.state_dir.or(file.state_dir),
            max_tasks,
            listen,
            metrics_peers,
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

/// Exit status: 0 once stopped by a signal, 2 for invalid settings (see
/// [`BadUsage`]), 125 if the agent itself failed (e.g. eBPF unavailable).
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let settings = AgentSettings::from_args(args).map_err(BadUsage)?;
    let served = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(serve(settings)));
    Ok(match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => super::failed(&error),
    })
}

/// How long the agent waits at exit for the broker to take the final messages.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// The state directory, open and locked, when the agent keeps state.
#[cfg(unix)]
type Keeper = crate::state::StateDir;
#[cfg(not(unix))]
type Keeper = std::convert::Infallible;

#[cfg(unix)]
fn open_state(settings: &AgentSettings) -> anyhow::Result<Option<Keeper>> {
    settings
        .state_dir
        .as_deref()
        .map(crate::state::StateDir::open)
        .transpose()
}

#[cfg(not(unix))]
fn open_state(settings: &AgentSettings) -> anyhow::Result<Option<Keeper>> {
    anyhow::ensure!(
        settings.state_dir.is_none(),
        "--state-dir needs Linux (the kernel state is kept in bpffs)"
    );
    Ok(None)
}

/// Takes up the tasks the previous agent left, if its kernel state is
/// still there; a registry without it (the machine restarted) is dropped.
#[cfg(unix)]
fn resume(engine: &mut Engine, state: &Keeper) -> anyhow::Result<Vec<String>> {
    if !engine.resumed() {
        state.clear()?;
        return Ok(Vec::new());
    }
    let Some(registry) = state.load()? else {
        return Ok(Vec::new());
    };
    let awaiting: Vec<String> = registry
        .tasks
        .iter()
        .filter(|task| task.awaiting_discovery)
        .map(|task| task.task_id.clone())
        .collect();
    let restored = engine.restore(registry);
    tracing::info!("resumed {restored} tasks left by the previous agent");
    Ok(awaiting)
}

#[cfg(not(unix))]
fn resume(_engine: &mut Engine, state: &Keeper) -> anyhow::Result<Vec<String>> {
    match *state {}
}

/// Saves the registry if it changed.
#[cfg(unix)]
fn save_state(engine: &mut Engine, state: Option<&Keeper>) {
    let Some(state) = state else { return };
    if !engine.take_changed() {
        return;
    }
    if let Err(err) = state.save(&engine.registry()) {
        tracing::warn!("{err:#}");
    }
}

#[cfg(not(unix))]
fn save_state(_engine: &mut Engine, _state: Option<&Keeper>) {}

/// The agent's loop.
pub async fn serve(settings: AgentSettings) -> anyhow::Result<()> {
    let state = open_state(&settings)?;
    let options = collect::Options {
        #[cfg(unix)]
        keep_kernel_state: state.as_ref().map(|state| state.kernel_state_name()),
        #[cfg(not(unix))]
        keep_kernel_state: None,
    };
    let backend = collect::open(settings.backend, &options)?;
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(StdoutSink::default())];
    let mut control = None;
    let mut flusher = None;
    let mut mqtt_status = None;
    if let Some(mqtt) = settings.mqtt.clone() {
        let (sink, flush, incoming) = export::mqtt::start(mqtt)?;
        mqtt_status = Some(sink.status());
        sinks.push(Box::new(sink));
        control = Some(incoming);
        flusher = Some(flush);
    }
    let http = match &settings.listen {
        Some(addr) => {
            let health =
                Health::starting(&settings.proplet_id, backend.source(), settings.max_tasks);
            let latest = Latest::new(health).with_peer_series(settings.metrics_peers);
            let server = export::http::start(addr, latest)?;
            sinks.push(Box::new(server.latest().sink()));
            Some(server)
        }
        None => None,
    };
    let mut engine = Engine::new(backend, Box::new(Fanout(sinks)), settings.max_tasks);
    // Started tasks that may turn out to run inside the proplet process.
    let mut in_process_checks: Vec<(Instant, String)> = Vec::new();
    if let Some(state) = &state {
        for task_id in resume(&mut engine, state)? {
            if settings.proplet_process.is_some() {
                in_process_checks.push((Instant::now() + settings.discovery_grace, task_id));
            }
        }
    }
    if settings.propeller {
        start_discovery(&mut engine, &settings)?;
    }
    // Every hook the agent's mode needs is attached by now.
    tracing::info!("propmon agent started ({:?} backend)", engine.source());
    for spec in &settings.attach {
        if engine.has_task(&spec.task_id) {
            continue; // resumed
        }
        if let Err(err) = attach(&mut engine, &settings, spec) {
            tracing::error!("task {}: {err:#}", untrusted(&spec.task_id));
        }
    }
    for spec in &settings.attach_cgroup {
        if engine.has_task(&spec.task_id) {
            continue; // resumed
        }
        if let Err(err) = attach_cgroup(&mut engine, &settings, spec) {
            tracing::error!("task {}: {err:#}", untrusted(&spec.task_id));
        }
    }
    save_state(&mut engine, state.as_ref());
    let http = http.map(|server| Served {
        server,
        mqtt: mqtt_status,
    });
    if let Some(http) = &http {
        http.report(&mut engine, &settings.proplet_id, settings.max_tasks);
    }
    let mut proplet = settings
        .enable_monitoring
        .then(|| PropletReporter::new(settings.proplet_id.clone(), settings.namespace.clone()));
    let mut next_proplet = Instant::now() + settings.metrics_interval;
    let mut signals = StopSignals::install()?;
    let mut events = EventWaker::new(engine.event_fd());
    let mut alarm = Alarm::new();
    let mut next_proplet_search = Instant::now() + PROPLET_SEARCH_PERIOD;
    loop {
        let now = Instant::now();
        let mut wake = engine.next_wakeup(now);
        if settings.propeller && settings.proplet_process.is_some() {
            wake = wake.min(next_proplet_search);
        }
        if proplet.is_some() {
            wake = wake.min(next_proplet);
        }
        if let Some((at, _)) = in_process_checks.first() {
            wake = wake.min(*at);
        }
        tokio::select! {
            _ = async {
                tokio::select! {
                    _ = alarm.until(wake) => {}
                    _ = events.ready() => {}
                }
            } => {
                let now = Instant::now();
                for ended in engine.round(now) {
                    tracing::info!("task {} ended", untrusted(&ended.task_id));
                }
                if settings.propeller && now >= next_proplet_search {
                    next_proplet_search = now + PROPLET_SEARCH_PERIOD;
                    follow_proplet(&mut engine, &settings);
                }
                attribute_in_process(&mut engine, &settings, &mut in_process_checks, now);
                if let Some(reporter) = proplet.as_mut().filter(|_| now >= next_proplet) {
                    let dropped = engine.sink_mut().dropped();
                    let message = reporter.sample(
                        engine.task_count(),
                        dropped,
                        engine.source(),
                        engine.kernel_health(),
                    );
                    engine.sink_mut().send(&Outgoing::proplet(message));
                    engine.sink_mut().flush();
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
                if state.is_some() && engine.keeps_state() {
                    tracing::info!(
                        "received {stop}: {} tasks keep being counted in the kernel; the next \
                         agent with this --state-dir resumes them",
                        engine.task_count()
                    );
                    save_state(&mut engine, state.as_ref());
                    engine.suspend();
                } else {
                    tracing::info!(
                        "received {stop}: final messages for {} tasks",
                        engine.task_count()
                    );
                    engine.finish_all();
                }
                break;
            }
        }
        save_state(&mut engine, state.as_ref());
        if let Some(http) = &http {
            http.report(&mut engine, &settings.proplet_id, settings.max_tasks);
        }
    }
    drop(http);
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

/// A start or stop from the Manager. Its ids and topic are untrusted
/// text: every log line shows them escaped and truncated.
fn on_control(
    engine: &mut Engine,
    settings: &AgentSettings,
    in_process_checks: &mut Vec<(Instant, String)>,
    message: &Incoming,
) {
    match propeller::parse(&message.topic, &message.payload, &settings.proplet_id) {
        Ok(Control::Start(start)) => on_start(engine, settings, in_process_checks, start),
        Ok(Control::Stop { task_id }) => {
            in_process_checks.retain(|(_, id)| *id != task_id);
            let shown = untrusted(&task_id);
            match engine.stop(&task_id) {
                Some(_) => tracing::info!("task {shown} stopped by the Manager"),
                None => tracing::info!("stop for task {shown}, which is not monitored"),
            }
        }
        Err(propeller::Skipped::NotOurs(target)) => {
            tracing::debug!(
                "control message for proplet \"{}\", not ours",
                untrusted(&target)
            );
        }
        Err(err) => tracing::warn!(
            "ignoring a control message on {}: {err}",
            untrusted(&message.topic)
        ),
    }
}

fn on_start(
    engine: &mut Engine,
    settings: &AgentSettings,
    in_process_checks: &mut Vec<(Instant, String)>,
    start: propeller::StartTask,
) {
    let shown = untrusted(&start.task_id);
    if engine.has_task(&start.task_id) {
        tracing::warn!("start for task {shown}: already monitored, ignored");
        return;
    }
    for note in &start.notes {
        tracing::warn!("task {shown}: {note}");
    }
    if !start.profile.enabled {
        tracing::info!("task {shown}: profile disabled, not monitored");
        return;
    }
    let spec = match task_spec(&start.task_id, &settings.proplet_id, start.profile) {
        Ok(spec) => spec,
        Err(err) => {
            tracing::warn!("start for task {shown}: {err:#}; skipped");
            return;
        }
    };
    match engine.discover(spec) {
        Ok(_) => {
            tracing::info!("task {shown}: waiting for its process");
            if settings.proplet_process.is_some() {
                let at = Instant::now() + settings.discovery_grace;
                in_process_checks.push((at, start.task_id.clone()));
                in_process_checks.sort();
            }
        }
        Err(err) => tracing::error!("task {shown}: {err:#}"),
    }
}

/// How often a proplet process that is not found (or exited) is looked for.
const PROPLET_SEARCH_PERIOD: Duration = Duration::from_secs(5);

/// Propeller mode: tasks are found by exec discovery; with the proplet
/// process known, only its descendants can be a task's root.
fn start_discovery(engine: &mut Engine, settings: &AgentSettings) -> anyhow::Result<()> {
    let require_lineage = settings.proplet_process.is_some();
    engine
        .enable_discovery(require_lineage, settings.discovery_timeout)
        .context("starting exec discovery")?;
    if require_lineage {
        follow_proplet(engine, settings);
    }
    Ok(())
}

/// Attaches the proplet process when it is found (again).
fn follow_proplet(engine: &mut Engine, settings: &AgentSettings) {
    let Some(process) = &settings.proplet_process else {
        return;
    };
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    if engine.proplet_pid().is_some_and(alive) {
        return;
    }
    match find_proplet(process) {
        Some(pid) => match engine.attach_proplet(pid) {
            Ok(()) => {
                tracing::info!("proplet process {pid} attached: its descendants can be tasks")
            }
            Err(err) => tracing::warn!("{err:#}"),
        },
        None => tracing::warn!(
            "the proplet process is not running: no task can be discovered until it is"
        ),
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
        let shown = untrusted(&task_id);
        let Some(pid) = settings.proplet_process.as_ref().and_then(find_proplet) else {
            tracing::warn!("task {shown}: no process yet, and the proplet process is not found");
            continue;
        };
        let Some(spec) = engine.withdraw(&task_id) else {
            continue;
        };
        match engine.attribute_to_proplet(spec, pid) {
            Ok(()) => tracing::info!("task {shown}: attributed to the proplet process {pid}"),
            Err(err) => tracing::error!("task {shown}: {err:#}"),
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
        let shown = untrusted(&spec.task_id);
        tracing::info!("task {shown}: profile disabled, not monitored");
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
        untrusted(&spec.task_id),
        spec.pid
    );
    Ok(())
}

/// A task defined by a cgroup: a daemon's profile unless one is given.
fn attach_cgroup(
    engine: &mut Engine,
    settings: &AgentSettings,
    spec: &CgroupSpec,
) -> anyhow::Result<()> {
    let profile = settings.profile_for(None, true);
    if !profile.enabled {
        let shown = untrusted(&spec.task_id);
        tracing::info!("task {shown}: profile disabled, not monitored");
        return Ok(());
    }
    if engine.has_task(&spec.task_id) {
        bail!("a task with this id is already monitored");
    }
    let cgroup = Cgroup::resolve(&spec.path)?;
    let path = cgroup.path.clone();
    let task = task_spec(&spec.task_id, &settings.proplet_id, profile)?;
    engine
        .attach_cgroup(task, cgroup)
        .with_context(|| format!("attaching cgroup {path}"))?;
    tracing::info!(
        "task {}: the processes in cgroup {path} and below it",
        untrusted(&spec.task_id)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_specs_parse_and_fail_clearly() {
        assert_eq!(
            parse_attach_cgroup("db=system.slice/db.service"),
            Ok(CgroupSpec {
                task_id: "db".into(),
                path: "system.slice/db.service".into()
            })
        );
        for bad in ["db", "db=", "=system.slice"] {
            let err = parse_attach_cgroup(bad).unwrap_err();
            assert!(err.len() < 200 && !err.contains('\n'), "{err}");
        }
        assert!(
            parse_attach_cgroup("db")
                .unwrap_err()
                .contains("expected TASK_ID=PATH")
        );
    }

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
            // Issue 10: ids are refused where they enter.
            (
                "a\nb=5",
                r#"the task id "a\nb" contains a control character"#,
            ),
            (
                &format!("{}=5", "t".repeat(256)),
                "256 bytes long; the limit is 255",
            ),
        ] {
            let err = parse_attach(bad).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
            assert!(
                err.len() < 200 && !err.contains('\n'),
                "one short line: {err}"
            );
        }
    }

    #[test]
    fn daemons_without_a_profile_get_long_running_daemon() {
        let settings = AgentSettings {
            attach: vec![],
            attach_cgroup: vec![],
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
            discovery_timeout: DEFAULT_DISCOVERY_TIMEOUT,
            state_dir: None,
            max_tasks: monitor_common::MAX_TASKS,
            listen: None,
            metrics_peers: false,
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
