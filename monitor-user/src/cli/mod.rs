//! Command-line interface: one module per subcommand; `main` only dispatches.
//! Arguments are parsed in two stages: raw flags here, validated settings
//! in each subcommand's module.

pub mod agent;
pub mod config;
#[cfg(unix)]
pub mod forget_state;
pub mod profiles;
pub mod run;
mod served;
pub mod signals;
pub mod top;
pub mod wake;
#[cfg(target_os = "linux")]
pub mod workload;

use std::{ffi::OsString, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};

use crate::{
    collect::BackendChoice,
    duration::{parse_interval, parse_seconds},
    export::http::ListenAddr,
    input::{check_topic_level, read_text_file},
    profiles::{MonitoringProfile, Preset, parse_profile_json},
    proplet::parse_metrics_interval,
};

/// Exit status for invalid arguments or configuration, as clap gives for
/// its own errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when propmon itself failed (e.g. eBPF unavailable), as
/// `env`, `timeout` and `docker run` do.
pub const EXIT_PROPMON_FAILED: u8 = 125;
/// Most messages `--mqtt-queue-size` may keep: about 1 KB each, so 1 GB.
pub const MAX_MQTT_QUEUE_SIZE: usize = 1_000_000;

/// An invalid argument or configuration value: `main` prints it on one
/// line and exits with [`EXIT_USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct BadUsage(pub anyhow::Error);

/// Prints propmon's own failure and gives [`EXIT_PROPMON_FAILED`].
pub fn failed(error: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("propmon: {error:#}");
    std::process::ExitCode::from(EXIT_PROPMON_FAILED)
}

/// The host name, the default proplet id.
pub fn host_name() -> String {
    #[cfg(unix)]
    if let Some(name) = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
    {
        return name;
    }
    std::env::var("COMPUTERNAME").unwrap_or_else(|_| "propmon".to_owned())
}

/// Checks a proplet id (`--proplet-id`, `PROPLET_ID`, the host name): it
/// is matched against the Manager's messages and names our MQTT client.
pub fn check_proplet_id(id: &str) -> anyhow::Result<()> {
    check_topic_level("--proplet-id", id)?;
    Ok(())
}

/// propmon measures what every task on an edge node consumes, from inside
/// the kernel, and reports it as Propeller metrics.
#[derive(Debug, Parser)]
#[command(name = "propmon", version, propagate_version = true)]
pub struct Cli {
    /// Log filter for stderr (error, warn, info, debug, trace or a tracing
    /// filter directive).
    #[arg(long, global = true, env = "PROPMON_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD as a task and print its metrics as JSON lines on stdout.
    ///
    /// CMD and every process it forks are tracked from their first
    /// instruction. CMD's stdout goes to stderr so that stdout carries only
    /// metrics. propmon exits with CMD's exit status (128+N if a signal N
    /// ended it), 125 if propmon itself failed, 126/127 if CMD could not be
    /// executed or found.
    Run(RunArgs),
    /// Monitor many tasks at once, each with its own profile, until stopped.
    ///
    /// Messages go to stdout as JSON lines. SIGTERM or SIGINT sends a final
    /// message for every task, detaches the programs and exits 0.
    Agent(AgentArgs),
    /// List the monitoring profiles.
    Profiles(ProfilesArgs),
    /// Forget what an agent kept with --state-dir: its task registry and
    /// its kernel state (the programs it left counting are detached). The
    /// tasks are not resumed by the next agent.
    ForgetState(ForgetStateArgs),
    /// A live table of tasks (CPU, memory, disk, network, processes), like
    /// top: of CMD, of attached processes, or of a running agent
    /// (--connect); in the terminal, or as plain text (--batch).
    ///
    /// Keys: c, m, d, n sort by CPU, memory, disk, network; up and down
    /// select a task; Enter shows its details; q quits.
    Top(top::TopArgs),
    /// Built-in workloads with known ground truth, for the demo and the tests.
    Workload(WorkloadArgs),
}

