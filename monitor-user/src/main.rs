//! `propmon`: parses the command line, sets up logging and dispatches.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use propmon::cli::{BadUsage, Cli, Command, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("propmon: {err:#}");
            if err.is::<BadUsage>() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => propmon::cli::run::run(args),
        Command::Agent(args) => propmon::cli::agent::run(args),
        Command::Profiles(args) => propmon::cli::profiles::run(args),
        Command::Top(args) => propmon::cli::top::run(args),
        #[cfg(unix)]
        Command::ForgetState(args) => propmon::cli::forget_state::run(args),
        #[cfg(not(unix))]
        Command::ForgetState(_) => anyhow::bail!("--state-dir needs Linux"),
        #[cfg(target_os = "linux")]
        Command::Workload(args) => propmon::cli::workload::run(args),
        #[cfg(not(target_os = "linux"))]
        Command::Workload(_) => anyhow::bail!("the built-in workloads need Linux"),
    }
}

/// Logs go to stderr: stdout is reserved for metrics.
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
