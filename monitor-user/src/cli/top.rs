//! `propmon top`: a live table of tasks (CPU, memory, disk and network
//! rates, processes), in the terminal or as plain text (`--batch`).
//!
//! The figures come from one of two feeds, each on a thread of its own
//! that sends [`Update`]s to the view:
//!
//! - standalone (`-- CMD`, `--attach`): the engine, with the backend
//!   loaded here, sending its messages to a channel instead of stdout;
//! - `--connect ADDR`: a running agent's `/api/v1/tasks`, polled.
//!
//! The view (`top::tui`, `top::text`) only reads `top::model`'s board.

use std::{
    ffi::OsString,
    io::{IsTerminal as _, Write as _},
    path::Path,
    process::{ExitCode, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use clap::Args;
use tokio::{process::Command, sync::oneshot, time::sleep_until};

use super::{
    BadUsage,
    agent::{AttachSpec, parse_attach},
    host_name,
    signals::{Stop, StopSignals, forward},
    wake::EventWaker,
};
use crate::{
    collect::{self, BackendChoice, SpawnError},
    duration::parse_interval,
    engine::{Engine, task_spec},
    export::{Outgoing, Sink},
    input::untrusted,
    message::{Source, TaskMetricsMessage, rfc3339},
    profiles::Preset,
    tasks::TaskSpec,
    top::{
        client::{AgentClient, TaskList},
        model::{Board, SortKey},
        terminal::Screen,
        text,
        tui::{Action, App},
    },
};

/// After `q` (or a signal), how long CMD gets to end after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the terminal view looks for keys (and redraws).
const KEY_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Watch a running agent through its local API (its --listen): IP:PORT
    /// or unix:/PATH. Without a value: 127.0.0.1:9464.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = crate::export::http::DEFAULT_LISTEN,
        conflicts_with_all = ["attach", "command", "task_id"]
    )]
    pub connect: Option<String>,
    /// Monitor the running process PID and its descendants as task
    /// TASK_ID (repeatable); profile=NAME sets its profile and interval.
    #[arg(long = "attach", value_name = "TASK_ID=PID[,profile=NAME]", value_parser = parse_attach)]
    pub attach: Vec<AttachSpec>,
    /// Task id of CMD [default: CMD's file name].
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,
    /// Time between refreshes (and, standalone, between the tasks'
    /// samples): 1s, 500ms, 2s.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval, default_value = "1s")]
    pub interval: Duration,
    /// The column rows are sorted by, largest first (keys c, m, d, n).
    #[arg(long, value_enum, default_value = "cpu")]
    pub sort: SortKey,
    /// Print the table as plain text, one table per refresh, instead of
    /// the terminal view.
    #[arg(long)]
    pub batch: bool,
    /// With --batch: stop after N tables.
    #[arg(long, value_name = "N", requires = "batch", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Where figures come from, standalone: eBPF, the sysinfo fallback, or
    /// eBPF when it loads and sysinfo otherwise (--connect shows the
    /// agent's).
    #[arg(long, value_enum, env = "PROPMON_BACKEND")]
    pub backend: Option<BackendChoice>,
    /// The command to run as a task, and its arguments.
    #[arg(value_name = "CMD", trailing_var_arg = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

/// Validated settings: where the figures come from, and how they are
/// shown.
struct TopSettings {
    feed: FeedSettings,
    interval: Duration,
    view: ViewSettings,
}

struct ViewSettings {
    sort: SortKey,
    batch: bool,
    iterations: Option<u64>,
}

enum FeedSettings {
    Local(LocalSettings),
    Remote(AgentClient),
}

/// What the standalone feed monitors.
struct LocalSettings {
    backend: BackendChoice,
    /// CMD and its task.
    command: Option<(TaskSpec, Vec<OsString>)>,
    attach: Vec<(TaskSpec, u32)>,
    /// The terminal view owns the terminal: CMD gets no stdin and its
    /// output is discarded.
    quiet_command: bool,
}

