//! The running kernel's BTF, read once at start-up: the struct offsets
//! the programs need (Rust eBPF has no CO-RE relocations, so the loader
//! resolves them and hands them over as read-only globals), and the type
//! ids of the attach points.
//!
//! A full parse of `/sys/kernel/btf/vmlinux` (5 MB, 130,000 types) into
//! objects costs tens of MB for a moment; this reads the raw bytes once,
//! keeps an index of where each type starts, and answers the few
//! questions we have by scanning it. aya wants its own `Btf` to load
//! programs; it gets one made of only the attach points, at their ids.

use std::{fs, path::Path};

use monitor_common::KernelLayout;

/// Where the kernel publishes its own BTF (CONFIG_DEBUG_INFO_BTF=y).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("kernel BTF has no (whole, byte-aligned) field {field} in struct {structure}")]
    NoField {
        structure: &'static str,
        field: &'static str,
    },
    #[error("kernel BTF has no enum member {name}")]
    NoEnumValue { name: &'static str },
    #[error("kernel BTF has no {kind} {name}")]
    NoType { kind: &'static str, name: String },
}

/// `BTF_KIND_*` (include/uapi/linux/btf.h).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// `struct btf_header` (include/uapi/linux/btf.h): 24 bytes.
const HEADER_BYTES: usize = 24;
const BTF_MAGIC: u16 = 0xeb9f;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_BYTES: usize = 12;

pub struct KernelBtf {
    data: Vec<u8>,
    strings: usize,
    /// Byte offset (in `data`) of each type, by id; id 0 is `void`.
    index: Vec<u32>,
}

/// One type record.
#[derive(Clone, Copy)]
struct Type {
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// Where the kind-specific data starts.
    extra: usize,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        let failed = |reason: String| BtfError::Read {
            path: path.display().to_string(),
            reason,
        };
        let data = fs::read(path).map_err(|err| failed(err.to_string()))?;
        Self::parse(data).map_err(failed)
    }

    fn parse(data: Vec<u8>) -> Result<Self, String> {
        if data.len() < HEADER_BYTES || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err("not little-endian BTF".into());
        }
        let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let header = word(4);
        let (type_off, type_len, str_off, str_len) = (word(8), word(12), word(16), word(20));
        let types = header + type_off;
        let strings = header + str_off;
        if types + type_len > data.len() || strings + str_len > data.len() {
            return Err("truncated BTF".into());
        }
        let mut btf = KernelBtf {
            data,
            strings,
            index: vec![0],
        };
        let mut at = types;
        while at < types + type_len {
            btf.index.push(at as u32);
            let ty = btf.type_at(at);
            at = ty.extra + extra_bytes(ty.kind, ty.vlen).ok_or("unknown BTF kind")?;
        }
        btf.index.shrink_to_fit();
        Ok(btf)
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.data[at..at + 4].try_into().unwrap())
    }

    fn type_at(&self, at: usize) -> Type {
        let info = self.u32_at(at + 4);
        Type {
            name: self.u32_at(at),
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: self.u32_at(at + 8),
            extra: at + TYPE_BYTES,
        }
    }

    fn by_id(&self, id: u32) -> Option<Type> {
        let at = *self.index.get(id as usize)?;
        (id != 0).then(|| self.type_at(at as usize))
    }

    fn name(&self, offset: u32) -> &[u8] {
        let start = self.strings + offset as usize;
        let rest = self.data.get(start..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Ids of every type, with their records.
    fn all(&self) -> impl Iterator<Item = (u32, Type)> + '_ {
        (1..self.index.len() as u32).filter_map(|id| Some((id, self.by_id(id)?)))
    }

    /// The id of the type `name` of kind `kind`.
    pub fn id_of(&self, name: &str, kind: u32) -> Option<u32> {
        self.all()
            .find(|(_, ty)| ty.kind == kind && self.name(ty.name) == name.as_bytes())
            .map(|(id, _)| id)
    }

    /// Everything the programs read from kernel structs, for this kernel.
    pub fn kernel_layout(&self) -> Result<KernelLayout, BtfError> {
        let ioac = |field| self.field_offset("task_struct", field);
        Ok(KernelLayout {
            task_pid: self.field_offset("task_struct", "pid")?,
            task_tgid: self.field_offset("task_struct", "tgid")?,
            task_sum_exec_runtime: self.field_offset("task_struct", "se.sum_exec_runtime")?,
            task_mm: self.field_offset("task_struct", "mm")?,
            task_signal: self.field_offset("task_struct", "signal")?,
            task_files: self.field_offset("task_struct", "files")?,
            task_bpf_storage: self.field_offset("task_struct", "bpf_storage")?,
            ioac_fields: [
                ioac("ioac.rchar")?,
                ioac("ioac.wchar")?,
                ioac("ioac.syscr")?,
                ioac("ioac.syscw")?,
                ioac("ioac.read_bytes")?,
                ioac("ioac.write_bytes")?,
                ioac("ioac.cancelled_write_bytes")?,
            ],
            signal_live: self.field_offset("signal_struct", "live")?,
            signal_nr_threads: self.field_offset("signal_struct", "nr_threads")?,
            mm_rss_stat: self.field_offset("mm_struct", "rss_stat")?,
            percpu_counter_size: self.struct_size("percpu_counter")?,
            percpu_counter_count: self.field_offset("percpu_counter", "count")?,
            // include/linux/mm_types_task.h: an anonymous enum.
            rss_members: [
                self.enum_member("MM_FILEPAGES")?,
                self.enum_member("MM_ANONPAGES")?,
                self.enum_member("MM_SHMEMPAGES")?,
            ],
            files_fdt: self.field_offset("files_struct", "fdt")?,
            fdtable_max_fds: self.field_offset("fdtable", "max_fds")?,
            fdtable_open_fds: self.field_offset("fdtable", "open_fds")?,
            mm_arg_start: self.field_offset("mm_struct", "arg_start")?,
            mm_arg_end: self.field_offset("mm_struct", "arg_end")?,
            sock_family: self.field_offset("sock", "__sk_common.skc_family")?,
            sock_protocol: self.field_offset("sock", "sk_protocol")?,
            sock_daddr: self.field_offset("sock", "__sk_common.skc_daddr")?,
            // include/net/tcp.h: TCP_SKB_CB(skb) is skb->cb.
            skb_tcp_segments: self.field_offset("sk_buff", "cb")?
                + self.field_offset("tcp_skb_cb", "tcp_gso_segs")?,
            sock_dport: self.field_offset("sock", "__sk_common.skc_dport")?,
            sock_v6_daddr: self.field_offset("sock", "__sk_common.skc_v6_daddr")?,
            sock_state: self.field_offset("sock", "__sk_common.skc_state")?,
            task_flags: self.field_offset("task_struct", "flags")?,
            task_thread_node: self.field_offset("task_struct", "thread_node")?,
            signal_thread_head: self.field_offset("signal_struct", "thread_head")?,
            task_cgroups: self.field_offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.field_offset("css_set", "dfl_cgrp")?,
            cgroup_kn: self.field_offset("cgroup", "kn")?,
            kernfs_node_id: self.field_offset("kernfs_node", "id")?,
            cgroup_root: self.field_offset("cgroup", "root")?,
            cgroup_root_hierarchy_id: self.field_offset("cgroup_root", "hierarchy_id")?,
            cgroup_parent: self.field_offset("cgroup", "self.parent")?,
            css_cgroup: self.field_offset("cgroup_subsys_state", "cgroup")?,
        })
    }

    /// Size in bytes of the struct `structure`.
    pub fn struct_size(&self, structure: &'static str) -> Result<u32, BtfError> {
        Ok(self.named_struct(structure)?.size_or_type)
    }

    /// The value of the enum member `name`, in whichever enum (named or
    /// not) declares it.
    pub fn enum_member(&self, name: &'static str) -> Result<u32, BtfError> {
        self.all()
            .find_map(|(_, ty)| {
                let stride = match ty.kind {
                    kind::ENUM => 8,
                    kind::ENUM64 => 12,
                    _ => return None,
                };
                (0..ty.vlen).find_map(|i| {
                    let at = ty.extra + i * stride;
                    (self.name(self.u32_at(at)) == name.as_bytes()).then(|| self.u32_at(at + 4))
                })
            })
            .ok_or(BtfError::NoEnumValue { name })
    }

    /// Byte offset of `path` (e.g. `bi_iter.bi_size`) in `structure`,
    /// looking through anonymous struct and union members as C does. The
    /// field must not be a bitfield: the programs read whole fields.
    pub fn field_offset(
        &self,
        structure: &'static str,
        path: &'static str,
    ) -> Result<u32, BtfError> {
        let no_field = || BtfError::NoField {
            structure,
            field: path,
        };
        let mut current = self.named_struct(structure)?;
        let mut bits = 0;
        let mut fields = path.split('.').peekable();
        while let Some(field) = fields.next() {
            let (offset, member_type) = self.find_member(current, field).ok_or_else(no_field)?;
            bits += offset;
            if fields.peek().is_some() {
                current = self.as_struct(member_type).ok_or_else(no_field)?;
            }
        }
        if bits % 8 != 0 {
            return Err(no_field());
        }
        Ok(bits / 8)
    }

    fn named_struct(&self, structure: &'static str) -> Result<Type, BtfError> {
        self.all()
            .map(|(_, ty)| ty)
            .find(|ty| {
                ty.kind == kind::STRUCT && ty.vlen > 0 && self.name(ty.name) == structure.as_bytes()
            })
            .ok_or(BtfError::NoStruct(structure))
    }

    /// Bit offset and type id of `field` within the struct or union `s`;
    /// `None` for a bitfield.
    fn find_member(&self, s: Type, field: &str) -> Option<(u32, u32)> {
        (0..s.vlen).find_map(|i| {
            let at = s.extra + i * 12;
            let (name, member_type, raw) =
                (self.u32_at(at), self.u32_at(at + 4), self.u32_at(at + 8));
            // With kind_flag, the offset word holds the bitfield size too.
            let (offset, bitfield) = if s.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            let member_name = self.name(name);
            if member_name == field.as_bytes() {
                return (bitfield == 0).then_some((offset, member_type));
            }
            if !member_name.is_empty() {
                return None;
            }
            let inner = self.as_struct(member_type)?;
            let (bits, found) = self.find_member(inner, field)?;
            Some((offset + bits, found))
        })
    }

    /// The struct or union `id` is, through typedefs and qualifiers.
    fn as_struct(&self, mut id: u32) -> Option<Type> {
        for _ in 0..8 {
            let ty = self.by_id(id)?;
            match ty.kind {
                kind::STRUCT | kind::UNION => return Some(ty),
                kind::TYPEDEF | kind::CONST | kind::VOLATILE | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return None,
            }
        }
        None
    }

    /// The kernel's ids of the given attach points. A `Func` that the
    /// kernel lacks is left out (the hooks on functions are optional); a
    /// missing tracepoint is an error.
    pub fn attach_points(
        &self,
        wanted: &[(impl AsRef<str>, AttachKind)],
    ) -> Result<AttachPoints, BtfError> {
        let mut found = Vec::new();
        for (name, attach) in wanted {
            let name = name.as_ref();
            let kind = match attach {
                AttachKind::Typedef => kind::TYPEDEF,
                AttachKind::Func => kind::FUNC,
            };
            match self.id_of(name, kind) {
                Some(id) => found.push(AttachPoint {
                    id,
                    name: name.to_owned(),
                    kind,
                }),
                None if matches!(attach, AttachKind::Func) => {} // optional hooks
                None => {
                    return Err(BtfError::NoType {
                        kind: "typedef",
                        name: name.to_owned(),
                    });
                }
            }
        }
        Ok(AttachPoints(found))
    }
}

