//! `cargo xtask setup`: installs what building and testing propmon needs on
//! a fresh machine, skipping what is present. See
//! `../shared/reference/toolchain.md` for why each piece is needed.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{is_root, status, which};

/// Debian packages: LLVM 22 for bpf-linker (rustc's LLVM is 22), tools the
/// tests and benchmarks use (bpftool, a real MQTT broker, iproute2 for
/// network namespaces, openssl for the TLS test's certificates, a real
/// Prometheus and promtool for the dashboard's queries and `/metrics`), and
/// the bench's standard load and peer tracer (`perf bench sched pipe` from
/// linux-perf, bpftrace one-liners; `taskset` comes with util-linux), and
/// nftables to lose packets on purpose in a test namespace (this kernel has
/// no netem).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "bpftool",
    "mosquitto",
    "mosquitto-clients",
    "iproute2",
    "openssl",
    "linux-perf",
    "bpftrace",
    "prometheus",
    "nftables",
];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// Targets the agent must keep building for (without eBPF).
pub const OTHER_TARGETS: [&str; 2] = ["x86_64-apple-darwin", "x86_64-pc-windows-gnu"];

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    other_targets()?;
    apt_packages()?;
    bpf_linker()
}

/// The standard libraries to `cargo check` the agent for other systems.
fn other_targets() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    let listing = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = OTHER_TARGETS
        .into_iter()
        .filter(|target| !listing.lines().any(|line| line.trim() == *target))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("adding the Rust targets {}", missing.join(" ")));
    status(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
}

/// aya-build compiles the kernel crate with nightly `-Z build-std=core`.
fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (is rustup installed?)")?;
    let listing = String::from_utf8_lossy(&installed.stdout);
    if installed.status.success() && listing.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    if !installed.status.success() {
        say("installing the nightly toolchain with rust-src");
        return status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--component",
            "rust-src",
        ]));
    }
    say("installing rust-src for nightly");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !which("apt-get") {
        bail!(
            "missing packages {list}, and this is not a Debian-like system: install their equivalents"
        );
    }
    if !is_root() {
        bail!(
            "missing packages {list}; install them as root: \
             sudo apt-get update && sudo apt-get install -y {list}"
        );
    }
    say(&format!("installing {list}"));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.stdout.ends_with(b"install ok installed"))
}

/// bpf-linker links (and generates code for) the BPF target; its default
/// feature wants LLVM 23, so build it against the system's LLVM 22.
fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
    {
        return Ok(());
    }
    say("building bpf-linker for LLVM 22 (about a minute)");
    let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    status(
        Command::new("cargo")
            .env("PATH", path)
            .args(["install", "--locked", "bpf-linker", "--version", "0.13.0"])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
}

fn say(what: &str) {
    eprintln!("xtask setup: {what}");
}
