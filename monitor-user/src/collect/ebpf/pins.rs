//! Kernel state that outlives the agent: with `--state-dir`, the maps and
//! the hooks' links are pinned in bpffs, so the hooks keep counting while
//! the agent restarts (crash, upgrade, `systemctl restart`) and the next
//! agent takes up the same tasks and counters.
//!
//! Layout: `/sys/fs/bpf/propmon/<name>/<identity>/{maps,links}/...`, where
//! `identity` hashes the kernel object and the kernel layout it was loaded
//! with. Pins of another identity (an older propmon) cannot be read by
//! these programs: they are removed, and the agent starts clean.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::links::PinnedLink;
use monitor_common::KernelLayout;

/// Where bpffs is mounted by convention.
const BPFFS: &str = "/sys/fs/bpf";
/// bpffs's magic number (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub struct Pins {
    dir: PathBuf,
    resumed: bool,
}

impl Pins {
    /// Opens (or creates) the pin directory `name` for this object.
    pub fn open(name: &str, object: &[u8], layout: &KernelLayout) -> anyhow::Result<Self> {
        ensure_bpffs()?;
        let root = Path::new(BPFFS).join("propmon").join(name);
        let identity = identity(object, layout);
        let dir = root.join(&identity);
        remove_other_identities(&root, &identity)?;
        for sub in ["maps", "links"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let resumed = dir.join("maps").join(monitor_common::maps::TASKS).exists();
        Ok(Pins { dir, resumed })
    }

    /// Whether the maps were there already (left by a previous agent).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link_path(&self, program: &str) -> PathBuf {
        self.dir.join("links").join(program)
    }

    /// The link a previous agent pinned for `program`, still attached.
    pub fn existing_link(&self, program: &str) -> Option<PinnedLink> {
        PinnedLink::from_pin(self.link_path(program)).ok()
    }

    /// Detaches everything pinned under `name` and forgets its state.
    pub fn remove(name: &str) -> io::Result<()> {
        let root = Path::new(BPFFS).join("propmon").join(name);
        match fs::remove_dir_all(&root) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
fn ensure_bpffs() -> anyhow::Result<()> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS} (needed to keep state across restarts)"))
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|stats| stats.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Removes pins of other objects under `root`.
fn remove_other_identities(root: &Path, identity: &str) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name() == identity {
            continue;
        }
        tracing::warn!(
            "discarding the kernel state of another propmon build ({}): its tasks start over",
            entry.path().display()
        );
        fs::remove_dir_all(entry.path())
            .with_context(|| format!("removing {}", entry.path().display()))?;
    }
    Ok(())
}

/// A short hash of what the pinned state's layout depends on (FNV-1a).
fn identity(object: &[u8], layout: &KernelLayout) -> String {
    // SAFETY: KernelLayout is plain `#[repr(C)]` u32s.
    let layout_bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(layout).cast::<u8>(),
            size_of::<KernelLayout>(),
        )
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in object.iter().chain(layout_bytes) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
