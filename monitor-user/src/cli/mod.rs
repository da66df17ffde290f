//! Command-line interface: one module per subcommand; `main` only dispatches.
//! Arguments are parsed in two stages: raw flags here, validated settings
//! in each subcommand's module.

pub mod agent;
pub mod config;
pub mod profiles;
pub mod run;
pub mod signals;
#[cfg(target_os = "linux")]
pub mod workload;

use std::{ffi::OsString, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};

use crate::{
    collect::BackendChoice,
    duration::parse_interval,
    profiles::{MonitoringProfile, Preset, parse_profile_json},
    proplet::parse_metrics_interval,
};

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
    /// The profile asked for, if any.
    pub fn resolve(&self) -> anyhow::Result<Option<MonitoringProfile>> {
        if let Some(preset) = self.profile {
            return Ok(Some(preset.profile()));
        }
        let Some(json) = &self.profile_json else {
            return Ok(None);
        };
        let text = match json.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the profile file {path}"))?,
            None => json.clone(),
        };
        Ok(Some(parse_profile_json(&text)?))
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
    /// Send proplet-level messages [default: true].
    #[arg(long, value_name = "BOOL", env = "PROPLET_ENABLE_MONITORING", value_parser = BoolishValueParser::new())]
    pub enable_monitoring: Option<bool>,
    /// A TOML file with any of these settings (flags and environment
    /// variables take precedence).
    #[arg(long, value_name = "FILE", env = "PROPMON_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Burn one core for the given time.
    Busy {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Fork COUNT children that exit at once, reap them, then linger.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        count: u32,
        /// Seconds to stay alive after the storm.
        #[arg(long, default_value_t = 0.0)]
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
        #[arg(long, default_value_t = 2.0)]
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
