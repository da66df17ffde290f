//! `propmon workload`: workloads whose ground truth is known, for the demo
//! and the kernel tests.
//!
//! The process-tree workloads make their root a child subreaper that reaps
//! every descendant, so that `getrusage(RUSAGE_SELF) + getrusage(RUSAGE_CHILDREN)`
//! at the end covers the whole tree, exits included. These run single
//! threaded when they fork, so children may do anything.

use std::{
    hint::black_box,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    sys::{
        prctl,
        resource::{UsageWho, getrusage},
        wait::waitpid,
    },
    unistd::{ForkResult, fork},
};
use serde::Serialize;

use super::{WorkloadArgs, WorkloadKind};

pub fn run(args: WorkloadArgs) -> anyhow::Result<ExitCode> {
    match args.kind {
        WorkloadKind::Demo => {
            let truth = cpu_tree(&TreeShape::demo())?;
            eprintln!(
                "demo workload done: {} processes, ground-truth CPU {:.3} s \
                 (getrusage of the whole tree, exits included)",
                truth.processes,
                truth.cpu_ns as f64 / 1e9
            );
        }
        WorkloadKind::CpuTree {
            burn_ms,
            storm,
            storm_burn_ms,
            report,
        } => {
            let shape = TreeShape {
                burn: Duration::from_millis(burn_ms),
                storm,
                storm_burn: Duration::from_millis(storm_burn_ms),
            };
            let truth = cpu_tree(&shape)?;
            if let Some(path) = report {
                let json = serde_json::to_string(&truth)?;
                std::fs::write(&path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        WorkloadKind::Busy { seconds } => burn(Duration::from_secs_f64(seconds)),
        WorkloadKind::Storm { count, linger } => {
            for _ in 0..count {
                spawn_child(|| {})?;
                reap_one()?;
            }
            std::thread::sleep(Duration::from_secs_f64(linger));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sizes of the process-tree workload.
struct TreeShape {
    /// CPU burned by the root, its thread, each child and the daemon.
    burn: Duration,
    /// Short-lived processes in the storm.
    storm: u32,
    /// CPU burned by each storm process.
    storm_burn: Duration,
}

impl TreeShape {
    fn demo() -> Self {
        TreeShape {
            burn: Duration::from_millis(1500),
            storm: 200,
            storm_burn: Duration::from_millis(5),
        }
    }
}

/// What the kernel says the whole tree consumed.
#[derive(Debug, Serialize)]
pub struct GroundTruth {
    /// getrusage(SELF) + getrusage(CHILDREN), user + system, in ns.
    pub cpu_ns: u64,
    /// Processes in the tree, the root included.
    pub processes: u64,
}

fn cpu_tree(shape: &TreeShape) -> anyhow::Result<GroundTruth> {
    prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    let mut processes = 1;

    // The root burns in its main thread and in a second thread, in parallel.
    let burn = shape.burn;
    let helper = std::thread::spawn(move || self::burn(burn));
    self::burn(burn);
    helper.join().expect("burner thread");

    // Two children burn in parallel; one of them forks a grandchild first.
    for _ in 0..2 {
        spawn_child(move || self::burn(burn))?;
    }
    // Double fork: the middle process exits at once, the daemon is
    // re-parented to us (the subreaper) and burns on its own.
    spawn_child(move || {
        let _ = spawn_child(move || self::burn(burn));
    })?;
    processes += 4;
    reap_all()?;

    // A storm of short-lived processes, a few alive at a time.
    let storm_burn = shape.storm_burn;
    for _ in 0..shape.storm {
        spawn_child(move || self::burn(storm_burn))?;
    }
    processes += u64::from(shape.storm);
    reap_all()?;

    Ok(GroundTruth {
        cpu_ns: rusage_ns(UsageWho::RUSAGE_SELF)? + rusage_ns(UsageWho::RUSAGE_CHILDREN)?,
        processes,
    })
}

/// Forks a child that runs `work` and exits.
fn spawn_child(work: impl FnOnce()) -> anyhow::Result<()> {
    // SAFETY: the workload is single-threaded whenever it forks, so the
    // child may allocate and run arbitrary code.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => Ok(()),
        ForkResult::Child => {
            work();
            // SAFETY: leaves without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
    }
}

fn reap_one() -> anyhow::Result<()> {
    waitpid(None, None).context("waitpid")?;
    Ok(())
}

/// Reaps every child and every orphan re-parented to us.
fn reap_all() -> anyhow::Result<()> {
    loop {
        match waitpid(None, None) {
            Ok(_) => {}
            Err(Errno::ECHILD) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err).context("waitpid"),
        }
    }
}

fn rusage_ns(who: UsageWho) -> anyhow::Result<u64> {
    let usage = getrusage(who).context("getrusage")?;
    let micros = |tv: nix::sys::time::TimeVal| tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64;
    Ok((micros(usage.user_time()) + micros(usage.system_time())) * 1000)
}

/// Keeps one core busy for `duration` of wall-clock time.
fn burn(duration: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < duration {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    black_box(x);
}
