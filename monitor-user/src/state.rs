//! What a restarted agent needs to take up its tasks where the previous
//! one left them (`propmon agent --state-dir DIR`): the task registry, in
//! a root-only directory. The counters themselves stay in the kernel, in
//! maps pinned in bpffs, and keep counting while no agent runs.
//!
//! The registry is rewritten (atomically: a new file renamed over the old)
//! whenever a task starts, ends or changes, and at most every few seconds
//! when only message numbers moved. A lock file makes sure one agent at a
//! time uses a directory.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::collect::TaskTotals;

/// Format of the registry file; another number is not read.
const VERSION: u32 = 1;
/// Largest registry accepted (4,096 tasks take well under a megabyte).
const MAX_REGISTRY_BYTES: u64 = 16 << 20;
const REGISTRY: &str = "tasks.json";

/// The registry, as saved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub version: u32,
    pub tasks: Vec<SavedTask>,
    /// The proplet process's slot, if it was attached.
    pub proplet: Option<SavedSlot>,
    /// Module processes that exec'd before their task was announced.
    pub provisional: Vec<SavedProvisional>,
}

/// One task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedTask {
    pub task_id: String,
    pub proplet_id: String,
    /// The monitoring profile, as a profile JSON object.
    pub profile: serde_json::Value,
    pub attribution: Option<String>,
    pub slot: u32,
    /// The slot's generation: if the kernel's differs, the task is gone.
    pub generation: u32,
    pub awaiting_discovery: bool,
    /// When the task started (ms since the Unix epoch).
    pub started_unix_ms: u64,
    /// The last message's number.
    pub seq: u64,
    /// Totals of a shared slot when the task began (in-process tasks).
    pub baseline: Option<TaskTotals>,
    /// The cgroup directory that defines the task, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSlot {
    pub slot: u32,
    pub generation: u32,
    pub pid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedProvisional {
    pub task_id: String,
    pub slot: u32,
    pub generation: u32,
}

/// The state directory, locked for this agent.
pub struct StateDir {
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl StateDir {
    /// Opens (creating it root-only) and locks `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("creating the state directory {}", path.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path.join("lock"))
            .with_context(|| format!("opening {}", path.join("lock").display()))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| {
                anyhow::anyhow!(
                    "another propmon agent uses the state directory {} ({errno})",
                    path.display()
                )
            })?;
        Ok(StateDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The name under which the kernel state of this directory is pinned:
    /// one per directory, so that two directories never share counters.
    pub fn kernel_state_name(&self) -> String {
        let canonical = fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in canonical.as_os_str().as_encoded_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    /// The saved registry, if there is a readable one.
    pub fn load(&self) -> anyhow::Result<Option<Registry>> {
        let path = self.path.join(REGISTRY);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let mut text = Vec::new();
        file.take(MAX_REGISTRY_BYTES + 1)
            .read_to_end(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(
            text.len() as u64 <= MAX_REGISTRY_BYTES,
            "{} is larger than {MAX_REGISTRY_BYTES} bytes",
            path.display()
        );
        let registry: Registry = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a propmon registry", path.display()))?;
        if registry.version != VERSION {
            tracing::warn!(
                "{} has format {} (this propmon reads {VERSION}); starting clean",
                path.display(),
                registry.version
            );
            return Ok(None);
        }
        Ok(Some(registry))
    }

    /// Saves the registry (a new file renamed over the old one).
    pub fn save(&self, registry: &Registry) -> anyhow::Result<()> {
        let path = self.path.join(REGISTRY);
        let temporary = self.path.join(format!("{REGISTRY}.new"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("writing {}", temporary.display()))?;
        let mut saved = registry.clone();
        saved.version = VERSION;
        file.write_all(&serde_json::to_vec(&saved)?)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing {}", temporary.display()))?;
        fs::rename(&temporary, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// Forgets the registry.
    pub fn clear(&self) -> anyhow::Result<()> {
        match fs::remove_file(self.path.join(REGISTRY)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).context("removing the saved registry")
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_locks() {
        let dir = std::env::temp_dir().join(format!("propmon-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.load().unwrap(), None, "nothing saved yet");
        let registry = Registry {
            version: VERSION,
            tasks: vec![SavedTask {
                task_id: "t".into(),
                proplet_id: "p".into(),
                profile: serde_json::json!({"interval": "1s"}),
                attribution: None,
                slot: 3,
                generation: 7,
                awaiting_discovery: false,
                started_unix_ms: 1,
                seq: 42,
                baseline: None,
                cgroup: Some("/sys/fs/cgroup/unified/db.service".into()),
            }],
            proplet: None,
            provisional: vec![],
        };
        state.save(&registry).unwrap();
        assert_eq!(state.load().unwrap(), Some(registry));
        let mode = fs::metadata(&dir).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let second = StateDir::open(&dir).err().expect("locked by the first");
        assert!(
            second.to_string().contains("another propmon agent"),
            "{second}"
        );
        assert_eq!(state.kernel_state_name().len(), 16);
        state.clear().unwrap();
        assert_eq!(state.load().unwrap(), None);
        drop(state);
        let _ = fs::remove_dir_all(&dir);
    }
}