/// Attach points found in the kernel's BTF, kept without the BTF itself.
pub struct AttachPoints(Vec<AttachPoint>);

struct AttachPoint {
    id: u32,
    name: String,
    kind: u32,
}

impl AttachPoints {
    /// An aya `Btf` in which `name` has its id in the kernel's BTF (what
    /// program loading sends to the kernel) and every lower id is a
    /// placeholder. aya finds a type by walking its list, so the id must
    /// be the position: one 72-byte entry per id, 8 MB for the highest
    /// ids (the fexit targets), so each program gets its own, dropped once
    /// it is loaded, not one holding every point.
    pub fn btf_for(&self, name: &str) -> Option<aya::Btf> {
        let point = self.0.iter().find(|point| point.name == name)?;
        if point.kind == kind::FUNC {
            return Some(function_btf(point));
        }
        // aya cannot make a typedef but by parsing one; tracepoint
        // typedefs have low ids, so the blob is small.
        aya::Btf::parse(&synthetic_btf(point), aya::Endianness::default()).ok()
    }
}

/// A `Btf` whose type `point.id` is the function `point`, built in place
/// (no blob to parse: this is the largest of them).
fn function_btf(point: &AttachPoint) -> aya::Btf {
    use aya_obj::btf::{BtfType, Func, FuncLinkage, Ptr};
    let mut btf = aya::Btf::new();
    for _ in 1..point.id {
        btf.add_type(BtfType::Ptr(Ptr::new(0, 0)));
    }
    let name = btf.add_string(&point.name);
    // The prototype is not looked at: `void` stands for it.
    btf.add_type(BtfType::Func(Func::new(name, 0, FuncLinkage::Static)));
    btf
}

