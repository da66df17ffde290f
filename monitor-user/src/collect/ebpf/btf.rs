//! Kernel struct field offsets, read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations yet, so the programs cannot ask the
//! loader to patch `task->tgid` for this kernel: we look the offsets up
//! here and hand them to the programs as read-only globals.

use std::path::Path;

use btf_rs::{Btf, Type};

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
    #[error("kernel BTF has no field {field} in struct {structure}")]
    NoField {
        structure: &'static str,
        field: &'static str,
    },
}

/// Offsets (bytes) of the `task_struct` fields our programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskStructOffsets {
    pub pid: u32,
    pub tgid: u32,
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

    pub fn task_struct_offsets(&self) -> Result<TaskStructOffsets, BtfError> {
        Ok(TaskStructOffsets {
            pid: self.field_offset("task_struct", "pid")?,
            tgid: self.field_offset("task_struct", "tgid")?,
        })
    }

    /// Byte offset of `field` in `structure`, looking through anonymous
    /// struct and union members as C does.
    pub fn field_offset(
        &self,
        structure: &'static str,
        field: &'static str,
    ) -> Result<u32, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(structure)
            .map_err(|_| BtfError::NoStruct(structure))?;
        let found = types.iter().find_map(|ty| match ty {
            Type::Struct(s) if !s.members.is_empty() => self.find_member(s, field),
            _ => None,
        });
        found
            .map(|bits| bits / 8)
            .ok_or(BtfError::NoField { structure, field })
    }

    /// Bit offset of `field` within the struct or union `s`.
    fn find_member(&self, s: &btf_rs::Struct, field: &str) -> Option<u32> {
        s.members.iter().find_map(|member| {
            let name = self.btf.resolve_name(member).unwrap_or_default();
            if name == field {
                return Some(member.bit_offset());
            }
            if !name.is_empty() {
                return None;
            }
            match self.btf.resolve_chained_type(member).ok()? {
                Type::Struct(inner) | Type::Union(inner) => self
                    .find_member(&inner, field)
                    .map(|bits| member.bit_offset() + bits),
                _ => None,
            }
        })
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
    fn task_struct_offsets_are_plausible_and_distinct() {
        let Some(btf) = kernel_btf() else { return };
        let offsets = btf.task_struct_offsets().unwrap();
        // pid and tgid are adjacent pid_t fields, pid first, deep in the struct.
        assert_eq!(offsets.tgid, offsets.pid + 4, "{offsets:?}");
        assert!(offsets.pid > 64 && offsets.pid < 16384, "{offsets:?}");
    }

    #[test]
    fn fields_inside_anonymous_members_are_found() {
        let Some(btf) = kernel_btf() else { return };
        // `struct page` keeps `lru` inside an anonymous union.
        assert!(btf.field_offset("page", "lru").is_ok());
        assert!(matches!(
            btf.field_offset("task_struct", "no_such_field"),
            Err(BtfError::NoField { .. })
        ));
    }
}
