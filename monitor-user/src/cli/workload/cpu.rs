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

/// Sizes of the threaded workload.
pub struct ThreadsShape {
    pub threads: usize,
    /// CPU each thread burns before the pause.
    pub before: Duration,
    /// CPU each thread burns after it.
    pub after: Duration,
    /// Pause for a line on stdin.
    pub wait: bool,
}

/// What the kernel says the process consumed (CLOCK_PROCESS_CPUTIME_ID:
/// every thread's `sum_exec_runtime`, to the nanosecond).
#[derive(Debug, Serialize)]
pub struct ThreadsTruth {
    /// At the pause.
    pub cpu_before_ns: u64,
    /// At the end, every thread joined.
    pub cpu_total_ns: u64,
}

/// Threads that burn an exact amount of their own CPU, pause, burn again.
pub fn threads(shape: &ThreadsShape) -> anyhow::Result<ThreadsTruth> {
    use std::sync::{Arc, Barrier};
    let paused = Arc::new(Barrier::new(shape.threads + 1));
    let resumed = Arc::new(Barrier::new(shape.threads + 1));
    let workers: Vec<_> = (0..shape.threads)
        .map(|_| {
            let (paused, resumed) = (paused.clone(), resumed.clone());
            let (before, after) = (shape.before, shape.after);
            std::thread::spawn(move || {
                burn_own_cpu(before);
                paused.wait();
                resumed.wait();
                burn_own_cpu(after);
            })
        })
        .collect();
    paused.wait();
    let cpu_before_ns = process_cpu_ns()?;
    if shape.wait {
        use std::io::{BufRead as _, Write as _};
        println!("waiting");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }
    resumed.wait();
    for worker in workers {
        worker.join().expect("burner thread");
    }
    Ok(ThreadsTruth {
        cpu_before_ns,
        cpu_total_ns: process_cpu_ns()?,
    })
}

/// Burns until this thread has had `amount` of CPU, however busy the
/// machine is.
fn burn_own_cpu(amount: Duration) {
    let clock = nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID;
    let now = || nix::time::clock_gettime(clock).map_or(Duration::ZERO, Duration::from);
    let until = now() + amount;
    let mut x = 0u64;
    while now() < until {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
}

fn process_cpu_ns() -> anyhow::Result<u64> {
    let time = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)?;
    Ok(Duration::from(time).as_nanos() as u64)
}
