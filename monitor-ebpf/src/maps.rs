//! The maps shared by all programs (layouts in `monitor-common`), and the
//! lookups every hook family uses.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr,
};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::generated::{
        bpf_get_current_task_btf, bpf_sk_storage_get, bpf_task_storage_delete, bpf_task_storage_get,
    },
    macros::{btf_map, map},
    maps::{Array, HashMap, Queue, RingBuf},
};
use monitor_common::{
    Control, DISCOVERY_ARGV_BYTES, DISCOVERY_ID_BYTES, KernelStats, MAX_CGROUP_TASKS,
    MAX_DISCOVERIES, MAX_PEER_ROWS, MAX_PENDING_MOVES, MAX_PROVISIONAL, MAX_TASKS, PeerKey,
    PeerRow, PendingMove, SlotRef, SocketState, TASK_EVENTS_BYTES, TaskConfig, TaskRecord,
    ThreadState, switch,
};

use crate::layout::{field, layout, task_ids};

/// `BPF_MAP_TYPE_TASK_STORAGE` (include/uapi/linux/bpf.h): aya-ebpf 0.2
/// has no definition for it, so this is the BTF map definition libbpf
/// would read from C's `__uint(type, ...)` fields. Local storage maps must
/// be BTF-defined (the kernel wants the value's BTF) and have no capacity:
/// an entry lives in the thread itself and goes with it, so adoption can
/// never fail for lack of `max_entries`.
#[repr(C)]
pub struct TaskStorage<V> {
    r#type: *const [i32; 29],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are BTF placeholders the loader reads, never
// dereferenced; the map itself is the kernel's.
unsafe impl<V> Sync for TaskStorage<V> {}

impl<V> TaskStorage<V> {
    pub const fn new() -> Self {
        TaskStorage {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    fn as_ptr(&self) -> *mut c_void {
        ptr::from_ref(self).cast_mut().cast()
    }

    /// The storage of `task` (a BTF `struct task_struct *`), if it has one.
    #[inline(always)]
    pub fn get(&self, task: u64) -> Option<&'static mut V> {
        // Most threads of a host have no task-local storage at all: one
        // load tells, where the helper would take its per-CPU lock first.
        if field::<u64>(task, layout().task_bpf_storage) == 0 {
            return None;
        }
        // SAFETY: the helper checks the task pointer's BTF type; a
        // non-NULL result points to the task's storage, valid while the
        // program runs (RCU).
        let value =
            unsafe { bpf_task_storage_get(self.as_ptr(), task as *mut _, ptr::null_mut(), 0) };
        // SAFETY: see above.
        unsafe { value.cast::<V>().as_mut() }
    }

    /// The storage of `task`, created from `initial` if it has none.
    #[inline(always)]
    pub fn get_or_insert(&self, task: u64, initial: &mut V) -> Option<&'static mut V> {
        // SAFETY: as for `get`; `initial` is copied by the helper.
        let value = unsafe {
            bpf_task_storage_get(
                self.as_ptr(),
                task as *mut _,
                ptr::from_mut(initial).cast(),
                BPF_LOCAL_STORAGE_GET_F_CREATE.into(),
            )
        };
        // SAFETY: see `get`.
        unsafe { value.cast::<V>().as_mut() }
    }

