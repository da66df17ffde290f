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
    #[error("kernel BTF has no value {name} in enum {enumeration}")]
    NoEnumValue {
        enumeration: &'static str,
        name: &'static str,
    },
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
    pub fn kernel_layout(
        &self,
        page_size: u32,
        ns_per_clock_tick: u32,
    ) -> Result<KernelLayout, BtfError> {
        Ok(KernelLayout {
            task_pid: self.field_offset("task_struct", "pid")?,
            task_tgid: self.field_offset("task_struct", "tgid")?,
            task_bio_list: self.field_offset("task_struct", "bio_list")?,
            task_cancelled_write_bytes: self
                .field_offset("task_struct", "ioac.cancelled_write_bytes")?,
            task_start_boottime: self.field_offset("task_struct", "start_boottime")?,
            task_mm: self.field_offset("task_struct", "mm")?,
            mm_arg_start: self.field_offset("mm_struct", "arg_start")?,
            mm_arg_end: self.field_offset("mm_struct", "arg_end")?,
            ns_per_clock_tick,
            sock_family: self.field_offset("sock", "__sk_common.skc_family")?,
            sock_protocol: self.field_offset("sock", "sk_protocol")?,
            bio_opf: self.field_offset("bio", "bi_opf")?,
            bio_size: self.field_offset("bio", "bi_iter.bi_size")?,
            folio_flags: self.field_offset("folio", "flags")?,
            // Since Linux 6.15 on 64-bit (NR_PAGES_IN_LARGE_FOLIO).
            folio_nr_pages: self.field_offset("folio", "_nr_pages")?,
            pg_head_bit: self.enum_value("pageflags", "PG_head")?,
            req_meta_bit: self.enum_value("req_flag_bits", "__REQ_META")?,
            req_idle_bit: self.enum_value("req_flag_bits", "__REQ_IDLE")?,
            page_size,
        })
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

    /// The value of `name` in the enum `enumeration`.
    pub fn enum_value(
        &self,
        enumeration: &'static str,
        name: &'static str,
    ) -> Result<u32, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(enumeration)
            .map_err(|_| BtfError::NoEnumValue { enumeration, name })?;
        types
            .iter()
            .find_map(|ty| match ty {
                Type::Enum(e) => e.members.iter().find_map(|member| {
                    (self.btf.resolve_name(member).ok()? == name).then(|| member.val())
                }),
                _ => None,
            })
            .ok_or(BtfError::NoEnumValue { enumeration, name })
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
        let layout = btf.kernel_layout(4096, 10_000_000).unwrap();
        // pid and tgid are adjacent pid_t fields, pid first, deep in the struct.
        assert_eq!(layout.task_tgid, layout.task_pid + 4, "{layout:?}");
        assert!(
            layout.task_pid > 64 && layout.task_pid < 16384,
            "{layout:?}"
        );
        // struct sock starts with struct sock_common.
        assert!(layout.sock_family < 64, "{layout:?}");
        assert!(layout.sock_protocol > layout.sock_family, "{layout:?}");
        // A folio is a few struct pages (64 bytes each); flags come first.
        assert_eq!(layout.folio_flags, 0);
        assert!((64..128).contains(&layout.folio_nr_pages), "{layout:?}");
        assert!(layout.req_idle_bit > layout.req_meta_bit && layout.req_idle_bit < 32);
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
            btf.enum_value("pageflags", "PG_no_such_flag"),
            Err(BtfError::NoEnumValue { .. })
        ));
    }
}
