//! Figures read from `/proc` outside the kernel programs: the host's
//! memory, and descriptors for the sysinfo backend.

use procfs::{Current as _, Meminfo, process::Process};

/// Open file descriptors of one process.
pub fn file_descriptors(pid: u32) -> Option<u64> {
    Process::new(pid as i32)
        .ok()?
        .fd_count()
        .ok()
        .map(|n| n as u64)
}

/// This process's resident memory (`/proc/self/stat` rss), 0 if unreadable.
pub fn own_rss_bytes() -> u64 {
    Process::myself()
        .and_then(|me| me.stat())
        .map(|stat| stat.rss * procfs::page_size())
        .unwrap_or(0)
}

/// The host's usable RAM in bytes (`MemTotal`), 0 if unreadable.
pub fn host_memory_bytes() -> u64 {
    Meminfo::current().map(|m| m.mem_total).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_our_own_descriptors() {
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let counted = file_descriptors(std::process::id()).unwrap();
        assert!(counted.abs_diff(fds) <= 2, "{counted} vs {fds}");
    }

    #[test]
    fn host_memory_is_known() {
        assert!(host_memory_bytes() > 64 << 20);
    }
}