    /// Forgets the storage of `task`.
    #[inline(always)]
    pub fn remove(&self, task: u64) {
        // SAFETY: as for `get`. A task without storage is no error here.
        unsafe { bpf_task_storage_delete(self.as_ptr(), task as *mut _) };
    }
}

/// `BPF_MAP_TYPE_SK_STORAGE`, BTF-defined for the same reasons as
/// [`TaskStorage`]: socket-local storage, which lives and dies with the
/// socket. aya-ebpf 0.2's own definition only serves `cgroup/sock_addr`
/// programs.
#[repr(C)]
pub struct SocketStorage<V> {
    r#type: *const [i32; 24],
    key: *const i32,
    value: *const V,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: as for `TaskStorage`.
unsafe impl<V> Sync for SocketStorage<V> {}

impl<V> SocketStorage<V> {
    pub const fn new() -> Self {
        SocketStorage {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The storage of `sock` (a BTF `struct sock *`), created from
    /// `initial` if `initial` is given and it has none.
    #[inline(always)]
    pub fn get(&self, sock: u64, initial: Option<&mut V>) -> Option<&'static mut V> {
        let (value, flags) = match initial {
            Some(initial) => (
                ptr::from_mut(initial).cast(),
                u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE),
            ),
            None => (ptr::null_mut(), 0),
        };
        let map = ptr::from_ref(self).cast_mut().cast();
        // SAFETY: the helper checks the socket pointer's BTF type; a
        // non-NULL result is the socket's storage, valid while we run.
        let found = unsafe { bpf_sk_storage_get(map, sock as *mut _, value, flags) };
        // SAFETY: see above.
        unsafe { found.cast::<V>().as_mut() }
    }
}

/// Which task each thread belongs to. Reached in O(1) from the thread
/// itself, with no hashing; a thread without storage is a stranger.
#[btf_map]
pub static THREADS: TaskStorage<ThreadState> = TaskStorage::new();

/// Per-slot generation and flags, written by userspace through a memory
/// mapping, as one 64-bit store.
#[map(name = "TASK_CONFIG")]
pub static TASK_CONFIG: Array<TaskConfig> = Array::with_max_entries(MAX_TASKS, BPF_F_MMAPABLE);

/// Per-task counters and snapshot, memory-mapped by userspace.
#[map(name = "TASKS")]
pub static TASKS: Array<TaskRecord> = Array::with_max_entries(MAX_TASKS, BPF_F_MMAPABLE);

/// The current pass number and the health counters, memory-mapped.
#[map(name = "CONTROL")]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Agent-wide switches (`monitor_common::switch`).
#[map(name = "SWITCHES")]
pub static SWITCHES: Array<u32> = Array::with_max_entries(switch::COUNT, 0);

/// Task ids to find in argv at exec (NUL-padded id -> task).
#[map(name = "DISCOVER")]
pub static DISCOVER: HashMap<[u8; DISCOVERY_ID_BYTES], SlotRef> =
    HashMap::with_max_entries(MAX_DISCOVERIES, BPF_F_NO_PREALLOC);

/// Free slots the exec hook may give to a module nobody announced yet.
#[map(name = "PROVISIONAL_POOL")]
pub static PROVISIONAL_POOL: Queue<SlotRef> = Queue::with_max_entries(MAX_PROVISIONAL, 0);

/// Ids that already have a provisional root (NUL-padded id -> task).
#[map(name = "PROVISIONAL")]
pub static PROVISIONAL: HashMap<[u8; DISCOVERY_ID_BYTES], SlotRef> =
    HashMap::with_max_entries(MAX_PROVISIONAL, BPF_F_NO_PREALLOC);

/// Every remote endpoint of every task, memory-mapped by userspace.
#[map(name = "PEERS")]
pub static PEERS: Array<PeerRow> = Array::with_max_entries(MAX_PEER_ROWS, BPF_F_MMAPABLE);

/// The row of each task's peer.
#[map(name = "PEER_INDEX")]
pub static PEER_INDEX: HashMap<PeerKey, u32> =
    HashMap::with_max_entries(MAX_PEER_ROWS, BPF_F_NO_PREALLOC);

/// Rows userspace took back from ended tasks, to be taken again.
#[map(name = "FREE_PEER_ROWS")]
pub static FREE_PEER_ROWS: Queue<u32> = Queue::with_max_entries(MAX_PEER_ROWS, 0);

/// The peer row of each socket a task used.
#[btf_map]
pub static SOCKETS: SocketStorage<SocketState> = SocketStorage::new();

/// Cgroups (v2) that define a task: cgroup id -> task, filled by userspace.
#[map(name = "CGROUPS")]
pub static CGROUPS: HashMap<u64, SlotRef> =
    HashMap::with_max_entries(MAX_CGROUP_TASKS, BPF_F_NO_PREALLOC);

/// Threads whose process changed cgroup, by thread id, until the next
/// look at them settles the move (`moves`).
#[map(name = "PENDING_MOVES")]
pub static PENDING_MOVES: HashMap<u32, PendingMove> =
    HashMap::with_max_entries(MAX_PENDING_MOVES, BPF_F_NO_PREALLOC);

/// Per-CPU room for an argv being searched (too big for the BPF stack).
#[map(name = "ARGV_SCRATCH")]
pub static ARGV_SCRATCH: aya_ebpf::maps::PerCpuArray<Argv> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

/// argv bytes, plus one id being assembled.
#[repr(C)]
pub struct Argv {
    pub bytes: [u8; DISCOVERY_ARGV_BYTES],
    pub id: [u8; DISCOVERY_ID_BYTES],
}

/// Events userspace reacts to (see `monitor_common::TaskEvent`).
#[map(name = "TASK_EVENTS")]
pub static TASK_EVENTS: RingBuf = RingBuf::with_byte_size(TASK_EVENTS_BYTES, 0);

/// A thread's membership, if it is a member of a live task: its storage
/// names the slot's current generation. `None` for strangers, for
/// spawners, and for threads of ended tasks (whose storage is dropped).
#[inline(always)]
pub fn member(task: u64) -> Option<(&'static mut ThreadState, TaskConfig)> {
    let thread = THREADS.get(task)?;
    if thread.flags & monitor_common::thread::SPAWNER != 0 {
        return None;
    }
    valid_membership(task, thread)
}

/// `thread` (the storage of `task`) with its slot's settings, if its
/// task is still the slot's; otherwise the storage is dropped.
#[inline(always)]
pub fn valid_membership(
    task: u64,
    thread: &'static mut ThreadState,
) -> Option<(&'static mut ThreadState, TaskConfig)> {
    let config = task_config(thread.slot)?;
    if config.generation != thread.generation || config.flags == 0 {
        THREADS.remove(task);
        return None;
    }
    Some((thread, config))
}

/// The current thread as a BTF `struct task_struct *`.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// The settings of a slot, read in one load: userspace rewrites both
/// fields with one 64-bit store, so they always match each other.
#[inline(always)]
pub fn task_config(slot: u32) -> Option<TaskConfig> {
    let config = TASK_CONFIG.get_ptr(slot)?;
    // SAFETY: an aligned 8-byte array value.
    let word = unsafe { ptr::read_volatile(config.cast::<u64>()) };
    Some(TaskConfig {
        generation: word as u32,
        flags: (word >> 32) as u32,
    })
}

/// The record of a slot; `None` only for a slot out of range.
#[inline(always)]
pub fn task_record(slot: u32) -> Option<&'static mut TaskRecord> {
    // SAFETY: array values live as long as the map; every shared field is
    // updated with atomic instructions.
    TASKS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// Whether an agent-wide switch is on.
#[inline(always)]
pub fn switch_on(index: u32) -> bool {
    SWITCHES.get(index).is_some_and(|value| *value != 0)
}

/// The health counters.
#[inline(always)]
pub fn kernel_stats() -> Option<&'static mut KernelStats> {
    // SAFETY: as for `task_record`.
    CONTROL.get_ptr_mut(0).map(|p| unsafe { &mut (*p).stats })
}

/// The count of `PENDING_MOVES` entries.
#[inline(always)]
pub fn moves_pending() -> Option<&'static mut u64> {
    // SAFETY: as for `task_record`.
    CONTROL
        .get_ptr_mut(0)
        .map(|p| unsafe { &mut (*p).moves_pending })
}

