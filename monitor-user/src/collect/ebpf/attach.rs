//! Attaching running processes: every thread of a process tree
//! (`propmon agent --attach`), or of the processes in a cgroup
//! (`--attach-cgroup`), is given its task-local storage from here,
//! through a pidfd, so that all of them are part of the task at once, idle
//! threads included. [`ThreadJoin`] joins one thread; [`TreeAttach`] and
//! [`CgroupAttach`] say which.
//!
//! A thread created by a thread we have not reached yet is not seen by the
//! kernel as a member; the walk is repeated until a whole walk finds no
//! new thread. From then on every thread is a member, and what members
//! create joins in the kernel (`task_newtask`), as do processes moved into
//! the cgroup (`cgroup_attach_task`).
//!
//! One task per process: a process that already belongs to another live
//! task keeps it, with its descendants (a tree attached inside a tree);
//! attaching it directly is refused. Only the proplet's own slot gives
//! its threads away.

use std::{collections::HashSet, fs, io, mem::offset_of, os::fd::AsFd as _};

use monitor_common::{SlotRef, TaskConfig, TaskRecord, ThreadState, slot, thread};

use super::sys::{MappedArray, TaskStorage, thread_pidfd};
use crate::collect::cgroup::Cgroup;

/// Walks after which a tree that keeps growing is reported as attached
/// anyway (each walk takes what it finds).
const MAX_WALKS: usize = 50;

/// Why a process could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no process with PID {0}")]
    NoProcess(u32),
    /// The process belongs to the task in `slot`.
    #[error("PID {pid} already belongs to another task")]
    Owned { pid: u32, slot: u32 },
    #[error("giving thread {tid} its task: {source}")]
    Storage {
        tid: u32,
        #[source]
        source: io::Error,
    },
}

/// What an attach did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Attached {
    pub threads: usize,
    pub processes: usize,
    /// Processes left to the task they already belonged to.
    pub kept_by_other_tasks: usize,
    /// Processes that left the cgroup while being attached.
    pub moved_away: usize,
}

/// Gives threads, one at a time, the storage that makes them members of
/// the target task.
pub struct ThreadJoin<'a> {
    pub storage: &'a TaskStorage<ThreadState>,
    pub config: &'a MappedArray<TaskConfig>,
    pub records: &'a MappedArray<TaskRecord>,
    pub target: SlotRef,
    /// `collect` flags of the target task.
    pub flags: u32,
}

/// What joining one thread did.
pub enum Outcome {
    Joined,
    AlreadyHere,
    /// It belongs to the task in this slot.
    Owned(u32),
    Gone,
}

/// Attaches a process tree.
pub struct TreeAttach<'a> {
    pub threads: ThreadJoin<'a>,
}

impl TreeAttach<'_> {
    /// Makes `root`, its threads and its descendants members of the target.
    pub fn run(&self, root: u32) -> Result<Attached, AttachError> {
        if !fs::exists(format!("/proc/{root}/task")).unwrap_or(false) {
            return Err(AttachError::NoProcess(root));
        }
        let mut done = Attached::default();
        let mut seen: HashSet<u32> = HashSet::new();
        for _ in 0..MAX_WALKS {
            let before = done.threads;
            self.walk(root, &mut seen, &mut done)?;
            if done.threads == before {
                break;
            }
        }
        if done.threads == 0 && done.kept_by_other_tasks == 0 && !seen.contains(&root) {
            return Err(AttachError::NoProcess(root));
        }
        Ok(done)
    }

    /// One walk of the tree from `root`.
    fn walk(
        &self,
        root: u32,
        seen: &mut HashSet<u32>,
        done: &mut Attached,
    ) -> Result<(), AttachError> {
        let mut processes = vec![root];
        while let Some(pid) = processes.pop() {
            let Ok(threads) = threads_of(pid) else {
                continue; // exited meanwhile
            };
            let mut kept = false;
            for tid in &threads {
                if !seen.insert(*tid) {
                    continue;
                }
                match self.threads.join(*tid, *tid == pid)? {
                    Outcome::Joined => {
                        done.threads += 1;
                        done.processes += usize::from(*tid == pid);
                    }
                    Outcome::Owned(slot) if pid == root => {
                        return Err(AttachError::Owned { pid, slot });
                    }
                    Outcome::Owned(_) => {
                        kept = true;
                        break;
                    }
                    Outcome::AlreadyHere | Outcome::Gone => {}
                }
            }
            if kept {
                done.kept_by_other_tasks += 1;
                continue; // its descendants stay with it
            }
            for tid in threads {
                processes.extend(children_of(pid, tid));
            }
        }
        Ok(())
    }
}

/// Attaches the processes in a cgroup and its sub-cgroups.
pub struct CgroupAttach<'a> {
    pub threads: ThreadJoin<'a>,
    pub cgroup: &'a Cgroup,
    /// Sub-cgroups to leave out: they define tasks of their own.
    pub others: &'a HashSet<u64>,
}

