//! The few `bpf(2)` commands and memory mappings aya 0.14 has no API for:
//! task-local storage keyed by pidfd, BPF iterators run from a link we
//! keep, and arrays shared through `mmap`; and one epoll fd for the
//! programs' ring buffers.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::Pod;

/// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `enum bpf_attach_type` value of task iterators.
const BPF_TRACE_ITER: u32 = 28;
/// Map update flags.
pub const BPF_ANY: u64 = 0;
/// pidfd_open(2) flag for a thread rather than a process (Linux 6.9+;
/// O_EXCL's value).
const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// `union bpf_attr` for the map element commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_LINK_CREATE (the fields an iterator uses).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_ITER_CREATE.
#[repr(C)]
#[derive(Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// A pidfd for one thread (`tid`), or for a process when the kernel
/// predates thread pidfds and `tid` is a thread-group leader.
pub fn thread_pidfd(tid: u32) -> io::Result<OwnedFd> {
    let open = |flags: libc::c_uint| {
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    };
    match open(PIDFD_THREAD) {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => open(0),
        other => other,
    }
}

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`) seen from
/// userspace, where a thread is named by a pidfd.
pub struct TaskStorage<V> {
    fd: OwnedFd,
    _value: PhantomData<V>,
}

impl<V: Pod> TaskStorage<V> {
    pub fn new(fd: OwnedFd) -> Self {
        TaskStorage {
            fd,
            _value: PhantomData,
        }
    }

    /// The storage of the thread behind `pidfd`, if it has one.
    pub fn get(&self, pidfd: BorrowedFd<'_>) -> io::Result<Option<V>> {
        let key: i32 = pidfd.as_raw_fd();
        let mut value = std::mem::MaybeUninit::<V>::zeroed();
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: std::ptr::from_ref(&key) as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // SAFETY: the kernel filled the value; V is Pod.
            Ok(_) => Ok(Some(unsafe { value.assume_init() })),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Gives the thread behind `pidfd` this storage.
    pub fn set(&self, pidfd: BorrowedFd<'_>, value: &V) -> io::Result<()> {
        let key: i32 = pidfd.as_raw_fd();
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: std::ptr::from_ref(&key) as u64,
            value: std::ptr::from_ref(value) as u64,
            flags: BPF_ANY,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Drops the storage of the thread behind `pidfd` (none is no error).
    pub fn remove(&self, pidfd: BorrowedFd<'_>) -> io::Result<()> {
        let key: i32 = pidfd.as_raw_fd();
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: std::ptr::from_ref(&key) as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Err(err) if err.raw_os_error() != Some(libc::ENOENT) => Err(err),
            _ => Ok(()),
        }
    }
}

/// A BPF iterator link: each [`IterLink::run`] walks the kernel objects
/// once, running the program on each.
pub struct IterLink {
    fd: OwnedFd,
}

impl IterLink {
    /// Attaches a loaded `iter/*` program (BPF_LINK_CREATE, Linux 5.8+).
    pub fn attach(program: BorrowedFd<'_>) -> io::Result<Self> {
        let mut attr = LinkCreateAttr {
            prog_fd: program.as_raw_fd() as u32,
            attach_type: BPF_TRACE_ITER,
            ..Default::default()
        };
        let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
        // SAFETY: a new link fd we own.
        Ok(IterLink {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    /// Runs one walk: the program produces no output, so reading the
    /// iterator to its end is the walk. Three system calls in all.
    pub fn run(&self) -> io::Result<()> {
        let mut attr = IterCreateAttr {
            link_fd: self.fd.as_raw_fd() as u32,
            flags: 0,
        };
        let fd = bpf(BPF_ITER_CREATE, &mut attr)?;
        // SAFETY: a new iterator fd we own.
        let iterator = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mut buffer = [0u8; 256];
        loop {
            // SAFETY: reading into a local buffer of the size passed.
            let read = unsafe {
                libc::read(
                    iterator.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            match read {
                0 => return Ok(()),
                n if n > 0 => continue,
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }
}

/// An array map created with `BPF_F_MMAPABLE`, mapped into our memory:
/// reading a value is a memory read, not a system call.
pub struct MappedArray<V> {
    base: NonNull<u8>,
    len: usize,
    entries: u32,
    /// Distance between values (value size rounded up to 8, as the kernel
    /// lays them out).
    stride: usize,
    _value: PhantomData<V>,
}

// SAFETY: the mapping is plain shared memory; access goes through
// volatile or atomic operations.
unsafe impl<V> Send for MappedArray<V> {}

impl<V: Pod> MappedArray<V> {
    /// Maps the first `entries` values of the array behind `fd`.
    pub fn map(fd: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        let stride = size_of::<V>().next_multiple_of(8);
        let (base, len) = Self::mmap(fd, stride * entries as usize)?;
        Ok(MappedArray {
            base,
            len,
            entries,
            stride,
            _value: PhantomData,
        })
    }

    /// Values mapped.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Maps the first `entries` values instead (more, or as many), from
    /// the same array `fd`. The kernel maps a BPF array's pages in at
    /// mmap time, all counted in the agent's RSS: an array that fills
    /// from its start is mapped as far as it is used.
    pub fn remap(&mut self, fd: BorrowedFd<'_>, entries: u32) -> io::Result<()> {
        let (base, len) = Self::mmap(fd, self.stride * entries as usize)?;
        // SAFETY: unmapping our previous mapping, replaced below; no
        // reference into it outlives `&mut self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        self.base = base;
        self.len = len;
        self.entries = entries;
        Ok(())
    }

    fn mmap(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<(NonNull<u8>, usize)> {
        let len = bytes.max(1).next_multiple_of(procfs_page_size());
        // SAFETY: mapping a BPF array fd shared and writable, as the kernel
        // allows for BPF_F_MMAPABLE arrays; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast()).expect("mmap returned a non-NULL address");
        Ok((base, len))
    }

    fn slot_ptr(&self, index: u32) -> *mut V {
        assert!(
            index < self.entries,
            "index {index} out of the mapped array"
        );
        // SAFETY: in bounds of the mapping, checked above.
        unsafe { self.base.as_ptr().add(index as usize * self.stride).cast() }
    }

    /// A copy of value `index`.
    pub fn get(&self, index: u32) -> V {
        // SAFETY: aligned, in bounds; V is Pod, so any bytes are valid.
        unsafe { std::ptr::read_volatile(self.slot_ptr(index)) }
    }

    /// Overwrites value `index` (only for values no program writes now).
    pub fn set(&self, index: u32, value: &V) {
        // SAFETY: as for `get`.
        unsafe { std::ptr::write_volatile(self.slot_ptr(index), *value) }
    }

    /// The u64 at byte `offset` of value `index`, for atomic access shared
    /// with the programs.
    pub fn word(&self, index: u32, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= size_of::<V>());
        // SAFETY: aligned (values are 8-aligned, offset too), in bounds,
        // and lives as long as the mapping, which `self` owns.
        unsafe { AtomicU64::from_ptr(self.slot_ptr(index).cast::<u8>().add(offset).cast()) }
    }

    /// Adds to the u64 at byte `offset` of value `index`, atomically with
    /// the programs' own adds.
    pub fn add(&self, index: u32, offset: usize, value: u64) {
        self.word(index, offset).fetch_add(value, Ordering::SeqCst);
    }

    /// Subtracts from the u64 at byte `offset` of value `index`.
    pub fn sub(&self, index: u32, offset: usize, value: u64) {
        self.word(index, offset).fetch_sub(value, Ordering::SeqCst);
    }
}

impl<V> Drop for MappedArray<V> {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn procfs_page_size() -> usize {
    // SAFETY: plain query.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// An epoll instance watching some fds: itself readable when one of them
/// is, so that the agent's loop waits on one fd for all of them.
pub struct Poll {
    fd: OwnedFd,
}

impl Poll {
    /// Watches `fds` for input (level-triggered: readable for as long as
    /// one has something unread).
    pub fn new<'a>(fds: impl IntoIterator<Item = BorrowedFd<'a>>) -> io::Result<Self> {
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        let poll = Poll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        for watched in fds {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: watched.as_raw_fd() as u64,
            };
            // SAFETY: both fds are open; `event` is a valid struct.
            let ret = unsafe {
                libc::epoll_ctl(
                    poll.fd.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    watched.as_raw_fd(),
                    &mut event,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(poll)
    }
}

impl AsRawFd for Poll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Duplicates a borrowed fd into one we own.
pub fn own(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// An fd of a map, for `TaskStorage::new`.
pub fn map_fd(map: &aya::maps::MapData) -> io::Result<OwnedFd> {
    own(map.fd().as_fd())
}
