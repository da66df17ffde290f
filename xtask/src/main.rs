//! propmon's workflow commands. Every command first runs `setup`, which
//! installs what a fresh machine lacks, so that each is one step.

mod bench;
mod setup;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain parts and packages propmon needs (idempotent).
    Setup,
    /// Build the self-contained `target/release/propmon`.
    Build,
    /// Build, then run propmon on the built-in demo workload (as root).
    ///
    /// Arguments after `--` replace the default `run --interval 1s -- propmon workload demo`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every test: unit tests, then the kernel tests (as root).
    Test,
    /// cargo fmt --check and clippy -D warnings, for the workspace and the
    /// eBPF crate; cargo check of the agent for macOS and Windows.
    Lint,
    /// Measure overhead, agent footprint and accuracy (as root); prints a
    /// Markdown report, raw figures in target/bench/.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    setup::run()?;
    match task {
        Task::Setup => Ok(()),
        Task::Build => build_release(),
        Task::Run { args } => {
            build_release()?;
            let propmon = workspace_root().join("target/release/propmon");
            let args = if args.is_empty() {
                default_run_args(&propmon)
            } else {
                args
            };
            run_as_root(&propmon, &args)
        }
        Task::Test => test(),
        Task::Lint => lint(),
        Task::Bench(args) => bench::bench(args),
    }
}

fn default_run_args(propmon: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["run", "--interval", "1s", "--"]
        .map(OsString::from)
        .to_vec();
    args.push(propmon.into());
    args.extend(["workload", "demo"].map(OsString::from));
    args
}

pub(crate) fn build_release() -> anyhow::Result<()> {
    cargo(&["build", "--release", "-p", "monitor-user"])
}

/// Unit tests of the default members (the kernel crate only builds for
/// BPF), then the kernel tests of `monitor-user/tests`.
/// The kernel tests need root; elsewhere they skip with a printed reason
/// (and fail in CI, where they must run).
fn test() -> anyhow::Result<()> {
    cargo(&["test", "--lib", "--bins"])?;
    if !is_root() {
        eprintln!("xtask: not root: running kernel tests with sudo");
        if which("sudo") {
            let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            return status(
                Command::new("sudo")
                    .args(["-E", "--preserve-env=PATH"])
                    .arg(cargo_bin)
                    .args(kernel_test_args()),
            );
        }
    }
    cargo(&kernel_test_args())
}

fn kernel_test_args() -> Vec<&'static str> {
    // One test at a time: they measure CPU shares and rates on 2 cores.
    vec![
        "test",
        "-p",
        "monitor-user",
        "--test",
        "*",
        "--",
        "--test-threads=1",
    ]
}

fn lint() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // Everything but the eBPF loader builds for other systems.
    for target in setup::OTHER_TARGETS {
        cargo(&[
            "check",
            "-p",
            "monitor-user",
            "--no-default-features",
            "--target",
            target,
        ])?;
    }
    // The kernel crate builds only for the BPF target, with nightly.
    status(
        Command::new("cargo")
            .current_dir(workspace_root().join("monitor-ebpf"))
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
    )
}

fn run_as_root(program: &Path, args: &[OsString]) -> anyhow::Result<()> {
    let mut command = if is_root() {
        Command::new(program)
    } else if which("sudo") {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    } else {
        bail!("propmon needs root to load its eBPF programs, and sudo is not installed");
    };
    status(command.args(args))
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(Command::new(cargo).current_dir(workspace_root()).args(args))
}

fn status(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub(crate) fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
