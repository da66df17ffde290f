//! Cgroups (v2 only) that define a task (`propmon agent --attach-cgroup`):
//! finding the v2 hierarchy and a cgroup in it, listing the threads of
//! the processes in a cgroup and its sub-cgroups, telling whether a
//! process is in it, and its memory figures (`memory.current`,
//! `memory.max`), reported as `container_usage_bytes` and
//! `container_limit_bytes`.
//!
//! Membership itself is decided in the kernel, by the cgroup's id (its
//! directory's inode number, the kernel's `kernfs_node` id): the agent
//! only attaches the processes that are in the cgroup when the task
//! starts.

use std::{
    collections::{HashSet, VecDeque},
    fs,
    path::{Component, Path, PathBuf},
};

/// Where the mounts of this process are listed.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Sub-cgroups below a task's cgroup that the agent reads when it
/// attaches the processes in them (a bound on the walk, not on the
/// kernel, which follows every migration).
pub const MAX_SUBTREE_CGROUPS: usize = 4096;

/// Why a cgroup cannot define a task: each says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (none in {MOUNTINFO}): --attach-cgroup needs cgroup \
         v2 (mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
    )]
    NoV2,
    #[error(
        "{given} is not under the cgroup v2 mount {mount}: give a path relative to it, or \
         absolute under it (cgroup v1 hierarchies are not supported)"
    )]
    NotUnderMount { given: String, mount: String },
    #[error(
        "cgroup {given} not found under the cgroup v2 mount {mount} (is the service or container \
         running? check the path: `ls {mount}`)"
    )]
    NotFound { given: String, mount: String },
    #[error("{dir} is not a cgroup v2 directory (it has no cgroup.procs)")]
    NotACgroup { dir: String },
    #[error(
        "{given} is the root cgroup, which holds every process of the host: give a cgroup below it"
    )]
    Root { given: String },
    #[error("{given}: `..` is not allowed in a cgroup path")]
    Parent { given: String },
    #[error("cgroups need Linux")]
    NotLinux,
}

/// The v2 hierarchy as mounted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V2Mount {
    /// Where it is mounted (e.g. `/sys/fs/cgroup/unified`).
    pub mount_point: PathBuf,
    /// The cgroup mounted there, as a hierarchy path (`/` for the root).
    pub root: String,
}

impl V2Mount {
    /// The first cgroup2 mount in `/proc/self/mountinfo`.
    pub fn find() -> Result<Self, CgroupError> {
        let text = fs::read_to_string(MOUNTINFO).map_err(|_| CgroupError::NoV2)?;
        Self::parse(&text).ok_or(CgroupError::NoV2)
    }

    /// The first cgroup2 line of a mountinfo text: `ID PARENT MAJ:MIN
    /// ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
    pub fn parse(mountinfo: &str) -> Option<Self> {
        mountinfo.lines().find_map(|line| {
            let (mount, filesystem) = line.split_once(" - ")?;
            if filesystem.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = mount.split_whitespace().collect();
            Some(V2Mount {
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
            })
        })
    }
}

/// mountinfo escapes blanks, tabs, newlines and backslashes as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A v2 cgroup that defines a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Its directory under the v2 mount.
    pub dir: PathBuf,
    /// Its path in the hierarchy, as `/proc/<pid>/cgroup` shows it
    /// (`/system.slice/foo.service`).
    pub path: String,
    /// Its id: the directory's inode number (`kernfs_node.id`).
    pub id: u64,
}

/// Memory figures of a cgroup, each `None` where the file does not exist
/// (no memory controller in the cgroup's parent) or, for the limit, says
/// `max` (no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerMemory {
    /// `memory.current`: bytes charged to the cgroup (and below), page
    /// cache and kernel memory included.
    pub usage_bytes: Option<u64>,
    /// `memory.max`: the hard limit.
    pub limit_bytes: Option<u64>,
}

impl Cgroup {
    /// The cgroup `given` names: a path relative to the v2 mount, or
    /// absolute under it.
    pub fn resolve(given: &str) -> Result<Self, CgroupError> {
        Self::resolve_in(&V2Mount::find()?, given)
    }