impl TopSettings {
    fn from_args(args: TopArgs) -> anyhow::Result<Self> {
        let feed = match args.connect {
            Some(addr) => FeedSettings::Remote(AgentClient::parse(&addr)?),
            None => FeedSettings::Local(LocalSettings::from_args(&args)?),
        };
        Ok(TopSettings {
            feed,
            interval: args.interval,
            view: ViewSettings {
                sort: args.sort,
                batch: args.batch,
                iterations: args.iterations,
            },
        })
    }
}

impl LocalSettings {
    fn from_args(args: &TopArgs) -> anyhow::Result<Self> {
        if args.command.is_empty() && args.attach.is_empty() {
            bail!(
                "nothing to show: give a command (propmon top -- CMD), --attach TASK_ID=PID, or \
                 --connect ADDR to watch a running agent"
            );
        }
        let slots = args.attach.len() + usize::from(!args.command.is_empty());
        if slots > monitor_common::MAX_TASKS as usize {
            bail!(
                "{slots} tasks: propmon top monitors at most {}",
                monitor_common::MAX_TASKS
            );
        }
        let proplet_id = host_name();
        // Every task is sampled at each refresh, unless its own profile
        // says otherwise.
        let mut profile = Preset::Intensive.profile();
        profile.interval = args.interval;
        let command = match args.command.split_first() {
            Some((program, _)) => {
                let task_id = match &args.task_id {
                    Some(id) => id.clone(),
                    None => default_task_id(program),
                };
                let spec =
                    task_spec(&task_id, &proplet_id, profile.clone()).context("--task-id")?;
                Some((spec, args.command.clone()))
            }
            None if args.task_id.is_some() => bail!("--task-id names CMD's task: give a CMD"),
            None => None,
        };
        let mut attach = Vec::new();
        for spec in &args.attach {
            let own = spec.profile.map(Preset::profile);
            let task = task_spec(&spec.task_id, &proplet_id, own.unwrap_or(profile.clone()))?;
            attach.push((task, spec.pid));
        }
        Ok(LocalSettings {
            backend: args.backend.unwrap_or(BackendChoice::Auto),
            command,
            attach,
            quiet_command: !args.batch,
        })
    }
}

/// CMD's file name, a readable default where `run` draws a UUID.
fn default_task_id(program: &OsString) -> String {
    let name = Path::new(program)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    name.filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "task".to_owned())
}

/// Exit status: 0 once quit (or, in batch mode, after its tables); 2 for
/// invalid arguments; 1 when the agent cannot be read; 125 when propmon
/// itself failed; 126 or 127 when CMD cannot run; 128+N after signal N.
pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let TopSettings {
        feed,
        interval,
        view,
    } = TopSettings::from_args(args).map_err(BadUsage)?;
    if !view.batch && !std::io::stdout().is_terminal() {
        let why = anyhow::anyhow!("stdout is not a terminal: add --batch for plain-text tables");
        return Err(BadUsage(why).into());
    }
    let mut feed = match feed {
        FeedSettings::Remote(client) => start_remote(client, interval)?,
        FeedSettings::Local(local) => match start_local(local) {
            Ok(feed) => feed,
            Err(StartError::Spawn(error)) => {
                eprintln!("propmon: {error:#}");
                return Ok(ExitCode::from(error.exit_code()));
            }
            Err(StartError::Internal(error)) => return Ok(super::failed(&error)),
        },
    };
    let shown = if view.batch {
        batch(&view, &mut feed)
    } else {
        interactive(&view, &mut feed)
    };
    feed.stop();
    // Ended by a signal: 128 + its number, as `run` does.
    shown.map(|stop| stop.map_or(ExitCode::SUCCESS, |stop| ExitCode::from(stop.exit_code())))
}

