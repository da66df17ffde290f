//! Kernel struct field offsets, read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations yet, so the programs cannot ask the
//! loader to patch `task->tgid` for this kernel: we look the offsets up
//! here and hand them to the programs as read-only globals.

use std::path::Path;

use btf_rs::{Btf, Member, Type};
use monitor_common::KernelLayout;

/// Where the kernel publishes its own BTF (CONFIG_DEBUG_INFO_BTF=y).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("kernel BTF has no (whole, byte-aligned) field {field} in struct {structure}")]
    NoField {
        structure: &'static str,
        field: &'static str,
    },
    #[error("kernel BTF has no enum member {name}")]
    NoEnumValue { name: &'static str },
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(KernelBtf { btf })
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
        })
    }

    /// Size in bytes of the struct `structure`.
    pub fn struct_size(&self, structure: &'static str) -> Result<u32, BtfError> {
        Ok(self.named_struct(structure)?.size() as u32)
    }

    /// The value of the enum member `name`, in whichever enum (named or
    /// not) declares it.
    pub fn enum_member(&self, name: &'static str) -> Result<u32, BtfError> {
        let mut id = 1;
        while let Ok(ty) = self.btf.resolve_type_by_id(id) {
            id += 1;
            if let Type::Enum(e) = ty
                && let Some(value) = e.members.iter().find_map(|member| {
                    (self.btf.resolve_name(member).ok()? == name).then(|| member.val())
                })
            {
                return Ok(value);
            }
        }
        Err(BtfError::NoEnumValue { name })
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
            let (offset, member) = self.find_member(&current, field).ok_or_else(no_field)?;
            if member.bitfield_size().is_some_and(|size| size != 0) {
                return Err(no_field());
            }
            bits += offset;
            if fields.peek().is_some() {
                current = match self.resolve_to_struct(&member) {
                    Some(inner) => inner,
                    None => return Err(no_field()),
                };
            }
        }
        if bits % 8 != 0 {
            return Err(no_field());
        }
        Ok(bits / 8)
    }

    fn named_struct(&self, structure: &'static str) -> Result<btf_rs::Struct, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(structure)
            .map_err(|_| BtfError::NoStruct(structure))?;
        types
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or(BtfError::NoStruct(structure))
    }

    /// Bit offset and member of `field` within the struct or union `s`.
    fn find_member(&self, s: &btf_rs::Struct, field: &str) -> Option<(u32, Member)> {
        s.members.iter().find_map(|member| {
            let name = self.btf.resolve_name(member).unwrap_or_default();
            if name == field {
                return Some((member.bit_offset(), member.clone()));
            }
            if !name.is_empty() {
                return None;
            }
            let inner = self.resolve_to_struct(member)?;
            let (bits, found) = self.find_member(&inner, field)?;
            Some((member.bit_offset() + bits, found))
        })
    }

    /// The struct or union a member's type is, through typedefs and qualifiers.
    fn resolve_to_struct(&self, member: &Member) -> Option<btf_rs::Struct> {
        let mut ty = self.btf.resolve_chained_type(member).ok()?;
        for _ in 0..8 {
            ty = match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Const(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Volatile(t) => self.btf.resolve_chained_type(&t).ok()?,
                _ => return None,
            };
        }
        None
    }
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
}
