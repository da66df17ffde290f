//! An aya `EbpfLoader` made without parsing the kernel's BTF.
//!
//! aya 0.14's `EbpfLoader::new()` reads and parses all of
//! `/sys/kernel/btf/vmlinux` (5 MB of BTF into 130,000 72-byte enums: about
//! 19 MB for a moment) before anything can tell it not to; the parse is for
//! CO-RE relocations, which Rust programs do not have, and `btf(None)`
//! drops it right after. Upstream made it lazy (aya-rs/aya#1639) in
//! releases that need a newer rustc than ours.
//!
//! So the loader is made on a short-lived thread of its own, in a private
//! mount namespace where `/sys/kernel/btf` is an empty tmpfs: the read
//! fails at once and the loader starts with no BTF. Only that thread sees
//! the mount; it dies with the thread. Without CAP_SYS_ADMIN (a CAP_BPF
//! deployment) the namespace cannot be made, and the loader is made the
//! ordinary way: the same loader, a higher peak of memory.

use std::thread;

use aya::EbpfLoader;
use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

/// Where aya looks for the kernel's BTF.
const KERNEL_BTF_DIR: &str = "/sys/kernel/btf";

/// A loader with no target BTF, made as cheaply as this host allows.
pub fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    let mut loader = thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(err) = hide_kernel_btf() {
                    tracing::debug!(
                        "aya's loader will parse the kernel BTF once (about 19 MB for a \
                         moment): cannot hide {KERNEL_BTF_DIR} in a private mount \
                         namespace: {err}"
                    );
                }
                EbpfLoader::new()
            })
            .join()
            .unwrap_or_else(|_| EbpfLoader::new())
    });
    loader.btf(None);
    loader
}

/// Mounts an empty, read-only tmpfs over the BTF directory, for the
/// calling thread only.
fn hide_kernel_btf() -> nix::Result<()> {
    // CLONE_NEWNS unshares the thread's filesystem context too, so the
    // other threads keep the host's mounts.
    unshare(CloneFlags::CLONE_NEWNS)?;
    // Mounts made below must not propagate back to the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some("none"),
        KERNEL_BTF_DIR,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hidden directory is hidden on the loader's thread only.
    #[test]
    fn the_host_keeps_its_kernel_btf() {
        let btf = std::path::Path::new(KERNEL_BTF_DIR).join("vmlinux");
        if !btf.exists() {
            eprintln!("skipped: {} is absent (kernel without BTF)", btf.display());
            return;
        }
        let hidden = thread::scope(|scope| {
            scope
                .spawn(|| hide_kernel_btf().map(|()| btf.exists()))
                .join()
                .unwrap()
        });
        match hidden {
            Ok(seen_by_the_thread) => assert!(!seen_by_the_thread),
            Err(err) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("CI runs as root, where the BTF must be hidden: {err}")
            }
            Err(err) => eprintln!("not hidden here ({err}): needs CAP_SYS_ADMIN"),
        }
        assert!(btf.exists(), "the process's own view must not change");
        let _ = loader_without_kernel_btf();
        assert!(btf.exists());
    }
}
