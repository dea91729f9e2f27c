//! berth-pod-init: pid 1 of a pod's shared pid namespace (CRI pid mode POD), as a program of
//! its own. It is not a module of berth-engine: `engine/build.rs` compiles this file alone
//! (no std, no libc, static, about a kilobyte) and berthd carries the result
//! (`monitor::podinit::PROGRAM`), writing it into its run directory at start.
//!
//! Why a program of its own: a pod's init only reaps the orphans reparented to it, yet as
//! berthd re-executed it held about 150 KiB of private memory (the dynamic loader's and
//! libc's writable pages, the Rust runtime's set-up, a heap), one per pod. This one holds
//! two pages of stack and data.
//!
//! What it does is what `monitor::podinit::pod_init` does (the fallback when this program
//! cannot be executed): it makes itself not dumpable again (exec made it so), sets every
//! signal disposition back to default (an ignored signal stays ignored across exec, and the
//! monitor, a Rust program, ignores SIGPIPE), blocks SIGCHLD, then forever: reaps every
//! child that has exited, waits for the next SIGCHLD. The monitor's copy that executes it
//! has already confined itself (an empty root, no capability: `monitor::podinit::start`)
//! and set PR_SET_PDEATHSIG; that is kept across the exec, so the init dies with its
//! monitor.
//!
//! x86_64 Linux only (the system call numbers and `_start` below); on other targets
//! build.rs makes no program and the monitor's confined copy runs the same loop.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const SYS_RT_SIGACTION: usize = 13;
const SYS_RT_SIGPROCMASK: usize = 14;
const SYS_WAIT4: usize = 61;
const SYS_RT_SIGTIMEDWAIT: usize = 128;
const SYS_PRCTL: usize = 157;
const SYS_EXIT_GROUP: usize = 231;

const SIGKILL: usize = 9;
const SIGCHLD: usize = 17;
const SIGSTOP: usize = 19;
/// The kernel's signal count on x86_64 (`_NSIG`); its sigset is 8 bytes.
const NSIG: usize = 64;
const PR_SET_DUMPABLE: usize = 4;
const SIGSET_SIZE: usize = 8;
const SIG_SETMASK: usize = 2;
const WNOHANG: usize = 1;
/// Every kind of child, whatever signal it was made to send its parent at exit.
const WALL: usize = 0x4000_0000;

/// The kernel's `struct sigaction` on x86_64.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

// The process entry: no libc to set anything up. The kernel starts it with the stack
// pointer 16-byte aligned; `call` leaves it as the C ABI expects at a function's entry.
global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym init_main,
);

/// A raw system call of up to four arguments; the kernel's return value (negative errno on
/// failure).
///
/// # Safety
/// The arguments must be what system call `n` expects: any pointer among them valid for
/// what the call reads or writes.
unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY: the `syscall` instruction with the x86_64 Linux convention: number in rax,
    // arguments in rdi, rsi, rdx, r10; the kernel clobbers rcx and r11 and no memory but
    // what the caller's pointers (valid, by this function's contract) name.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            in("r10") d,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

extern "C" fn init_main() -> ! {
    // Not dumpable: the exec made it so again, and only CAP_SYS_PTRACE may then trace it or
    // open its /proc files (a container of the pod that shares its pid namespace sees it).
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers.
    unsafe {
        syscall4(SYS_PRCTL, PR_SET_DUMPABLE, 0, 0, 0);
    }
    let default = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=NSIG {
        if sig == SIGKILL || sig == SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid kernel sigaction, alive across the call; no old
        // action is asked for (NULL).
        unsafe {
            syscall4(
                SYS_RT_SIGACTION,
                sig,
                &default as *const KernelSigaction as usize,
                0,
                SIGSET_SIZE,
            );
        }
    }
    let chld: u64 = 1 << (SIGCHLD - 1);
    // SAFETY: `chld` is a valid sigset of SIGSET_SIZE bytes, alive across the call.
    unsafe {
        syscall4(
            SYS_RT_SIGPROCMASK,
            SIG_SETMASK,
            &chld as *const u64 as usize,
            0,
            SIGSET_SIZE,
        );
    }
    loop {
        // SAFETY: wait4(-1, NULL, WNOHANG|__WALL, NULL): no pointers to write through.
        while unsafe { syscall4(SYS_WAIT4, usize::MAX, 0, WNOHANG | WALL, 0) } > 0 {}
        // SAFETY: `chld` is a valid sigset, alive across the call; no siginfo or timeout.
        unsafe {
            syscall4(
                SYS_RT_SIGTIMEDWAIT,
                &chld as *const u64 as usize,
                0,
                0,
                SIGSET_SIZE,
            );
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        // SAFETY: exit_group takes no pointers; it does not return.
        unsafe {
            syscall4(SYS_EXIT_GROUP, 127, 0, 0, 0);
        }
    }
}
