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

/// O_DIRECT transfers are counted to the byte.
#[test]
fn direct_io_sizes_match_exactly() {
    let Some(_serial) = kernel_test() else { return };
    let dir = ScratchDir::new("direct");
    let file = dir.0.join("data.bin");
    std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let dd = |direction: &[&str]| {
        let mut args = vec!["bs=1M".to_owned(), "count=3".to_owned()];
        args.extend(
            direction
                .iter()
                .map(|s| s.replace("FILE", file.to_str().unwrap())),
        );
        args
    };
    let read_args = dd(&["if=FILE", "of=/dev/null", "iflag=direct"]);
    let write_args = dd(&["if=/dev/zero", "of=FILE", "oflag=direct", "conv=notrunc"]);
    // Warm dd's own pages so that starting it reads nothing from disk.
    assert!(
        Command::new("dd")
            .args(&read_args)
            .output()
            .unwrap()
            .status
            .success()
    );

    for (args, is_read) in [(read_args, true), (write_args, false)] {
        let mut command = propmon(&["run", "--profile", "intensive", "--", "dd"]);
        command.args(&args);
        let run = run_to_end(command, Duration::from_secs(30));
        assert!(run.status.success(), "{}", run.stderr);
        let last = run.final_message();
        if is_read {
            assert_eq!(last.metrics.disk_read_bytes, Some(3 << 20));
        } else {
            assert_eq!(last.metrics.disk_write_bytes, Some(3 << 20));
            assert_eq!(last.metrics.disk_read_bytes, Some(0));
        }
    }
}