/// What a feed tells the view.
enum Update {
    /// The messages the engine sent in one round (standalone).
    Sent(Vec<TaskMetricsMessage>),
    /// The agent's task list (`--connect`).
    Listed(TaskList),
    /// The agent could not be read this time.
    Unreachable(String),
    /// Every task ended: nothing more will come.
    AllEnded,
    /// SIGINT or SIGTERM: the view ends too.
    Stopped(Stop),
}

/// A feed's thread and its channel.
struct Feed {
    updates: mpsc::Receiver<Update>,
    /// Dropping it asks the thread to stop.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Where the figures come from, for the title line.
    origin: String,
    /// An agent's (`--connect`), not the engine's.
    remote: bool,
}

impl Feed {
    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("propmon top's feed panicked");
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why the standalone feed could not start.
enum StartError {
    Spawn(SpawnError),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(error: anyhow::Error) -> Self {
        StartError::Internal(error)
    }
}

/// The engine on a thread of its own (the thread that forks CMD must be
/// the one that asked the kernel to adopt it); returns once CMD runs and
/// every PID is attached, or with why not.
fn start_local(settings: LocalSettings) -> Result<Feed, StartError> {
    let (ready, started) = mpsc::channel();
    let (updates_sender, updates) = mpsc::channel();
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("propmon-top-engine".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(follow(settings, ready, updates_sender, stopped)),
                Err(err) => {
                    let _ = ready.send(Err(StartError::Internal(err.into())));
                }
            }
        })
        .context("starting the engine's thread")?;
    let mut feed = Feed {
        updates,
        stop: Some(stop),
        thread: Some(thread),
        origin: String::new(),
        remote: false,
    };
    match started.recv() {
        Ok(Ok(source)) => {
            feed.origin = format!("{source:?} backend").to_lowercase();
            Ok(feed)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(StartError::Internal(anyhow::anyhow!(
            "the engine's thread ended before it started"
        ))),
    }
}

/// Keeps the messages the engine sends, for the view.
struct ChannelSink(mpsc::Sender<TaskMetricsMessage>);

impl Sink for ChannelSink {
    fn send(&mut self, message: &Outgoing) {
        if let Some(message) = message.task_message() {
            // Fails only once the feed's loop, which outlives the engine,
            // is gone: nobody is left to show the message to.
            let _ = self.0.send(TaskMetricsMessage::clone(message));
        }
    }
}

/// The engine with CMD started and every PID attached.
struct Started {
    engine: Engine,
    child: Option<tokio::process::Child>,
    sent: mpsc::Receiver<TaskMetricsMessage>,
    signals: StopSignals,
}

/// Everything that can fail comes before CMD starts, so that a failure
/// leaves nothing running.
fn start_engine(settings: LocalSettings) -> Result<Started, StartError> {
    let signals = StopSignals::install()?;
    let backend = collect::open(settings.backend, &collect::Options::default())?;
    let (sink, sent) = mpsc::channel();
    let capacity = settings.attach.len() + usize::from(settings.command.is_some());
    let mut engine = Engine::new(backend, Box::new(ChannelSink(sink)), capacity as u32);
    for (spec, pid) in settings.attach {
        let task_id = untrusted(&spec.task_id).to_string();
        engine
            .attach(spec, pid)
            .with_context(|| format!("task {task_id}: attaching PID {pid}"))?;
    }
    let mut child = None;
    if let Some((spec, argv)) = settings.command {
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        if settings.quiet_command {
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        } else {
            command.stdout(super::run::stderr_stdio()?);
        }
        let (_, spawned) = engine
            .spawn(spec, &mut command)
            .map_err(StartError::Spawn)?;
        child = Some(spawned);
    }
    Ok(Started {
        engine,
        child,
        sent,
        signals,
    })
}