/// Whether some thread has a move to settle: one load, so that the hooks
/// that settle moves cost nothing more while there is none.
#[inline(always)]
pub fn any_move_pending() -> bool {
    // SAFETY: an aligned u64 in a map value.
    moves_pending().is_some_and(|count| unsafe { ptr::read_volatile(count) } != 0)
}

/// Counts a thread (and, for a thread-group leader, its process) in.
#[inline(always)]
pub fn count_joined(task: u64, slot: u32) {
    let Some(record) = task_record(slot) else {
        return;
    };
    add(&mut record.threads_started, 1);
    let (pid, tgid) = task_ids(task);
    if pid == tgid {
        add(&mut record.procs_started, 1);
    }
}

/// Increments a counter and returns what it held before, if no other CPU
/// kept changing it meanwhile. A compare-and-swap loop: an atomic add
/// that returns the old value needs BPF ISA v3, which bpf-linker's
/// generic CPU target does not emit.
#[inline(always)]
pub fn fetch_increment(counter: &mut u64) -> Option<u64> {
    let counter: *mut u64 = counter;
    // SAFETY: `counter` is a valid, aligned u64 in a map value.
    let mut seen = unsafe { ptr::read_volatile(counter) };
    for _ in 0..8 {
        // SAFETY: as above.
        let (previous, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                counter,
                seen,
                seen + 1,
            )
        };
        if swapped {
            return Some(seen);
        }
        seen = previous;
    }
    None
}

/// The control block (pass number, health counters).
#[inline(always)]
pub fn control() -> Option<&'static mut Control> {
    // SAFETY: as for `task_record`.
    CONTROL.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Adds to a counter with one atomic instruction: the same counter may be
/// updated from several CPUs at once.
#[inline(always)]
pub fn add(counter: &mut u64, value: u64) {
    // SAFETY: `counter` is a valid, aligned u64 in a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value) };
}

/// Moves `mark` up to `now` if it is below, and returns by how much: the
/// share of a monotonic counter that this caller, and only this caller,
/// must charge. Two parties charging the same thread at once (the pass
/// and the thread's release) each get a disjoint part.
#[inline(always)]
pub fn advance(mark: &mut u64, now: u64) -> u64 {
    let mark: *mut u64 = mark;
    // SAFETY: `mark` is a valid, aligned u64 in a map value.
    let mut seen = unsafe { ptr::read_volatile(mark) };
    // Bounded for the verifier: losing three races in a row means others
    // are charging this very counter and will charge the rest.
    for _ in 0..3 {
        if now <= seen {
            return 0;
        }
        // SAFETY: as above.
        let (previous, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                mark, seen, now,
            )
        };
        if swapped {
            return now - seen;
        }
        seen = previous;
    }
    0
}
