//! Disk bytes per task against the kernel's own I/O accounting.

use std::{path::PathBuf, process::Command, time::Duration};

use serde::Deserialize;

use crate::{kernel_test, propmon, propmon_bin, run_to_end};

#[derive(Debug, Deserialize)]
struct DiskTruth {
    read_bytes: u64,
    write_bytes: u64,
    cancelled_write_bytes: u64,
    rusage_read_bytes: u64,
    rusage_write_bytes: u64,
}

/// A scratch directory on a real filesystem (O_DIRECT does not work on
/// tmpfs), removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// O_DIRECT write and read, buffered write + fsync, read after dropping
/// the page cache, write truncated before writeback: propmon's totals
/// equal the kernel's accounting of the whole tree (`/proc/self/io` of a
/// root that reaped every process), to the byte: they are the same
/// per-thread counters, summed.
#[test]
fn disk_bytes_agree_with_the_kernels_io_accounting() {
    let Some(_serial) = kernel_test() else { return };
    let dir = ScratchDir::new("disk");
    let report = dir.0.join("truth.json");
    let mut command = propmon(&["run", "--interval", "1s", "--profile", "intensive", "--"]);
    command
        .arg(propmon_bin())
        .args(["workload", "disk", "--dir"])
        .arg(&dir.0)
        .arg("--report")
        .arg(&report);
    let run = run_to_end(command, Duration::from_secs(120));
    assert!(run.status.success(), "{}", run.stderr);
    let truth: DiskTruth =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // The two kernel views agree with each other (512-byte units).
    assert_eq!(truth.rusage_read_bytes, truth.read_bytes / 512 * 512);
    assert_eq!(truth.rusage_write_bytes, truth.write_bytes / 512 * 512);
    assert!(truth.read_bytes >= 4 << 20 && truth.cancelled_write_bytes >= 2 << 20);

    let last = run.final_message();
    let metrics = &last.metrics;
    let disk = last.details.disk.as_ref().expect("details.disk");
    assert_eq!(metrics.disk_read_bytes, Some(truth.read_bytes), "{truth:?}");
    assert_eq!(
        metrics.disk_write_bytes,
        Some(truth.write_bytes),
        "{truth:?}"
    );
    assert_eq!(
        disk.cancelled_write_bytes, truth.cancelled_write_bytes,
        "{truth:?}"
    );
    // The task wrote its data with write(2) and read it back with read(2).
    assert!(disk.wchar >= 6 << 20 && disk.rchar >= 5 << 20, "{disk:?}");
    assert!(disk.syscw > 0 && disk.syscr > 0, "{disk:?}");
}

/// O_DIRECT transfers are counted to the byte: 3 MiB moved by `dd` shows
/// up as 3 MiB, plus only what the kernel itself charged the same tree.
/// Ground truth is `/proc/<pid>/io` of the shell that reaped `dd`, read by
/// the `cat` the shell became, so the task does nothing after it. The
/// kernel can charge a writer more than its data (CI once saw 3 MiB +
/// 4 KiB; a metadata block dirtied by the task is charged like a data
/// page), so the truth, not 3 MiB, is what propmon must equal.
#[test]
fn direct_io_sizes_match_exactly() {
    let Some(_serial) = kernel_test() else { return };
    let dir = ScratchDir::new("direct");
    let file = dir.0.join("data.bin");
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let file = file.to_str().unwrap();
    let read = format!("dd bs=1M count=3 status=none if={file} of=/dev/null iflag=direct");
    let write =
        format!("dd bs=1M count=3 status=none if=/dev/zero of={file} oflag=direct conv=notrunc");
    // Warm the pages of dd, sh and cat so that starting them reads nothing.
    for script in [read.as_str(), "cat /proc/self/io >/dev/null"] {
        let warmed = Command::new("sh").args(["-c", script]).status().unwrap();
        assert!(warmed.success());
    }

    for (dd, moved, other) in [
        (read, "read_bytes", "write_bytes"),
        (write, "write_bytes", "read_bytes"),
    ] {
        let script = format!("{dd} && exec cat /proc/$$/io >&2");
        let command = propmon(&["run", "--profile", "intensive", "--", "sh", "-c", &script]);
        let run = run_to_end(command, Duration::from_secs(30));
        assert!(run.status.success(), "{}", run.stderr);
        let truth = |field: &str| io_field(&run.stderr, field);
        let metrics = &run.final_message().metrics;
        assert_eq!(metrics.disk_read_bytes, Some(truth("read_bytes")));
        assert_eq!(metrics.disk_write_bytes, Some(truth("write_bytes")));
        assert!(
            (3 << 20..(3 << 20) + (64 << 10)).contains(&truth(moved)) && truth(other) < 64 << 10,
            "dd moved 3 MiB, the kernel says: {}",
            run.stderr
        );
    }
}

/// One `NAME: VALUE` line of a `/proc/<pid>/io` printed in `text`.
fn io_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {text:?}"))
}