/// How a task's monitoring profile is chosen.
#[derive(Debug, Args, Clone, Default)]
pub struct ProfileArgs {
    /// Monitoring profile: standard (10 s), minimal, intensive (1 s),
    /// batch_processing, real_time_api, long_running_daemon or disabled.
    #[arg(long, value_name = "NAME", value_parser = Preset::from_name)]
    pub profile: Option<Preset>,
    /// A monitoring profile as JSON (Propeller's fields; missing ones take
    /// the standard preset's values), or @FILE to read it from a file.
    #[arg(long, value_name = "JSON|@FILE", conflicts_with = "profile")]
    pub profile_json: Option<String>,
}

impl ProfileArgs {
    /// The profile asked for, if any; what was ignored in it is logged.
    pub fn resolve(&self) -> anyhow::Result<Option<MonitoringProfile>> {
        if let Some(preset) = self.profile {
            return Ok(Some(preset.profile()));
        }
        let Some(json) = &self.profile_json else {
            return Ok(None);
        };
        let text = match json.strip_prefix('@') {
            Some(path) => {
                read_text_file(path.as_ref()).with_context(|| format!("the profile file {path}"))?
            }
            None => json.clone(),
        };
        let parsed = parse_profile_json(&text)?;
        for note in &parsed.notes {
            tracing::warn!("{note}");
        }
        Ok(Some(parsed.profile))
    }
}

/// Where to publish (MQTT); nothing is published without `--mqtt-url`.
#[derive(Debug, Args, Clone, Default)]
pub struct MqttArgs {
    /// Broker address: mqtt://host:port (or tcp://), mqtts://host:port (TLS).
    #[arg(long, value_name = "URL", env = "PROPLET_MQTT_ADDRESS")]
    pub mqtt_url: Option<String>,
    /// MQTT user name (Propeller: the proplet's client id).
    #[arg(long, value_name = "NAME", env = "PROPLET_CLIENT_ID")]
    pub mqtt_username: Option<String>,
    /// MQTT password (Propeller: the proplet's client key).
    #[arg(
        long,
        value_name = "SECRET",
        env = "PROPLET_CLIENT_KEY",
        hide_env_values = true
    )]
    pub mqtt_password: Option<String>,
    /// MQTT client id [default: propmon-<proplet id>; must differ from the
    /// proplet's own, or the broker drops one of the two sessions].
    #[arg(long, value_name = "ID", env = "PROPMON_MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,
    /// CA certificate (PEM) that signed an mqtts:// broker's certificate.
    #[arg(long, value_name = "FILE", env = "PROPMON_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Domain (tenant) id: topics are m/{domain}/c/{channel}/...
    #[arg(long, value_name = "ID", env = "PROPLET_DOMAIN_ID")]
    pub domain_id: Option<String>,
    /// Channel id: topics are m/{domain}/c/{channel}/...
    #[arg(long, value_name = "ID", env = "PROPLET_CHANNEL_ID")]
    pub channel_id: Option<String>,
    /// Per-task topic: control/proplet/task_metrics (propeller) or
    /// metrics/proplet (rust-v1).
    #[arg(long, value_enum, env = "PROPMON_TOPIC_STYLE")]
    pub topic_style: Option<crate::export::mqtt::TopicStyle>,
    /// Messages kept while the broker is unreachable; beyond it the oldest
    /// are dropped and counted [default: 60000, 10 min of 100 tasks at 1 s].
    #[arg(long, value_name = "N", env = "PROPMON_MQTT_QUEUE_SIZE")]
    pub mqtt_queue_size: Option<usize>,
    /// MQTT version: 5, or 3.1.1 for a broker that refuses 5 [default: 5].
    #[arg(
        long,
        value_enum,
        value_name = "VERSION",
        env = "PROPMON_MQTT_PROTOCOL"
    )]
    pub mqtt_protocol: Option<crate::export::mqtt::Protocol>,
    /// Largest control message taken from the broker (a start message
    /// carries the task's module): bytes, KiB or MiB [default: 32MiB].
    #[arg(long, value_name = "SIZE", env = "PROPMON_MQTT_MAX_MESSAGE_SIZE", value_parser = crate::export::mqtt::parse_message_size)]
    pub mqtt_max_message_size: Option<usize>,
}