/// The standalone feed's loop: rounds of the engine until every task
/// ended or the view stops it.
async fn follow(
    settings: LocalSettings,
    ready: mpsc::Sender<Result<Source, StartError>>,
    updates: mpsc::Sender<Update>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Started {
        mut engine,
        mut child,
        sent,
        mut signals,
    } = match start_engine(settings) {
        Ok(started) => started,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let _ = ready.send(Ok(engine.source()));
    let mut events = EventWaker::new(engine.event_fd());
    // When CMD was asked to stop (it gets STOP_GRACE to end).
    let mut stopping: Option<Instant> = None;
    loop {
        let wake = engine.next_wakeup(Instant::now());
        tokio::select! {
            _ = async {
                tokio::select! {
                    _ = sleep_until(wake.into()) => {}
                    _ = events.ready() => {}
                }
            } => {
                let now = Instant::now();
                engine.round(now);
                let messages: Vec<TaskMetricsMessage> = sent.try_iter().collect();
                if !messages.is_empty() && updates.send(Update::Sent(messages)).is_err() {
                    break; // the view is gone
                }
                if engine.task_count() == 0 {
                    let _ = updates.send(Update::AllEnded);
                    break;
                }
                if stopping.is_some_and(|at| now - at > STOP_GRACE) {
                    tracing::warn!("the command is still running; propmon top stops tracking it");
                    break;
                }
            }
            // Reaped as soon as it exits, so that its task can end.
            _ = wait(&mut child) => child = None,
            _ = &mut stopped, if stopping.is_none() => {
                if !stop_command(&mut child, Stop::Terminate, &mut stopping) {
                    break;
                }
            }
            stop = signals.recv() => {
                let _ = updates.send(Update::Stopped(stop));
                if !stop_command(&mut child, stop, &mut stopping) {
                    break;
                }
            }
        }
    }
    drop(engine); // detaches the programs
}

/// Waits for CMD to exit; never resolves when there is none.
async fn wait(child: &mut Option<tokio::process::Child>) {
    match child {
        Some(child) => {
            let _ = child.wait().await;
        }
        None => std::future::pending().await,
    }
}

/// Passes a stop on to CMD; `false` when there is no CMD to wait for.
fn stop_command(
    child: &mut Option<tokio::process::Child>,
    stop: Stop,
    stopping: &mut Option<Instant>,
) -> bool {
    let Some(child) = child else {
        return false;
    };
    forward(child, stop);
    stopping.get_or_insert_with(Instant::now);
    true
}

/// Polls the agent every `interval` on a thread of its own.
fn start_remote(client: AgentClient, interval: Duration) -> anyhow::Result<Feed> {
    let (updates_sender, updates) = mpsc::channel();
    let (stop, stopped) = oneshot::channel();
    let origin = format!("agent at {}", client.addr());
    let thread = std::thread::Builder::new()
        .name("propmon-top-poll".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(poll(client, interval, updates_sender, stopped)),
                Err(err) => {
                    let why = format!("starting the async runtime: {err}");
                    let _ = updates_sender.send(Update::Unreachable(why));
                }
            }
        })
        .context("starting the polling thread")?;
    Ok(Feed {
        updates,
        stop: Some(stop),
        thread: Some(thread),
        origin,
        remote: true,
    })
}

async fn poll(
    client: AgentClient,
    interval: Duration,
    updates: mpsc::Sender<Update>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut signals = match StopSignals::install() {
        Ok(signals) => Some(signals),
        Err(err) => {
            tracing::warn!("{err:#}");
            None
        }
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = async {
            ticks.tick().await;
            client.tasks().await
        };
        let update = tokio::select! {
            listed = step => match listed {
                Ok(list) => Update::Listed(list),
                Err(err) => Update::Unreachable(format!("{err:#}")),
            },
            _ = &mut stopped => return,
            stop = signal(&mut signals) => Update::Stopped(stop),
        };
        let last = matches!(update, Update::Stopped(_));
        if updates.send(update).is_err() || last {
            return;
        }
    }
}

