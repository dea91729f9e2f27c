//! Records the git commit berthd was built from (BERTH_GIT_SHA), "unknown" outside a checkout.

fn main() {
    // berthd is linked as a position-dependent executable: every pod's monitor is berthd
    // re-executed, and in a PIE the dynamic loader writes ~470 KiB of relocated pointers
    // (RELRO) into private pages of each monitor; without PIE those pages stay shared with
    // the file. The cost is a fixed address for berthd's code (as Go binaries such as
    // containerd and its shims have by default); the stack, heap and libraries keep ASLR.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=berthd=-no-pie");
    }
    let sha = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BERTH_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
}