impl MqttArgs {
    /// The validated MQTT settings, if a broker is configured.
    pub fn settings(
        &self,
        proplet_id: &str,
        subscribe: &[&str],
    ) -> anyhow::Result<Option<crate::export::mqtt::MqttSettings>> {
        use crate::export::mqtt::{
            DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_QUEUE_SIZE, MqttSettings, PROPLET_METRICS_PATH,
            Protocol, TopicStyle,
        };
        let Some(url) = self.mqtt_url.clone().filter(|url| !url.trim().is_empty()) else {
            return Ok(None);
        };
        let (Some(domain_id), Some(channel_id)) = (&self.domain_id, &self.channel_id) else {
            bail!(
                "--mqtt-url needs --domain-id and --channel-id \
                 (PROPLET_DOMAIN_ID, PROPLET_CHANNEL_ID) to build the topics"
            );
        };
        check_topic_level("--domain-id", domain_id)?;
        check_topic_level("--channel-id", channel_id)?;
        self.check_broker(&url)?;
        let queue_size = self.mqtt_queue_size.unwrap_or(DEFAULT_QUEUE_SIZE);
        if !(1..=MAX_MQTT_QUEUE_SIZE).contains(&queue_size) {
            bail!("--mqtt-queue-size {queue_size}: must be between 1 and {MAX_MQTT_QUEUE_SIZE}");
        }
        let mut settings = MqttSettings {
            url,
            client_id: self
                .mqtt_client_id
                .clone()
                .unwrap_or_else(|| format!("propmon-{proplet_id}")),
            username: self.mqtt_username.clone(),
            password: self.mqtt_password.clone(),
            ca_file: self.mqtt_ca_file.clone(),
            domain_id: domain_id.clone(),
            channel_id: channel_id.clone(),
            topic_style: self.topic_style.unwrap_or(TopicStyle::Propeller),
            queue_size,
            protocol: self.mqtt_protocol.unwrap_or(Protocol::V5),
            max_message_size: self
                .mqtt_max_message_size
                .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
            subscribe: Vec::new(),
            agent_metrics_path: PROPLET_METRICS_PATH,
            publish_task_metrics: true,
        };
        settings.subscribe = subscribe.iter().map(|path| settings.topic(path)).collect();
        Ok(Some(settings))
    }

    /// The broker's address, and the CA file TLS needs, checked now: at
    /// connection time they would be propmon's failure, not a bad argument.
    fn check_broker(&self, url: &str) -> anyhow::Result<()> {
        let endpoint = crate::export::mqtt::Endpoint::parse(url).context("--mqtt-url")?;
        if endpoint.tls && cfg!(feature = "tls") {
            let Some(ca_file) = &self.mqtt_ca_file else {
                bail!("mqtts:// needs the broker's CA certificate: pass --mqtt-ca-file FILE (PEM)");
            };
            read_text_file(ca_file).with_context(|| {
                format!("--mqtt-ca-file: the CA certificate {}", ca_file.display())
            })?;
        }
        Ok(())
    }
}

/// The HTTP listener: nothing is served without `--listen`.
#[derive(Debug, Args, Clone, Default)]
pub struct ListenArgs {
    /// Serve /metrics (Prometheus) and /api/v1/tasks (JSON) over HTTP on
    /// ADDR: IP:PORT, or a unix socket (unix:/PATH, made root-only).
    /// Without a value: 127.0.0.1:9464.
    #[arg(
        long,
        value_name = "ADDR",
        env = "PROPMON_LISTEN",
        num_args = 0..=1,
        default_missing_value = crate::export::http::DEFAULT_LISTEN
    )]
    pub listen: Option<String>,
    /// Let --listen bind an address other than loopback: whoever can reach
    /// it reads every task's id and figures.
    #[arg(
        long,
        value_name = "BOOL",
        env = "PROPMON_LISTEN_NON_LOOPBACK",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub listen_non_loopback: Option<bool>,
    /// Add per-peer series to /metrics: each task's peers as its messages
    /// list them (the profile's max_peers busiest, then "other"), so at
    /// most max_peers + 1 series per task and metric [default: false].
    #[arg(
        long,
        value_name = "BOOL",
        env = "PROPMON_METRICS_PEERS",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub metrics_peers: Option<bool>,
}

