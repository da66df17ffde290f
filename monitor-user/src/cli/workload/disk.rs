//! Disk workload: direct I/O, buffered writes flushed with fsync, reads
//! after the page cache was dropped, and writes truncated before writeback,
//! in the root and in children. Ground truth is the kernel's own I/O
//! accounting of the whole reaped tree.

use std::{
    alloc::{Layout, alloc_zeroed, dealloc},
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use anyhow::{Context as _, bail};
use nix::sys::resource::{UsageWho, getrusage};
use serde::Serialize;

use super::{become_subreaper, reap_all, spawn_child};

const MIB: usize = 1 << 20;
/// Size of each direct-I/O transfer.
pub const DIRECT_BYTES: usize = MIB;
/// Alignment O_DIRECT needs (a multiple of the logical block size).
const DIRECT_ALIGN: usize = 4096;

/// The kernel's accounting of the whole tree, read by the root once it has
/// reaped everything.
#[derive(Debug, Serialize)]
pub struct DiskTruth {
    /// `/proc/self/io` of the root: its threads plus every reaped descendant.
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
    /// getrusage(SELF) + getrusage(CHILDREN) `ru_inblock`/`ru_oublock`, in bytes.
    pub rusage_read_bytes: u64,
    pub rusage_write_bytes: u64,
    /// What was written and read with O_DIRECT.
    pub direct_write_bytes: u64,
    pub direct_read_bytes: u64,
}

/// Runs the workload; the report is written into a file dirtied before the
/// final snapshot, so that writing it changes none of the figures.
pub fn disk(dir: &Path, report: Option<&Path>) -> anyhow::Result<DiskTruth> {
    let prepare = || {
        report
            .map(|path| -> anyhow::Result<File> {
                let mut file = File::create(path)?;
                file.write_all(&[b' '; REPORT_BYTES])?;
                Ok(file)
            })
            .transpose()
            .context("preparing the report file")
    };
    let (truth, mut report) = run_disk(dir, prepare)?;
    if let Some(file) = report.as_mut() {
        let mut json = serde_json::to_vec(&truth)?;
        anyhow::ensure!(json.len() <= REPORT_BYTES, "report too long");
        json.resize(REPORT_BYTES, b' ');
        std::io::Seek::rewind(file)?;
        file.write_all(&json)?;
    }
    Ok(truth)
}

/// Room for the JSON report: less than a page, so it stays one dirty page.
const REPORT_BYTES: usize = 1024;

/// The workload; `prepare` runs after the last I/O, just before the
/// snapshot.
fn run_disk(
    dir: &Path,
    prepare: impl FnOnce() -> anyhow::Result<Option<File>>,
) -> anyhow::Result<(DiskTruth, Option<File>)> {
    become_subreaper()?;
    let direct = dir.join("direct.bin");
    let buffered = dir.join("buffered.bin");
    let truncated = dir.join("truncated.bin");

    direct_io(&direct, Direction::Write)?;
    direct_io(&direct, Direction::Read)?;

    let path = buffered.clone();
    spawn_child(move || exit_on_error(write_and_fsync(&path, 4 * MIB)))?;
    reap_all()?;

    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")?;
    // Our own code was dropped too: page it back in now, so that running
    // the code after the final snapshot (writing the report) reads nothing.
    warm_mapped_files()?;
    let path = buffered.clone();
    spawn_child(move || exit_on_error(read_all(&path).map(drop)))?;

    let path = truncated.clone();
    spawn_child(move || exit_on_error(write_then_truncate(&path, 2 * MIB)))?;
    reap_all()?;
    let report = prepare()?;

    let io = std::fs::read_to_string("/proc/self/io").context("reading /proc/self/io")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        io.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/self/io"))
    };
    let blocks = |who| getrusage(who).map(|u| (u.block_reads() as u64, u.block_writes() as u64));
    let (self_in, self_out) = blocks(UsageWho::RUSAGE_SELF)?;
    let (children_in, children_out) = blocks(UsageWho::RUSAGE_CHILDREN)?;
    let truth = DiskTruth {
        read_bytes: field("read_bytes:")?,
        write_bytes: field("write_bytes:")?,
        cancelled_write_bytes: field("cancelled_write_bytes:")?,
        rusage_read_bytes: (self_in + children_in) * 512,
        rusage_write_bytes: (self_out + children_out) * 512,
        direct_write_bytes: DIRECT_BYTES as u64,
        direct_read_bytes: DIRECT_BYTES as u64,
    };
    // Everything the report needs runs once before the snapshot counts.
    let _ = serde_json::to_vec(&truth)?;
    Ok((truth, report))
}

/// Reads every file this process has mapped (its executable, libraries).
fn warm_mapped_files() -> anyhow::Result<()> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let files: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/'))
        .collect();
    for file in files {
        let _ = std::fs::read(file);
    }
    Ok(())
}

fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(err) = result {
        eprintln!("disk workload child: {err:#}");
        // SAFETY: leaves the forked child at once.
        unsafe { libc::_exit(1) }
    }
}

enum Direction {
    Read,
    Write,
}

/// One O_DIRECT transfer of [`DIRECT_BYTES`] through an aligned buffer.
fn direct_io(path: &Path, direction: Direction) -> anyhow::Result<()> {
    let layout = Layout::from_size_align(DIRECT_BYTES, DIRECT_ALIGN)?;
    // SAFETY: non-zero size; freed below with the same layout.
    let buffer = unsafe { alloc_zeroed(layout) };
    if buffer.is_null() {
        bail!("cannot allocate an aligned buffer");
    }
    // SAFETY: `buffer` holds DIRECT_BYTES initialised bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buffer, DIRECT_BYTES) };
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_DIRECT);
    let result = match direction {
        Direction::Write => options
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .and_then(|mut file| file.write_all(slice)),
        Direction::Read => options
            .read(true)
            .open(path)
            .and_then(|mut file| file.read_exact(slice)),
    };
    // SAFETY: allocated above with `layout`.
    unsafe { dealloc(buffer, layout) };
    result.with_context(|| format!("O_DIRECT on {}", path.display()))
}

/// `/proc/self/io` of a single process.
#[derive(Debug, Serialize)]
pub struct ProcessIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// Writes `mib` MiB with fsync in this process, then stays alive `hold`.
pub fn write_and_hold(
    path: &Path,
    mib: usize,
    hold: std::time::Duration,
) -> anyhow::Result<ProcessIo> {
    write_and_fsync(path, mib * MIB)?;
    std::fs::remove_file(path)?;
    let io = read_own_io()?;
    std::thread::sleep(hold);
    Ok(ProcessIo {
        read_bytes: io.0,
        write_bytes: io.1,
    })
}

fn read_own_io() -> anyhow::Result<(u64, u64)> {
    let io = std::fs::read_to_string("/proc/self/io").context("reading /proc/self/io")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        io.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/self/io"))
    };
    Ok((field("read_bytes:")?, field("write_bytes:")?))
}

fn write_and_fsync(path: &Path, size: usize) -> anyhow::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(&vec![b'b'; size])?;
    file.sync_all()?;
    Ok(())
}

fn read_all(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(std::fs::read(path)?)
}

/// Dirty pages dropped before writeback: the kernel's cancelled_write_bytes.
fn write_then_truncate(path: &Path, size: usize) -> anyhow::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(&vec![b't'; size])?;
    file.set_len(0)?;
    Ok(())
}
