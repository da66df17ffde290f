//! CPU in every shape of process tree: threads, children, a double-forked
//! daemon, a storm of short-lived processes.

use std::time::Duration;

use nix::sys::resource::UsageWho;
use serde::Serialize;

use super::{become_subreaper, burn, reap_all, rusage_cpu_ns, spawn_child};

/// Sizes of the process-tree workload.
pub struct TreeShape {
    /// CPU burned by the root, its thread, each child and the daemon.
    pub burn: Duration,
    /// Short-lived processes in the storm.
    pub storm: u32,
    /// CPU burned by each storm process.
    pub storm_burn: Duration,
}

/// What the kernel says the whole tree consumed.
#[derive(Debug, Serialize)]
pub struct CpuTruth {
    /// getrusage(SELF) + getrusage(CHILDREN), user + system, in ns.
    pub cpu_ns: u64,
    /// Processes in the tree, the root included.
    pub processes: u64,
}

/// The README's demo: a few seconds of work in every shape.
pub fn demo() -> anyhow::Result<()> {
    let shape = TreeShape {
        burn: Duration::from_millis(2000),
        storm: 200,
        storm_burn: Duration::from_millis(5),
    };
    let truth = cpu_tree(&shape)?;
    eprintln!(
        "demo workload done: {} processes, ground-truth CPU {:.3} s \
         (getrusage of the whole tree, exits included)",
        truth.processes,
        truth.cpu_ns as f64 / 1e9
    );
    Ok(())
}

pub fn cpu_tree(shape: &TreeShape) -> anyhow::Result<CpuTruth> {
    become_subreaper()?;
    let mut processes = 1;

    // The root burns in its main thread and in a second thread, in parallel.
    let work = shape.burn;
    let helper = std::thread::spawn(move || burn(work));
    burn(work);
    helper.join().expect("burner thread");

    // Two children burn in parallel.
    for _ in 0..2 {
        spawn_child(move || burn(work))?;
    }
    // Double fork: the middle process exits at once, the daemon is
    // re-parented to us (the subreaper) and burns on its own.
    spawn_child(move || {
        let _ = spawn_child(move || burn(work));
    })?;
    processes += 4;
    reap_all()?;

    // A storm of short-lived processes, a few alive at a time.
    let storm_burn = shape.storm_burn;
    for _ in 0..shape.storm {
        spawn_child(move || burn(storm_burn))?;
    }
    processes += u64::from(shape.storm);
    reap_all()?;

    Ok(CpuTruth {
        cpu_ns: rusage_cpu_ns(UsageWho::RUSAGE_SELF)? + rusage_cpu_ns(UsageWho::RUSAGE_CHILDREN)?,
        processes,
    })
}