    pub fn resolve_in(mount: &V2Mount, given: &str) -> Result<Self, CgroupError> {
        let shown = || given.to_owned();
        let mount_shown = || mount.mount_point.display().to_string();
        let path = Path::new(given.trim());
        let relative = if path.is_absolute() {
            path.strip_prefix(&mount.mount_point)
                .map_err(|_| CgroupError::NotUnderMount {
                    given: shown(),
                    mount: mount_shown(),
                })?
                .to_owned()
        } else {
            path.to_owned()
        };
        let mut parts = Vec::new();
        for component in relative.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                Component::CurDir => {}
                Component::ParentDir => return Err(CgroupError::Parent { given: shown() }),
                Component::RootDir | Component::Prefix(_) => {}
            }
        }
        if parts.is_empty() {
            return Err(CgroupError::Root { given: shown() });
        }
        let dir = parts
            .iter()
            .fold(mount.mount_point.clone(), |dir, part| dir.join(part));
        let metadata = match fs::metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => metadata,
            _ => {
                return Err(CgroupError::NotFound {
                    given: shown(),
                    mount: mount_shown(),
                });
            }
        };
        if !dir.join("cgroup.procs").exists() {
            return Err(CgroupError::NotACgroup {
                dir: dir.display().to_string(),
            });
        }
        let root = mount.root.trim_end_matches('/');
        Ok(Cgroup {
            path: format!("{root}/{}", parts.join("/")),
            id: inode(&metadata)?,
            dir,
        })
    }

    /// `(thread id, process id)` of every thread of the processes in the
    /// cgroup and its sub-cgroups, leaders first; sub-cgroups whose id is
    /// in `skip` (tasks of their own) are left out, with what is below
    /// them. Processes that exit meanwhile are simply not listed.
    pub fn threads(&self, skip: &HashSet<u64>) -> Vec<(u32, u32)> {
        let mut threads = Vec::new();
        for dir in self.subtree(skip) {
            let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
                continue; // removed meanwhile
            };
            for pid in procs
                .lines()
                .filter_map(|line| line.trim().parse::<u32>().ok())
            {
                let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                    continue;
                };
                threads.push((pid, pid));
                threads.extend(
                    tasks
                        .flatten()
                        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                        .filter(|&tid| tid != pid)
                        .map(|tid| (tid, pid)),
                );
            }
        }
        threads
    }

    /// The cgroup's directory and those below it, breadth first, within
    /// the depth the kernel looks up and [`MAX_SUBTREE_CGROUPS`].
    fn subtree(&self, skip: &HashSet<u64>) -> Vec<PathBuf> {
        let depth_limit = monitor_common::CGROUP_DEPTH as usize;
        let mut found = Vec::new();
        let mut queue = VecDeque::from([(self.dir.clone(), 0)]);
        while let Some((dir, depth)) = queue.pop_front() {
            if found.len() >= MAX_SUBTREE_CGROUPS {
                tracing::warn!(
                    "cgroup {}: more than {MAX_SUBTREE_CGROUPS} sub-cgroups; the processes of \
                     the others are counted once they move or fork",
                    self.path
                );
                break;
            }
            found.push(dir.clone());
            if depth + 1 >= depth_limit {
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                let own_task = inode(&metadata).is_ok_and(|id| skip.contains(&id));
                if metadata.is_dir() && !own_task {
                    queue.push_back((entry.path(), depth + 1));
                }
            }
        }
        found
    }

    /// Whether process `pid` is in the cgroup or below it (its
    /// `/proc/<pid>/cgroup` line for the v2 hierarchy, `0::PATH`).
    pub fn holds(&self, pid: u32) -> bool {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        text.lines()
            .find_map(|line| line.strip_prefix("0::"))
            .is_some_and(|path| {
                path == self.path
                    || path
                        .strip_prefix(&self.path)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }

    /// `memory.current` and `memory.max`, where they exist.
    pub fn memory(&self) -> ContainerMemory {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).ok();
        ContainerMemory::parse(read("memory.current"), read("memory.max"))
    }
}

impl ContainerMemory {
    /// From the text of `memory.current` and `memory.max`, if read.
    pub fn parse(current: Option<String>, max: Option<String>) -> Self {
        let number = |text: Option<String>| text?.trim().parse::<u64>().ok();
        ContainerMemory {
            usage_bytes: number(current),
            // `max` does not parse: no limit.
            limit_bytes: number(max),
        }
    }
}

#[cfg(unix)]
fn inode(metadata: &fs::Metadata) -> Result<u64, CgroupError> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(metadata.ino())
}

#[cfg(not(unix))]
fn inode(_metadata: &fs::Metadata) -> Result<u64, CgroupError> {
    Err(CgroupError::NotLinux)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_v2_mount_is_found_among_v1_ones() {
        let mount = V2Mount::parse(MOUNTINFO_HYBRID).unwrap();
        assert_eq!(mount.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mount.root, "/");
        assert_eq!(
            V2Mount::parse(&MOUNTINFO_HYBRID.replace("cgroup2", "x")),
            None
        );
        let escaped = "7 1 0:9 /a\\040b /mnt/c\\040g rw - cgroup2 none rw";
        let mount = V2Mount::parse(escaped).unwrap();
        assert_eq!(mount.root, "/a b");
        assert_eq!(mount.mount_point, Path::new("/mnt/c g"));
    }

    #[test]
    fn paths_are_relative_to_the_mount_or_absolute_under_it() {
        let dir = std::env::temp_dir().join(format!("propmon-cgroup-{}", std::process::id()));
        let cgroup = dir.join("system.slice").join("foo.service");
        fs::create_dir_all(&cgroup).unwrap();
        fs::write(cgroup.join("cgroup.procs"), "").unwrap();
        fs::create_dir_all(dir.join("plain")).unwrap();
        let mount = V2Mount {
            mount_point: dir.clone(),
            root: "/".into(),
        };
        let found = Cgroup::resolve_in(&mount, "system.slice/foo.service").unwrap();
        assert_eq!(found.path, "/system.slice/foo.service");
        assert_eq!(found.dir, cgroup);
        let absolute = Cgroup::resolve_in(&mount, cgroup.to_str().unwrap()).unwrap();
        assert_eq!(absolute, found);
        let errors = [
            ("/sys/fs/cgroup/memory/x", "not under the cgroup v2 mount"),
            ("nope.service", "not found under the cgroup v2 mount"),
            ("plain", "not a cgroup v2 directory"),
            ("", "root cgroup"),
            ("system.slice/../..", "`..` is not allowed"),
        ];
        for (given, expected) in errors {
            let err = Cgroup::resolve_in(&mount, given).unwrap_err().to_string();
            assert!(err.contains(expected), "{given}: {err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_files_give_usage_and_limit_and_max_is_no_limit() {
        let read = |current: Option<&str>, max: Option<&str>| {
            ContainerMemory::parse(current.map(Into::into), max.map(Into::into))
        };
        assert_eq!(
            read(Some("4096\n"), Some("1073741824\n")),
            ContainerMemory {
                usage_bytes: Some(4096),
                limit_bytes: Some(1 << 30)
            }
        );
        assert_eq!(
            read(Some("4096\n"), Some("max\n")),
            ContainerMemory {
                usage_bytes: Some(4096),
                limit_bytes: None
            }
        );
        assert_eq!(read(None, None), ContainerMemory::default());
    }
}