impl ListenArgs {
    /// Where to listen, if anywhere; an address reachable from other hosts
    /// only when asked for explicitly.
    pub fn settings(&self) -> anyhow::Result<Option<ListenAddr>> {
        // Empty (e.g. `PROPMON_LISTEN=` in an environment file): off.
        let Some(text) = self
            .listen
            .as_deref()
            .filter(|text| !text.trim().is_empty())
        else {
            return Ok(None);
        };
        let addr = ListenAddr::parse(text)
            .map_err(anyhow::Error::msg)
            .context("--listen")?;
        if !addr.is_local() && !self.listen_non_loopback.unwrap_or(false) {
            bail!(
                "--listen {addr} is not a loopback address: anyone who can reach it would read \
                 every task's id and figures; add --listen-non-loopback to serve there anyway \
                 (and firewall the port), or use 127.0.0.1 or a unix socket"
            );
        }
        Ok(Some(addr.clone()))
    }

    /// Whether `/metrics` has per-peer series; said once if it has no
    /// listener to show them on (an environment file may set both).
    pub fn peer_series(&self, listening: bool) -> bool {
        let asked = self.metrics_peers.unwrap_or(false);
        if asked && !listening {
            tracing::warn!("--metrics-peers does nothing without --listen");
        }
        asked && listening
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Task id put in every message [default: a random UUID].
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,
    /// Proplet id put in every message [default: the host name].
    #[arg(long, value_name = "ID", env = "PROPLET_ID")]
    pub proplet_id: Option<String>,
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Time between two messages (e.g. 1s, 500ms, 2m); overrides the profile's.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Where figures come from: eBPF, the sysinfo fallback, or eBPF when it
    /// loads and sysinfo otherwise.
    #[arg(long, value_enum, default_value = "auto", env = "PROPMON_BACKEND")]
    pub backend: BackendChoice,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// The command to run, and its arguments.
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Monitor the running process PID and all its descendants, present
    /// and future, as task TASK_ID. Options: profile=NAME, daemon=true (a
    /// daemon without a profile gets long_running_daemon). Repeatable.
    #[arg(long = "attach", value_name = "TASK_ID=PID[,profile=NAME][,daemon=true]", value_parser = agent::parse_attach)]
    pub attach: Vec<agent::AttachSpec>,
    /// Monitor every process in the cgroup (v2) PATH and below it, present
    /// and future, as task TASK_ID; PATH is relative to the cgroup v2
    /// mount or absolute under it. Repeatable.
    #[arg(long = "attach-cgroup", value_name = "TASK_ID=PATH", value_parser = agent::parse_attach_cgroup)]
    pub attach_cgroup: Vec<agent::CgroupSpec>,
    /// Default profile of attached tasks that name none.
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Where figures come from [default: auto].
    #[arg(long, value_enum, env = "PROPMON_BACKEND")]
    pub backend: Option<BackendChoice>,
    /// Proplet id put in every message [default: the host name].
    #[arg(long, value_name = "ID", env = "PROPLET_ID")]
    pub proplet_id: Option<String>,
    /// Namespace of the proplet-level message [default: default].
    #[arg(long, env = "PROPLET_NAMESPACE")]
    pub namespace: Option<String>,
    /// Time between proplet-level messages: seconds or a duration such as
    /// 30s [default: 10].
    #[arg(long, value_name = "INTERVAL", env = "PROPLET_METRICS_INTERVAL", value_parser = parse_metrics_interval)]
    pub metrics_interval: Option<Duration>,
    /// Send proplet-level messages [default: true]. With --propeller: the
    /// real proplet's own monitoring (Propeller's variable); propmon then
    /// publishes task metrics only when it is false.
    #[arg(long, value_name = "BOOL", env = "PROPLET_ENABLE_MONITORING", value_parser = BoolishValueParser::new())]
    pub enable_monitoring: Option<bool>,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Propeller mode: learn tasks from the Manager's start and stop
    /// messages (needs --mqtt-url); a process that execs with
    /// proplet_<task-id>.wasm in its argv becomes the task's root.
    #[arg(long, env = "PROPMON_PROPELLER", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub propeller: Option<bool>,
    /// The proplet process, for tasks its in-process runtime runs: a task
    /// whose own process does not appear within --discovery-grace is
    /// attributed to it ("attribution":"proplet-process").
    #[arg(long, value_name = "PID", env = "PROPMON_PROPLET_PID")]
    pub proplet_pid: Option<u32>,
    /// Find the proplet process by executable name instead of --proplet-pid.
    #[arg(long, value_name = "NAME", env = "PROPMON_PROPLET_EXE")]
    pub proplet_exe: Option<String>,
    /// How long a started task's own process may take to appear before the
    /// task is attributed to the proplet process [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub discovery_grace: Option<Duration>,
    /// How long a started task waits for its process before it ends with
    /// a final message saying so ("end_reason":"not-found") [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub discovery_timeout: Option<Duration>,
    /// Tasks monitored at once, at most 4096 (the kernel's slots) [default: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_tasks: Option<u32>,
    /// Keep tasks and their counters across agent restarts: the task
    /// registry goes here (root-only), the kernel state is pinned in bpffs,
    /// and SIGTERM/SIGINT suspend the agent instead of ending every task.
    #[arg(long, value_name = "DIR", env = "PROPMON_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// A TOML file with any of these settings (flags and environment
    /// variables take precedence).
    #[arg(long, value_name = "FILE", env = "PROPMON_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand, Clone)]
pub enum BenchLoad {
    /// Two processes passing a byte back and forth over pipes: a storm of
    /// context switches.
    Pingpong {
        #[arg(long, default_value_t = 100_000)]
        rounds: u64,
    },
    /// One TCP stream over loopback, 64 KiB writes, for SECONDS.
    TcpStream {
        #[arg(long, value_parser = parse_seconds, default_value_t = 2.0)]
        seconds: f64,
    },
    /// COUNT 64-byte UDP datagrams over loopback.
    UdpSends {
        #[arg(long, default_value_t = 200_000)]
        count: u64,
    },
    /// COUNT short TCP connections over loopback: connect, 1 KiB up, 100
    /// bytes back, close (a server thread of this process answers).
    TcpConnections {
        #[arg(long, default_value_t = 5_000)]
        count: u64,
    },
    /// COUNT synchronous 4 KiB writes (O_DIRECT | O_DSYNC) to a file in DIR.
    SyncWrites {
        #[arg(long, default_value_t = 2_000)]
        count: u64,
        #[arg(long, default_value = "/var/tmp")]
        dir: std::path::PathBuf,
    },
    /// COUNT fork + exec + wait of /bin/true.
    Spawn {
        #[arg(long, default_value_t = 500)]
        count: u64,
    },
    /// Forever: sleep PERIOD_MS, spin SPIN_US (an untracked busy process).
    Tick {
        #[arg(long, default_value_t = 100)]
        period_ms: u64,
        #[arg(long, default_value_t = 200)]
        spin_us: u64,
    },
    /// A storm of COUNT processes, each burning MS milliseconds of CPU and
    /// writing BYTES to a file, a few alive at a time; reports the ground
    /// truth of the whole tree (getrusage, /proc/self/io) too.
    Storm {
        #[arg(long, default_value_t = 1_000)]
        count: u64,
        #[arg(long, default_value_t = 5)]
        ms: u64,
        #[arg(long, default_value_t = 16_384)]
        bytes: usize,
        #[arg(long, default_value = "/var/tmp")]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ForgetStateArgs {
    /// The agent's state directory.
    #[arg(long, value_name = "DIR", env = "PROPMON_STATE_DIR")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Print the profiles as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    #[command(subcommand)]
    pub kind: WorkloadKind,
}

#[derive(Debug, Subcommand)]
pub enum WorkloadKind {
    /// About 10 s of work in threads, children, a double-forked daemon and a
    /// storm of 200 short processes; prints its own ground truth on stderr.
    Demo,
    /// The demo's process tree with configurable sizes, as a child
    /// subreaper that reaps everything and reports getrusage totals.
    CpuTree {
        /// Milliseconds of CPU burned by each worker.
        #[arg(long, default_value_t = 300)]
        burn_ms: u64,
        /// Processes in the storm of short-lived children.
        #[arg(long, default_value_t = 200)]
        storm: u32,
        /// Milliseconds of CPU burned by each storm process.
        #[arg(long, default_value_t = 3)]
        storm_burn_ms: u64,
        /// Where to write the ground truth as JSON.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// THREADS threads that each burn BEFORE_MS of their own CPU, wait
    /// (with --wait, for a line on stdin), then burn AFTER_MS more; reports
    /// the process's CPU time at the wait and at the end.
    Threads {
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 0)]
        before_ms: u64,
        #[arg(long, default_value_t = 1000)]
        after_ms: u64,
        /// Wait for a line on stdin between the two phases (after saying
        /// "waiting" on stdout).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Burn one core for the given time.
    Busy {
        #[arg(long, value_parser = parse_seconds, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Fork COUNT children that exit at once, reap them, then linger.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        count: u32,
        /// Seconds to stay alive after the storm.
        #[arg(long, value_parser = parse_seconds, default_value_t = 0.0)]
        linger: f64,
    },
    /// TCP, UDP and AF_UNIX traffic through every kind of socket call, on
    /// loopback and, if given, with a `net-peer` elsewhere; reports the
    /// bytes the calls returned.
    Net {
        /// A `net-peer` reachable over IPv4, e.g. 192.0.2.2:7070.
        #[arg(long)]
        peer4: Option<std::net::SocketAddr>,
        /// A `net-peer` reachable over IPv6, e.g. [2001:db8::2]:7070.
        #[arg(long)]
        peer6: Option<std::net::SocketAddr>,
        /// Where to write the ground truth as JSON.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// A stand-in for Propeller's host runtime: carries MODULE in its argv
    /// (like `wasmtime run /tmp/proplet_<id>.wasm`), burns CPU and moves
    /// TCP bytes in itself and a child, reaps it, and reports the ground
    /// truth of the whole tree.
    Runtime {
        /// The module path (only carried in argv).
        #[arg(long)]
        module: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        burn_ms: u64,
        /// TCP bytes the child sends (and half as many back).
        #[arg(long, default_value_t = 500_000)]
        bytes: usize,
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Benchmark loads (`cargo xtask bench`); each reports how long its
    /// core loop took.
    Bench {
        #[command(subcommand)]
        load: BenchLoad,
        /// Where to write {"seconds", "operations"} as JSON.
        #[arg(long, global = true)]
        report: Option<std::path::PathBuf>,
    },
    /// TCP exchanges with net-peers (one per --tcp, each a different size,
    /// and --short brief connections to the last), and UDP datagrams to
    /// --udp on a connected socket; reports what each peer's socket calls
    /// returned, and TCP's retransmissions.
    Peers {
        #[arg(long)]
        tcp: Vec<std::net::SocketAddr>,
        #[arg(long)]
        udp: Option<std::net::SocketAddr>,
        #[arg(long, default_value_t = 0)]
        short: usize,
        /// One datagram to each of this many loopback ports, each from its
        /// own connected socket: as many UDP peers.
        #[arg(long, default_value_t = 0)]
        udp_fanout: usize,
        /// Bytes sent to the first peer (the second gets twice as many...).
        #[arg(long, default_value_t = 200_000)]
        bytes: u64,
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// The other end for `net`: TCP and UDP echo service on [::]:PORT.
    NetPeer {
        #[arg(long, default_value_t = 7070)]
        port: u16,
    },
    /// Small TCP sends from many threads and processes at once.
    NetHammer {
        #[arg(long, default_value_t = 8)]
        threads: usize,
        #[arg(long, default_value_t = 4)]
        processes: usize,
        /// Sends per thread or process.
        #[arg(long, default_value_t = 20_000)]
        sends: usize,
        /// Bytes per send.
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// One process writes MIB mebibytes to FILE with fsync, then stays
    /// alive HOLD seconds; reports its own /proc/self/io.
    Io {
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long, default_value_t = 16)]
        mib: usize,
        #[arg(long, value_parser = parse_seconds, default_value_t = 2.0)]
        hold: f64,
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
    /// Direct I/O, fsync'd buffered writes, reads after dropping the page
    /// cache, and writes truncated before writeback, under DIR (not tmpfs).
    Disk {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
}
