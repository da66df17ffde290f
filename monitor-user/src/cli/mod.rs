//! Command-line interface: one module per subcommand; `main` only dispatches.

#[cfg(target_os = "linux")]
pub mod run;
#[cfg(target_os = "linux")]
pub mod workload;

use std::{ffi::OsString, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{duration::parse_interval, profiles::Preset};

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
    /// Built-in workloads with known ground truth, for the demo and the tests.
    Workload(WorkloadArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Task id put in every message [default: a random UUID].
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,
    /// Proplet id put in every message [default: $PROPLET_ID, else the host name].
    #[arg(long, value_name = "ID", env = "PROPLET_ID")]
    pub proplet_id: Option<String>,
    /// Monitoring profile: standard (10 s), minimal, intensive (1 s),
    /// batch_processing, real_time_api, long_running_daemon or disabled.
    #[arg(long, value_name = "NAME", default_value = "standard", value_parser = Preset::from_name)]
    pub profile: Preset,
    /// Time between two messages (e.g. 1s, 500ms, 2m); overrides the profile's.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// The command to run, and its arguments.
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true, num_args = 1..)]
    pub command: Vec<OsString>,
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
    /// Direct I/O, fsync'd buffered writes, reads after dropping the page
    /// cache, and writes truncated before writeback, under DIR (not tmpfs).
    Disk {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
}