async fn signal(signals: &mut Option<StopSignals>) -> Stop {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

/// Batch mode: a table per update, until the iterations are done, the
/// tasks ended, or a signal (returned).
fn batch(settings: &ViewSettings, feed: &mut Feed) -> anyhow::Result<Option<Stop>> {
    let mut board = Board::default();
    let mut printed = 0;
    let mut stdout = std::io::stdout().lock();
    while settings.iterations.is_none_or(|n| printed < n) {
        let Ok(update) = feed.updates.recv() else {
            return Ok(None);
        };
        match update {
            Update::Sent(messages) => board.record(messages),
            Update::Listed(list) => {
                warn_skipped(&list);
                board.replace(list.messages);
            }
            Update::Unreachable(why) => bail!("{why}"),
            Update::AllEnded => return Ok(None),
            Update::Stopped(stop) => return Ok(Some(stop)),
        }
        let table = text::table(&board, settings.sort, &rfc3339(SystemTime::now()));
        if stdout
            .write_all(table.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(None); // e.g. `| head`: the reader has seen enough
        }
        printed += 1;
    }
    Ok(None)
}

fn warn_skipped(list: &TaskList) {
    if list.skipped > 0 {
        tracing::warn!(
            "{} entries of the agent's task list are not task messages (another version?); \
             skipped",
            list.skipped
        );
    }
}

/// The terminal view, until `q` (or a signal, returned).
fn interactive(settings: &ViewSettings, feed: &mut Feed) -> anyhow::Result<Option<Stop>> {
    let mut board = Board::default();
    let mut app = App::new(settings.sort, feed.origin.clone());
    if feed.remote {
        // An agent that is not there is one line on the plain terminal,
        // not a screen that says so.
        match feed.updates.recv() {
            Ok(Update::Listed(list)) => board.replace(list.messages),
            Ok(Update::Unreachable(why)) => bail!("{why}"),
            Ok(Update::Stopped(stop)) => return Ok(Some(stop)),
            _ => return Ok(None),
        }
    }
    let mut screen = Screen::enter()?;
    // What the status line says, most important first.
    let mut problem: Option<String> = None;
    let mut finished: Option<String> = None;
    loop {
        if Screen::lost() {
            bail!("the terminal was restored after a panic");
        }
        loop {
            match feed.updates.try_recv() {
                Ok(Update::Sent(messages)) => board.record(messages),
                Ok(Update::Listed(list)) => {
                    problem = (list.skipped > 0).then(|| {
                        format!(
                            "{} task entries were not task messages; skipped",
                            list.skipped
                        )
                    });
                    board.replace(list.messages);
                }
                Ok(Update::Unreachable(why)) => problem = Some(format!("{why}; retrying")),
                Ok(Update::AllEnded) => finished = Some("every task ended; q quits".to_owned()),
                Ok(Update::Stopped(stop)) => return Ok(Some(stop)),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    finished.get_or_insert_with(|| "no more figures; q quits".to_owned());
                    break;
                }
            }
        }
        app.notice = problem
            .clone()
            .or_else(|| finished.clone())
            .or_else(|| screen.last_log_line());
        screen
            .terminal
            .draw(|frame| app.draw(frame, &board))
            .context("drawing on the terminal")?;
        if on_terminal_event(&mut app, &board)? == Action::Quit {
            return Ok(None);
        }
    }
}

/// Waits up to [`KEY_POLL`] for a key, and acts on it.
fn on_terminal_event(app: &mut App, board: &Board) -> anyhow::Result<Action> {
    use ratatui::crossterm::event::{self, Event};
    if !event::poll(KEY_POLL).context("reading the terminal")? {
        return Ok(Action::Continue);
    }
    Ok(match event::read().context("reading the terminal")? {
        Event::Key(key) => app.on_key(key, board),
        // A resize is redrawn at the next turn of the loop.
        _ => Action::Continue,
    })
}