/// What an attach point is in BTF.
#[derive(Clone, Copy, Debug)]
pub enum AttachKind {
    /// `btf_trace_<tracepoint>`, for tp_btf programs.
    Typedef,
    /// A kernel function, for iterators (`bpf_iter_<name>`) and fexit.
    Func,
}

/// Bytes that follow a `struct btf_type` of this kind.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => vlen * 12,
        kind::ENUM | kind::FUNC_PROTO => vlen * 8,
        0 | 2 | 7..=12 | 16 | kind::TYPE_TAG => 0,
        _ => return None,
    })
}

/// A BTF blob whose type `point.id` is the typedef `point`, with
/// `void *` placeholders at every lower id.
fn synthetic_btf(point: &AttachPoint) -> Vec<u8> {
    let types_len = point.id as usize * TYPE_BYTES;
    let strings_len = 1 + point.name.len() + 1;
    let mut blob = Vec::with_capacity(HEADER_BYTES + types_len + strings_len);
    let mut put = |word: u32| blob.extend_from_slice(&word.to_le_bytes());
    put(u32::from(BTF_MAGIC) | 1 << 16); // version 1, no flags
    for word in [HEADER_BYTES, 0, types_len, types_len, strings_len] {
        put(word as u32);
    }
    for _ in 1..point.id {
        // An unnamed pointer to void: the smallest type record.
        for word in [0, kind::PTR << 24, 0] {
            put(word);
        }
    }
    // It points at `void`: only names and ids are looked at. Its name is
    // the first string.
    for word in [1, point.kind << 24, 0] {
        put(word);
    }
    blob.push(0);
    blob.extend_from_slice(point.name.as_bytes());
    blob.push(0);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_btf() -> Option<KernelBtf> {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} is absent (kernel without BTF)");
            return None;
        }
        Some(KernelBtf::load(path).expect("parse kernel BTF"))
    }

    #[test]
    fn kernel_layout_is_plausible() {
        let Some(btf) = kernel_btf() else { return };
        let layout = btf.kernel_layout().unwrap();
        // pid and tgid are adjacent pid_t fields, pid first, deep in the struct.
        assert_eq!(layout.task_tgid, layout.task_pid + 4, "{layout:?}");
        assert!(
            layout.task_pid > 64 && layout.task_pid < 16384,
            "{layout:?}"
        );
        // struct sock starts with struct sock_common.
        assert!(layout.sock_family < 64, "{layout:?}");
        assert!(layout.sock_protocol > layout.sock_family, "{layout:?}");
        // struct task_io_accounting: seven u64s in a row.
        for pair in layout.ioac_fields.windows(2) {
            assert_eq!(pair[1], pair[0] + 8, "{layout:?}");
        }
        assert_eq!(
            layout.rss_members,
            [0, 1, 3],
            "MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES"
        );
        assert!(layout.percpu_counter_size >= 16 && layout.percpu_counter_count < 16);
        assert_eq!(
            layout.fdtable_max_fds, 0,
            "struct fdtable starts with max_fds"
        );
        // struct cgroup starts with its own css, whose first field is
        // the cgroup pointer.
        assert_eq!(layout.css_cgroup, 0, "{layout:?}");
        assert!(layout.cgroup_parent > 0 && layout.cgroup_parent < layout.cgroup_kn);
    }

    #[test]
    fn nested_paths_and_anonymous_members_resolve() {
        let Some(btf) = kernel_btf() else { return };
        let iter = btf.field_offset("bio", "bi_iter").unwrap();
        let size = btf.field_offset("bio", "bi_iter.bi_size").unwrap();
        // struct bvec_iter { sector_t bi_sector; unsigned int bi_size; ... }
        assert_eq!(size, iter + 8);
        // `struct page` keeps `lru` inside an anonymous union.
        assert!(btf.field_offset("page", "lru").is_ok());
        assert!(matches!(
            btf.field_offset("task_struct", "no_such_field"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.enum_member("MM_NO_SUCH_COUNTER"),
            Err(BtfError::NoEnumValue { .. })
        ));
    }

    #[test]
    fn attach_points_keep_the_kernels_ids() {
        let Some(btf) = kernel_btf() else { return };
        let wanted = [
            ("btf_trace_task_newtask", AttachKind::Typedef),
            ("bpf_iter_task", AttachKind::Func),
            ("btf_trace_sock_send_length", AttachKind::Typedef),
        ];
        let points = btf.attach_points(&wanted).unwrap();
        for (name, attach) in wanted {
            let small = points.btf_for(name).unwrap();
            let (kind, aya_kind) = match attach {
                AttachKind::Typedef => (kind::TYPEDEF, aya_obj::btf::BtfKind::Typedef),
                AttachKind::Func => (kind::FUNC, aya_obj::btf::BtfKind::Func),
            };
            assert_eq!(
                small.id_by_type_name_kind(name, aya_kind).ok(),
                btf.id_of(name, kind),
                "{name}"
            );
        }
        assert!(points.btf_for("btf_trace_no_such_tracepoint").is_none());
    }
}