impl CgroupAttach<'_> {
    /// Joins every thread listed in the cgroup, walking again until a
    /// walk finds no new thread; then checks that each process is still
    /// in the cgroup (a process moved out between our reading of the
    /// cgroup and its join was not seen leaving by the kernel), and takes
    /// back those that are not.
    pub fn run(&self) -> Result<Attached, AttachError> {
        let mut done = Attached::default();
        let mut seen: HashSet<u32> = HashSet::new();
        let mut joined: Vec<(u32, u32)> = Vec::new();
        for _ in 0..MAX_WALKS {
            let before = done.threads;
            for (tid, tgid) in self.cgroup.threads(self.others) {
                if !seen.insert(tid) {
                    continue;
                }
                match self.threads.join(tid, tid == tgid)? {
                    Outcome::Joined => {
                        done.threads += 1;
                        done.processes += usize::from(tid == tgid);
                        joined.push((tid, tgid));
                    }
                    Outcome::Owned(_) if tid == tgid => done.kept_by_other_tasks += 1,
                    Outcome::Owned(_) | Outcome::AlreadyHere | Outcome::Gone => {}
                }
            }
            if done.threads == before {
                break;
            }
        }
        let mut away: HashSet<u32> = HashSet::new();
        for &(tid, tgid) in &joined {
            if away.contains(&tgid) || !self.cgroup.holds(tgid) {
                away.insert(tgid);
                self.threads.leave(tid, tid == tgid)?;
            }
        }
        done.moved_away = away.len();
        Ok(done)
    }
}

impl ThreadJoin<'_> {
    /// Gives one thread its storage.
    pub fn join(&self, tid: u32, leader: bool) -> Result<Outcome, AttachError> {
        let storage_error = |source| AttachError::Storage { tid, source };
        let pidfd = match thread_pidfd(tid) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(Outcome::Gone),
            Err(err) => return Err(storage_error(err)),
        };
        if let Some(existing) = self.storage.get(pidfd.as_fd()).map_err(storage_error)? {
            match self.membership(&existing) {
                Some(_) if existing.slot == self.target.slot => return Ok(Outcome::AlreadyHere),
                Some(config) if config.flags & slot::YIELDS_TO_DISCOVERY != 0 => {
                    self.count(existing.slot, leader, Direction::Left);
                }
                Some(_) => return Ok(Outcome::Owned(existing.slot)),
                None => {}
            }
        }
        // Counted in before the thread can be counted out by its release.
        self.count(self.target.slot, leader, Direction::Joined);
        let state = ThreadState {
            slot: self.target.slot,
            generation: self.target.generation,
            flags: self.flags | thread::BASELINE_PENDING,
            ..ThreadState::default()
        };
        match self.storage.set(pidfd.as_fd(), &state) {
            Ok(()) => Ok(Outcome::Joined),
            Err(err) => {
                self.count(self.target.slot, leader, Direction::Undo);
                match err.raw_os_error() {
                    Some(libc::ENOENT | libc::ESRCH) => Ok(Outcome::Gone),
                    _ => Err(storage_error(err)),
                }
            }
        }
    }

    /// Takes back the storage [`ThreadJoin::join`] gave, if the thread
    /// still names the target (the kernel may have moved it since).
    pub fn leave(&self, tid: u32, leader: bool) -> Result<(), AttachError> {
        let storage_error = |source| AttachError::Storage { tid, source };
        let pidfd = match thread_pidfd(tid) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(err) => return Err(storage_error(err)),
        };
        let ours = self
            .storage
            .get(pidfd.as_fd())
            .map_err(storage_error)?
            .is_some_and(|state| {
                state.slot == self.target.slot && state.generation == self.target.generation
            });
        if ours {
            self.storage.remove(pidfd.as_fd()).map_err(storage_error)?;
            self.count(self.target.slot, leader, Direction::Left);
        }
        Ok(())
    }

    /// The settings of the live task `state` names, if any.
    fn membership(&self, state: &ThreadState) -> Option<TaskConfig> {
        if state.flags & thread::SPAWNER != 0 || state.slot >= monitor_common::MAX_TASKS {
            return None;
        }
        let config = self.config.get(state.slot);
        (config.generation == state.generation && config.flags != 0).then_some(config)
    }

    fn count(&self, slot: u32, leader: bool, direction: Direction) {
        let threads_started = offset_of!(TaskRecord, threads_started);
        let procs_started = offset_of!(TaskRecord, procs_started);
        let (threads, procs) = match direction {
            Direction::Joined | Direction::Undo => (threads_started, procs_started),
            Direction::Left => (
                offset_of!(TaskRecord, threads_freed),
                offset_of!(TaskRecord, procs_exited),
            ),
        };
        let apply = |offset| match direction {
            Direction::Undo => self.records.sub(slot, offset, 1),
            _ => self.records.add(slot, offset, 1),
        };
        apply(threads);
        if leader {
            apply(procs);
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Joined,
    Undo,
    /// Leaving a task: the proplet's slot for the target, or the target
    /// for nothing (counted as released).
    Left,
}

/// Thread ids of a process.
fn threads_of(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    // The leader first: a process is judged by its leader's membership.
    tids.sort_unstable_by_key(|&tid| tid != pid);
    Ok(tids)
}

/// Children forked by thread `tid` of `pid` (CONFIG_PROC_CHILDREN).
fn children_of(pid: u32, tid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}
