//! Rebuild the programs when `bpf-linker` changes: cargo cannot see that
//! the crate depends on it (it is the linker of the BPF target).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found: run `cargo xtask setup`"),
    }
}
