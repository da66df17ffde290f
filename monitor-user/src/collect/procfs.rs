//! Point-in-time figures of live processes, read from `/proc`.
//!
//! A process may exit between the moment the kernel listed it and the
//! moment we read it: such a process is skipped, it is not an error.

use procfs::{Current as _, Meminfo, process::Process};

use super::ProcessSample;

/// Sums memory, threads and descriptors over `pids`.
pub fn sample_processes(pids: impl IntoIterator<Item = u32>) -> ProcessSample {
    let page_size = procfs::page_size();
    let mut sample = ProcessSample::default();
    for pid in pids {
        let Some(process) = read_process(pid, page_size) else {
            continue;
        };
        sample.memory_bytes += process.memory_bytes;
        sample.threads = Some(sample.threads.unwrap_or(0) + process.threads.unwrap_or(0));
        sample.file_descriptors =
            Some(sample.file_descriptors.unwrap_or(0) + process.file_descriptors.unwrap_or(0));
        sample.processes += 1;
    }
    sample
}

/// Open file descriptors of one process.
pub fn file_descriptors(pid: u32) -> Option<u64> {
    Process::new(pid as i32)
        .ok()?
        .fd_count()
        .ok()
        .map(|n| n as u64)
}

/// The host's usable RAM in bytes (`MemTotal`), 0 if unreadable.
pub fn host_memory_bytes() -> u64 {
    Meminfo::current().map(|m| m.mem_total).unwrap_or(0)
}

fn read_process(pid: u32, page_size: u64) -> Option<ProcessSample> {
    let process = Process::new(pid as i32).ok()?;
    let stat = process.stat().ok()?;
    let file_descriptors = process.fd_count().ok()? as u64;
    Some(ProcessSample {
        memory_bytes: stat.rss * page_size,
        threads: Some(stat.num_threads.max(0) as u64),
        file_descriptors: Some(file_descriptors),
        processes: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_against_proc_status() {
        let sample = sample_processes([std::process::id()]);
        assert_eq!(sample.processes, 1);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let rss_bytes = field("VmRSS:") * 1024;
        // RSS moves a little between the two reads; a page-level match is exact enough.
        assert!(
            sample.memory_bytes.abs_diff(rss_bytes) < 4 << 20,
            "{} vs {rss_bytes}",
            sample.memory_bytes
        );
        assert!(sample.threads >= Some(1));
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        assert!(sample.file_descriptors.unwrap().abs_diff(fds) <= 2);
    }

    #[test]
    fn vanished_processes_are_skipped() {
        // PID 0 never exists in /proc; i32::MAX is above pid_max.
        let sample = sample_processes([0, i32::MAX as u32]);
        assert_eq!(sample, ProcessSample::default());
    }

    #[test]
    fn host_memory_is_known() {
        assert!(host_memory_bytes() > 64 << 20);
    }
}
