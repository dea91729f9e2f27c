//! Compiles the pod's init (`src/linux/pod_init_program.rs`) into a program of its own,
//! `$OUT_DIR/berth-pod-init`, which `monitor::podinit::PROGRAM` embeds.
//!
//! It is built with this build's rustc, alone: no std (so `-C panic=abort`, which a package
//! of the workspace cannot have, its profile unwinding), no libc, no start files, linked
//! static and not position-independent. On a target it is not written for (anything but
//! 64-bit x86_64 Linux), or when it cannot be built (a warning says why), the file is left
//! empty and each monitor runs the init's loop in a confined copy of itself. Not being a module of the crate, the
//! program is outside `cargo clippy` and `cargo fmt`: keep it small and read it by hand.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/linux/pod_init_program.rs";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("berth-pod-init");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let none = || std::fs::write(&out, b"").expect("write an empty pod init");
    if var("CARGO_CFG_TARGET_ARCH") != "x86_64"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_POINTER_WIDTH") != "64"
    {
        none();
        return;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let mut cmd = Command::new(rustc);
    // The linker cargo was told to use for this target, if any (cross builds).
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        cmd.arg("-C").arg({
            let mut a = std::ffi::OsString::from("linker=");
            a.push(linker);
            a
        });
    }
    let status = cmd
        .args(["--edition", "2024", "--crate-type", "bin"])
        .args(["--crate-name", "berth_pod_init", "--target", &target])
        .args(["-C", "opt-level=s", "-C", "panic=abort"])
        .args(["-C", "relocation-model=static", "-C", "debuginfo=0"])
        .args(["-C", "strip=symbols"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args([
            "-C",
            "link-arg=-static",
            "-C",
            "link-arg=-Wl,--build-id=none",
        ])
        .arg("-o")
        .arg(&out)
        .arg(SOURCE)
        .status();
    if !status.as_ref().is_ok_and(|s| s.success()) {
        println!(
            "cargo:warning=cannot build the pod init program ({status:?}): pods' inits will be copies of their monitors"
        );
        none();
    }
}
