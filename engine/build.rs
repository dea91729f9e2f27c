//! Compiles the pod's init (`src/linux/pod_init_program.rs`) into a program of its own,
//! `$OUT_DIR/berth-pod-init`, which `monitor::podinit::PROGRAM` embeds.
//!
//! It is built with this build's rustc, alone: no std (so `-C panic=abort`, which a package
//! of the workspace cannot have, its profile unwinding), no libc, no start files, linked
//! static and not position-independent. On a target it is not written for (anything but
//! x86_64 Linux) the file is left empty, and monitors re-execute berthd as the init.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/linux/pod_init_program.rs";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("berth-pod-init");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        std::fs::write(&out, b"").expect("write an empty pod init");
        return;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin"])
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
        .status()
        .expect("run rustc for the pod init");
    assert!(status.success(), "rustc failed to build {SOURCE}");
}
