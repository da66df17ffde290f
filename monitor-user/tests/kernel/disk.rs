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
    direct_write_bytes: u64,
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

fn within(measured: u64, truth: u64) -> bool {
    let tolerance = (truth / 100).max(8 * 1024);
    measured.abs_diff(truth) <= tolerance
}

/// O_DIRECT write and read, buffered write + fsync, read after dropping
/// the page cache, write truncated before writeback: propmon's totals
/// agree with the kernel's accounting of the whole tree.
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
    let read = metrics.disk_read_bytes.unwrap();
    let written = metrics.disk_write_bytes.unwrap();
    assert!(within(read, truth.read_bytes), "read {read} vs {truth:?}");
    assert!(
        within(written, truth.write_bytes),
        "write {written} vs {truth:?}"
    );
    assert!(
        within(disk.cancelled_write_bytes, truth.cancelled_write_bytes),
        "cancelled {} vs {truth:?}",
        disk.cancelled_write_bytes
    );
    assert_eq!(disk.direct_write_bytes, truth.direct_write_bytes);
    assert_eq!(
        written,
        disk.page_cache_write_bytes + disk.direct_write_bytes
    );
    // The fsync'd 4 MiB and the direct MiB went out in the task's context.
    assert!(disk.submitted_write_bytes >= 5 << 20, "{disk:?}");
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
            let disk = last.details.disk.as_ref().unwrap();
            assert_eq!(disk.direct_write_bytes, 3 << 20);
            assert_eq!(last.metrics.disk_read_bytes, Some(0));
        }
    }
}
