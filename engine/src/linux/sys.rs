//! The raw syscalls berth needs that have no safe wrapper. Every `unsafe` block in berth
//! outside the monitor's process creation lives here, each with the invariant it relies on.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Size of the stack the cloned child starts on (it execs soon, so this is plenty).
const CHILD_STACK: usize = 1 << 20;

/// Runs `child` in a new process created with `clone(2)` and `flags` (new namespaces),
/// returning the child's pid in the caller's pid namespace. `child` must end by exec'ing or
/// by `_exit`; its return value becomes the exit code otherwise.
///
/// The caller must be single-threaded (the per-pod monitor is): the child gets a copy of
/// the caller's memory, including any lock another thread might have held.
pub fn clone_child(flags: CloneFlags, mut child: impl FnMut() -> isize) -> nix::Result<Pid> {
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: without CLONE_VM the child runs on a copy-on-write copy of our address
    // space, so `stack` and everything `child` captures stay valid in it; SIGCHLD as the
    // exit signal makes it an ordinary child we can wait for. The single-thread
    // precondition is documented above and upheld by the only caller (the monitor).
    unsafe {
        nix::sched::clone(
            Box::new(&mut child),
            &mut stack,
            flags,
            Some(nix::sys::signal::Signal::SIGCHLD as i32),
        )
    }
}

/// clone3's CLONE_INTO_CGROUP (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3's arguments, as far as CLONE_INTO_CGROUP (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// [`clone_child`] with the child born in the cgroup v2 directory `cgroup` (an open
/// directory): it never has to join it. Joining a cgroup v2 (`cgroup.procs`, a whole
/// thread group) takes the kernel's cgroup thread-group lock for writing, which waits for
/// an RCU grace period (10-20 ms here), most of a container start otherwise. Errors as
/// clone3 gives them (ENOSYS before 5.3, E2BIG or EINVAL before 5.7, EBUSY or EOPNOTSUPP
/// for a cgroup that cannot take processes): the caller falls back to cloning and joining
/// on those.
///
/// The same precondition: the caller is single-threaded.
pub fn clone_child_into(
    flags: CloneFlags,
    cgroup: &OwnedFd,
    mut child: impl FnMut() -> isize,
) -> nix::Result<Pid> {
    let args = CloneArgs {
        flags: u64::from(flags.bits().cast_unsigned()) | CLONE_INTO_CGROUP,
        exit_signal: nix::sys::signal::Signal::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup.as_raw_fd()).map_err(|_| nix::Error::EBADF)?,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed, alive across the call. With
    // no stack given and no CLONE_VM, clone3 returns twice like fork: the child runs on a
    // copy-on-write copy of our address space and stack, so everything `child` captures
    // is valid in it; it never returns into our code (exit_now). The single-thread
    // precondition (no lock held by another thread is copied) is the caller's, as above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::from_ref(&args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        r if r < 0 => Err(nix::Error::last()),
        0 => {
            let code = child();
            exit_now(i32::try_from(code).unwrap_or(127))
        }
        pid => Ok(Pid::from_raw(
            i32::try_from(pid).map_err(|_| nix::Error::EOVERFLOW)?,
        )),
    }
}

/// A stack for a child that shares our memory ([`clone_vfork`]): mapped for the call, with
/// an inaccessible page below it, so that an overflow faults instead of writing into
/// whatever lies beneath.
#[cfg(target_arch = "x86_64")]
struct SharedStack {
    base: std::ptr::NonNull<libc::c_void>,
    len: usize,
    guard: usize,
}

#[cfg(target_arch = "x86_64")]
impl SharedStack {
    fn new(size: usize) -> nix::Result<SharedStack> {
        let guard = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        let len = size + guard;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks
        // overlaps nothing of ours.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(nix::Error::last());
        }
        let base = std::ptr::NonNull::new(p).ok_or(nix::Error::ENOMEM)?;
        let stack = SharedStack { base, len, guard };
        // SAFETY: the first page of the mapping just made, which nothing uses yet.
        let r = unsafe { libc::mprotect(p, guard, libc::PROT_NONE) };
        nix::errno::Errno::result(r)?;
        Ok(stack)
    }

    /// Lowest usable address and usable size (page-aligned, so the top is 16-aligned).
    fn usable(&self) -> (u64, u64) {
        let lowest = self.base.as_ptr() as usize + self.guard;
        (lowest as u64, (self.len - self.guard) as u64)
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for SharedStack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, made in `new`; the child that ran on it has exec'd
        // or exited (CLONE_VFORK returns only then), so nothing uses it any more.
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}

/// Where a child that shares our memory starts: runs the closure `arg` points at, then
/// exits with its code. Never returns: there is no frame of ours to return to on its stack.
#[cfg(target_arch = "x86_64")]
extern "C" fn shared_child_start(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the address of a `&mut dyn FnMut` in the frame of `clone_vfork`,
    // which is suspended (CLONE_VFORK) and so alive, and not used by it, until we exit or
    // exec.
    let child = unsafe { &mut *arg.cast::<&mut dyn FnMut() -> isize>() };
    let code = child();
    exit_now(i32::try_from(code).unwrap_or(127))
}

/// Runs `child` in a new process that shares our memory until it execs or exits
/// (CLONE_VM | CLONE_VFORK, as posix_spawn does), born in cgroup v2 directory `cgroup`
/// when one is given (CLONE_INTO_CGROUP). Unlike [`clone_child`] nothing of our address
/// space is copied: no page tables at the clone, no copy-on-write or file faults in the
/// child, nothing to unmap at its exec — most of what an exec costs the monitor. The
/// calling thread is suspended until the child has exec'd or exited; other threads run
/// on.
///
/// What `child` must keep to (it writes our memory, with our malloc): read what it
/// captures but change nothing of ours (no `Option::take`, no drop of a captured value),
/// and free whatever it allocates before it execs or exits (nothing it allocated may be
/// alive across either: that would be our leak). It must not enter a user namespace (our
/// memory would be shared with a process of that namespace; kernels have also refused
/// it). The caller must be single-threaded, as
/// for [`clone_child`], unless `child` makes only syscalls (no lock another thread might
/// hold). It must not panic (the panic count it would raise is ours; it aborts at the
/// entry's boundary anyway) and must never wait on us (we are suspended: a pipe it fills
/// is never drained). It starts with every signal blocked (our handlers are copies, not
/// shared, but would run on our memory) until it resets them. What the kernel does to the
/// address space of a process it moves applies to ours: a v1 cpuset join with
/// `cpuset.memory_migrate` set migrates our pages (berth never sets it; kubelet neither).
/// The caller's memory is reachable through the child by whoever may ptrace it: the
/// monitor makes itself non-dumpable at its start, so that only CAP_SYS_PTRACE can.
/// ENOSYS where this is not built (not x86_64) or the kernel is older than 5.7 (clone3
/// without CLONE_INTO_CGROUP; in its first releases it took the stack's lowest address as
/// the stack pointer): the caller falls back to [`clone_child`].
pub fn clone_vfork(
    flags: CloneFlags,
    cgroup: Option<&OwnedFd>,
    child: &mut dyn FnMut() -> isize,
) -> nix::Result<Pid> {
    #[cfg(target_arch = "x86_64")]
    {
        if !kernel_at_least(5, 7) {
            return Err(nix::Error::ENOSYS);
        }
        let stack = SharedStack::new(CHILD_STACK)?;
        let (lowest, size) = stack.usable();
        let mut args = CloneArgs {
            flags: u64::from(flags.bits().cast_unsigned())
                | libc::CLONE_VM as u64
                | libc::CLONE_VFORK as u64,
            exit_signal: nix::sys::signal::Signal::SIGCHLD as u64,
            stack: lowest,
            stack_size: size,
            ..CloneArgs::default()
        };
        if let Some(fd) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = u64::try_from(fd.as_raw_fd()).map_err(|_| nix::Error::EBADF)?;
        }
        let mut child = child;
        let arg = std::ptr::from_mut(&mut child).cast::<libc::c_void>();
        let start = shared_child_start as extern "C" fn(*mut libc::c_void) -> !;
        // Every signal, glibc's own two included (pthread_sigmask leaves those open).
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask reads and writes one 8-byte kernel signal set each, both
        // valid for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                std::ptr::from_ref(&all),
                std::ptr::from_mut(&mut old),
                8usize,
            )
        };
        nix::errno::Errno::result(r)?;
        let mut ret: i64 = libc::SYS_clone3;
        // SAFETY: `args` is a valid clone_args of the size passed, alive across the call
        // (we are suspended until the child execs or exits). The child starts on the
        // separate, 16-aligned `stack` (the kernel sets its stack pointer to its top), with
        // our registers: r12 and r13 (preserved by syscall) hold the closure's address and
        // the entry point, which it calls and never returns from (it exits or execs); the
        // red zone and frames of ours are never touched by it. In the parent the block is
        // one syscall, clobbering only rax, rcx and r11.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "ud2",
                "2:",
                inlateout("rax") ret,
                in("rdi") std::ptr::from_ref(&args),
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") arg,
                in("r13") start,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        // SAFETY: as above; the old set is only read.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                std::ptr::from_ref(&old),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
        drop(stack);
        if ret < 0 {
            return Err(nix::Error::from_raw(
                i32::try_from(-ret).unwrap_or(libc::EINVAL),
            ));
        }
        Ok(Pid::from_raw(
            i32::try_from(ret).map_err(|_| nix::Error::EOVERFLOW)?,
        ))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (flags, cgroup, child);
        Err(nix::Error::ENOSYS)
    }
}

/// A command line or an environment as execve takes it: C strings and the null-terminated
/// array of pointers to them, made before a clone, so that the child allocates nothing to
/// exec (a child sharing our memory would leak it into ours).
#[derive(Debug)]
pub struct ExecArray {
    /// What `pointers` point at (kept, never read).
    _strings: Vec<std::ffi::CString>,
    pointers: Vec<*const libc::c_char>,
}

impl ExecArray {
    /// Fails with the first item that holds a NUL byte.
    pub fn new(items: &[String]) -> Result<ExecArray, String> {
        let strings = items
            .iter()
            .map(|s| {
                std::ffi::CString::new(s.as_str()).map_err(|_| format!("{s:?} contains a NUL byte"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The strings' bytes live on the heap: moving the vector does not move them.
        let pointers = strings
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(ExecArray {
            _strings: strings,
            pointers,
        })
    }
}

/// Executes `path` with `argv` and `envp`; returns only on failure. Allocates nothing.
pub fn execve(path: &std::ffi::CStr, argv: &ExecArray, envp: &ExecArray) -> nix::Error {
    // SAFETY: `path` is a C string and both pointer arrays are null-terminated and point
    // at C strings owned by the arrays, all alive across the call.
    unsafe {
        libc::execve(
            path.as_ptr(),
            argv.pointers.as_ptr(),
            envp.pointers.as_ptr(),
        )
    };
    nix::Error::last()
}

/// Whether the running kernel is at least `major.minor` (false if its release cannot be
/// read).
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel_release().is_some_and(|v| v >= (major, minor))
}

/// (major, minor) of the running kernel, read once (None: unreadable).
pub fn kernel_release() -> Option<(u32, u32)> {
    static VERSION: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        // SAFETY: uname fills the utsname it is given, valid (zeroed) for the call.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::uname(&mut u) } != 0 {
            return None;
        }
        let release: Vec<u8> = u
            .release
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        parse_kernel_release(&String::from_utf8_lossy(&release))
    })
}

/// (major, minor) of a kernel release string such as `6.1.0-28-amd64`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => Some((major, minor)),
        _ => None,
    }
}

/// Every capability the kernel knows, as a mask, read once. What a process must not have
/// is dropped from this, not from the monitor's own bounding set: a child that enters a
/// user namespace gets a full bounding set there, the node's missing capabilities included.
pub fn known_capabilities() -> u64 {
    static SET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        let mut set = 0u64;
        for cap in 0..64u64 {
            // SAFETY: PR_CAPBSET_READ takes a capability number by value and reads or
            // writes no memory; past the kernel's last capability it fails with EINVAL.
            if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } < 0 {
                break;
            }
            set |= 1 << cap;
        }
        set
    })
}

/// setgroups of the calling thread, as a raw syscall: glibc's wrapper (as its setresgid's
/// and setresuid's) would change every thread of a process that ever had several, through
/// its thread list — which a child sharing our memory must not walk.
pub fn set_groups(groups: &[libc::gid_t]) -> nix::Result<()> {
    // SAFETY: setgroups reads `groups.len()` gids from a slice valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    nix::errno::Errno::result(r).map(drop)
}

/// setresgid(gid, gid, gid) of the calling thread, as a raw syscall (see [`set_groups`]).
pub fn set_gid(gid: u32) -> nix::Result<()> {
    // SAFETY: setresgid takes ids by value and touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    nix::errno::Errno::result(r).map(drop)
}

/// setresuid(uid, uid, uid) of the calling thread, as a raw syscall (see [`set_groups`]).
pub fn set_uid(uid: u32) -> nix::Result<()> {
    // SAFETY: setresuid takes ids by value and touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    nix::errno::Errno::result(r).map(drop)
}

/// Drops every capability of `mask` from the calling thread's bounding set, one prctl a
/// capability (dropping one it no longer has is a no-op); the first failure, with its
/// capability.
pub fn drop_all_from_bounding_set(mask: u64) -> Result<(), (u32, nix::Error)> {
    for cap in (0..64u32).filter(|c| mask & (1 << c) != 0) {
        drop_from_bounding_set(cap).map_err(|e| (cap, e))?;
    }
    Ok(())
}

/// Drops capability `cap` from the calling thread's bounding set.
pub fn drop_from_bounding_set(cap: u32) -> nix::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes a capability number by value; no memory is touched.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    nix::errno::Errno::result(r).map(drop)
}

const CAPABILITY_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's permitted capabilities, as a mask.
pub fn permitted_capabilities() -> nix::Result<u64> {
    let mut hdr = CapHeader {
        version: CAPABILITY_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget (v3) reads the header and writes two CapData, both valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::from_mut(&mut hdr),
            data.as_mut_ptr(),
        )
    };
    nix::errno::Errno::result(r)?;
    Ok(u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32)
}

/// Sets the calling thread's effective, permitted and inheritable capabilities (masks)
/// in one capset: the kernel checks them together (effective within permitted, permitted
/// within what we have).
pub fn set_capabilities(effective: u64, permitted: u64, inheritable: u64) -> nix::Result<()> {
    let mut hdr = CapHeader {
        version: CAPABILITY_V3,
        pid: 0,
    };
    let half = |m: u64, hi: bool| (if hi { m >> 32 } else { m & 0xffff_ffff }) as u32;
    let data = [false, true].map(|hi| CapData {
        effective: half(effective, hi),
        permitted: half(permitted, hi),
        inheritable: half(inheritable, hi),
    });
    // SAFETY: capset (v3) reads the header and two CapData, both valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::from_mut(&mut hdr),
            data.as_ptr(),
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// Makes the calling thread's ambient capabilities exactly `caps` (a mask): clears them
/// all, then raises each (each must be permitted and inheritable by then).
pub fn set_ambient_capabilities(caps: u64) -> nix::Result<()> {
    let ambient = |op: libc::c_ulong, cap: libc::c_ulong| {
        // SAFETY: PR_CAP_AMBIENT takes its operation and capability by value; no memory
        // is touched.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                op,
                cap,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        nix::errno::Errno::result(r).map(drop)
    };
    ambient(libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0)?;
    for cap in (0..64).filter(|c| caps & (1 << c) != 0) {
        ambient(libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, cap)?;
    }
    Ok(())
}

/// Ends the calling process at once: no destructors, no atexit handlers, no stdio flush.
/// What a cloned or forked child must do instead of returning into its parent's code.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

nix::ioctl_read_bad!(siocgifflags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(siocsifflags, libc::SIOCSIFFLAGS, libc::ifreq);

/// Sets IFF_UP on the loopback interface of the caller's network namespace.
pub fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid, initialised ifreq naming "lo"; SIOCGIFFLAGS fills its
    // flags field and reads nothing else; the socket fd is open for the whole call.
    unsafe { siocgifflags(sock.as_raw_fd(), &mut req) }?;
    // SAFETY: reading the union member the kernel just wrote (ifru_flags).
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS reads the name and flags of a valid ifreq.
    unsafe { siocsifflags(sock.as_raw_fd(), &req) }?;
    Ok(())
}

/// Installs a compiled seccomp filter (instructions as (code, jt, jf, k)) on the calling
/// thread. Without no_new_privs the kernel requires CAP_SYS_ADMIN, so the caller installs
/// the filters before it drops capabilities in that case.
pub fn install_seccomp(program: &[(u16, u8, u8, u32)]) -> std::io::Result<()> {
    let insns: Vec<libc::sock_filter> = program
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let len = u16::try_from(insns.len())
        .map_err(|_| std::io::Error::other("seccomp filter longer than 65535 instructions"))?;
    let prog = libc::sock_fprog {
        len,
        filter: insns.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `insns`, which outlives the call; the kernel copies the
    // program in (copy_from_user) and keeps no reference to our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const prog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Loads a BPF_PROG_TYPE_CGROUP_DEVICE program (instructions as (code, regs, off, imm)) and
/// attaches it to the cgroup2 directory open as `cgroup`. The program stays attached after
/// the fds close (the cgroup holds it) and goes with the cgroup.
pub fn attach_device_filter(
    cgroup: &std::fs::File,
    program: &[(u8, u8, i16, i32)],
) -> std::io::Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;
    // struct bpf_insn: code, dst:4 | src:4, off, imm (8 bytes, little-endian fields).
    let mut insns: Vec<u8> = Vec::with_capacity(program.len() * 8);
    for &(code, regs, off, imm) in program {
        insns.push(code);
        insns.push(regs);
        insns.extend_from_slice(&off.to_ne_bytes());
        insns.extend_from_slice(&imm.to_ne_bytes());
    }
    let license = b"Apache-2.0\0";
    let count =
        u32::try_from(program.len()).map_err(|_| std::io::Error::other("program too long"))?;
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, then zeroes.
    let mut load = [0u8; 128];
    load[0..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_DEVICE.to_ne_bytes());
    load[4..8].copy_from_slice(&count.to_ne_bytes());
    load[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    load[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: `load` is a bpf_attr as BPF_PROG_LOAD reads it (the rest zero), and the
    // pointers in it (insns, license) point at buffers that live until after the call;
    // the kernel copies what it needs.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, load.as_ptr(), load.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let prog_fd = i32::try_from(fd).map_err(|_| std::io::Error::other("bad fd"))?;
    // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
    let prog = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(prog_fd) };
    let mut attach = [0u8; 128];
    attach[0..4].copy_from_slice(&cgroup.as_raw_fd().to_ne_bytes());
    attach[4..8].copy_from_slice(&prog.as_raw_fd().to_ne_bytes());
    attach[8..12].copy_from_slice(&BPF_CGROUP_DEVICE.to_ne_bytes());
    attach[12..16].copy_from_slice(&BPF_F_ALLOW_MULTI.to_ne_bytes());
    // SAFETY: `attach` is a bpf_attr as BPF_PROG_ATTACH reads it; both fds are open for
    // the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            attach.as_ptr(),
            attach.len(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// The new mount API (Linux 5.2+, MOUNT_ATTR_IDMAP since 5.12); kernel ABI values.
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// struct mount_attr of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount at `src` (and the mounts below it when `recursive`)
/// that shows its files' owners through the user namespace `userns`: an id-mapped mount.
/// Fails with EINVAL where the file system cannot be id-mapped.
pub fn idmapped_tree(
    src: &std::path::Path,
    userns: &impl AsRawFd,
    recursive: bool,
) -> nix::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path =
        std::ffi::CString::new(src.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let rec = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call; open_tree reads
    // it and returns a new fd (or -1) and touches no other memory of ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec,
        )
    };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    let fd = i32::try_from(fd).map_err(|_| nix::Error::EBADF)?;
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let tree = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).map_err(|_| nix::Error::EBADF)?,
    };
    // SAFETY: `attr` is a valid struct mount_attr whose size we pass; the empty path is a
    // NUL-terminated literal; both fds are open for the whole call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | rec,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(tree)
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// Makes the mount at `path` and every mount below it read-only (mount_setattr(2) with
/// AT_RECURSIVE, Linux 5.12+): a recursive read-only bind mount, which MS_REMOUNT cannot
/// make (it changes one mount only).
pub fn make_readonly_recursive(path: &std::path::Path) -> nix::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `p` is NUL-terminated and outlives the call; `attr` is a valid struct
    // mount_attr whose size we pass; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Whether the kernel has mount_setattr(2): asked with an fd that cannot exist, it says
/// EBADF when it has the call and ENOSYS when it has not. Changes nothing.
pub fn has_mount_setattr() -> bool {
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is a NUL-terminated literal and `attr` a valid struct mount_attr;
    // with fd -1 the kernel fails before touching any mount.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    !(rc < 0 && nix::Error::last() == nix::Error::ENOSYS)
}

/// Attaches a detached mount tree (from [`idmapped_tree`]) at `target`.
pub fn move_mount_to(tree: &OwnedFd, target: &std::path::Path) -> nix::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path =
        std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the tree fd is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Attaches a detached mount tree on the inode that `target` (an `O_PATH` fd) holds, not
/// on whatever a path would name by then.
pub fn move_mount_onto(tree: &OwnedFd, target: &OwnedFd) -> nix::Result<()> {
    // SAFETY: the empty paths are NUL-terminated literals; both fds are open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

// fsopen/fsconfig/fsmount (Linux 5.2+); kernel ABI values.
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
/// fsmount(2)'s attributes of a read-only volume: ro, nosuid, nodev.
pub const MOUNT_ATTR_RO_NOSUID_NODEV: u32 = 0x1 | 0x2 | 0x4;

fn cstring(s: &str) -> nix::Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| nix::Error::EINVAL)
}

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &str) -> nix::Result<()> {
    let (k, v) = (cstring(key)?, cstring(value)?);
    // SAFETY: key and value are NUL-terminated and outlive the call; the kernel reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            k.as_ptr(),
            v.as_ptr(),
            0,
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// A detached overlay mount of `lower` (top first) and, for a writable one, `upper` and
/// `work` (without them overlayfs is read-only), with mount attributes `attrs`
/// (`MOUNT_ATTR_*`); each layer given with its own `lowerdir+` option (Linux 6.8+), so that
/// no page limit on the option string bounds the number of layers (overlayfs itself takes
/// up to 500). ENOSYS or EINVAL where the kernel cannot: the caller falls back to mount(2).
pub fn overlay_tree(
    lower: &[std::path::PathBuf],
    upper_work: Option<(&std::path::Path, &std::path::Path)>,
    attrs: u32,
) -> nix::Result<OwnedFd> {
    let name = cstring("overlay")?;
    // SAFETY: `name` is NUL-terminated and outlives the call; fsopen returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    let fd = i32::try_from(fd).map_err(|_| nix::Error::EBADF)?;
    // SAFETY: fsopen returned a new fd that nothing else owns.
    let fs = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let text = |p: &std::path::Path| p.to_str().map(str::to_owned).ok_or(nix::Error::EINVAL);
    for l in lower {
        fsconfig_string(&fs, "lowerdir+", &text(l)?)?;
    }
    if let Some((upper, work)) = upper_work {
        fsconfig_string(&fs, "upperdir", &text(upper)?)?;
        fsconfig_string(&fs, "workdir", &text(work)?)?;
    }
    // SAFETY: a plain command on the open fs context; no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: fsmount takes the configured context fd and returns a new mount fd.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(nix::Error::last());
    }
    let m = i32::try_from(m).map_err(|_| nix::Error::EBADF)?;
    // SAFETY: fsmount returned a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(m) })
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);

/// Sets the size of the terminal whose master (or slave) is `fd`; the kernel sends
/// SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(fd: &impl AsRawFd, cols: u16, rows: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize that TIOCSWINSZ only reads; the fd is open.
    unsafe { tiocswinsz(fd.as_raw_fd(), &ws) }.map(|_| ())
}

/// Makes the terminal on stdin the calling session leader's controlling terminal.
pub fn take_controlling_terminal() -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal it from another
    // session) and touches no memory of ours.
    unsafe { tiocsctty(0, 0) }.map(|_| ())
}

/// A pidfd of process `pid` (Linux 5.3): it turns readable when the process exits, child
/// of ours or not. Check that `pid` is still the process meant after opening it.
pub fn pidfd_open(pid: u32) -> nix::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(nix::Error::ESRCH)?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    let fd = i32::try_from(fd).map_err(|_| nix::Error::EBADF)?;
    // SAFETY: pidfd_open returned a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Registers an owned descriptor with the tokio reactor for `interest` only (a kernfs
/// file's EPOLLPRI, say).
pub fn async_fd_for(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: as in `async_fd`: the OwnedFd stays open and owned by the AsyncFd.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(std::io::Error::from)
}

/// Registers an owned descriptor (a terminal master, say) with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and owned for its whole life, and its as_raw_fd always
    // returns the same descriptor; the AsyncFd owns it from here on.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// A copy of descriptor `fd` numbered `min` or above (close-on-exec), so that moving
/// descriptors onto small fixed numbers cannot overwrite one still to be moved.
pub fn dup_above(fd: i32, min: i32) -> nix::Result<i32> {
    // SAFETY: F_DUPFD_CLOEXEC only makes a new descriptor of this process; `fd` is one the
    // caller holds open for the call's duration.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    nix::errno::Errno::result(r)
}

/// Makes descriptor `to` a copy of `from`, inherited across exec (dup2 clears
/// close-on-exec); whatever `to` was is closed. For a child about to exec.
pub fn dup_onto(from: i32, to: i32) -> nix::Result<()> {
    if from == to {
        // dup2 would keep close-on-exec set.
        // SAFETY: F_SETFD on a descriptor the caller holds; it changes only its flags.
        let r = unsafe { libc::fcntl(from, libc::F_SETFD, 0) };
        return nix::errno::Errno::result(r).map(drop);
    }
    // SAFETY: dup2 acts only on this process's descriptor table; `from` is open, and the
    // caller means to replace `to` (a cloned child's own table, about to exec).
    let r = unsafe { libc::dup2(from, to) };
    nix::errno::Errno::result(r).map(drop)
}

/// Sets close-on-exec on descriptor `fd`.
pub fn set_cloexec(fd: i32) -> nix::Result<()> {
    // SAFETY: F_SETFD on a descriptor of this process changes only its flags.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    nix::errno::Errno::result(r).map(drop)
}

/// In a cloned child: writes `msg` to descriptor `fd` (its error pipe) and exits at once.
pub fn write_and_exit(fd: i32, msg: &str) -> ! {
    // SAFETY: `fd` is open in this child's table for the rest of its short life; the
    // borrow ends before exit.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(borrowed, msg.as_bytes());
    exit_now(127)
}

/// Closes every descriptor from `first` up, as a forked helper must that keeps running
/// without exec'ing: otherwise its copies hold pipes (a container's stdin, another
/// session's terminal) open after their owner closed them.
pub fn close_from(first: i32) {
    let first = u32::try_from(first).unwrap_or(3);
    // SAFETY: close_range only closes descriptors of this process; the caller owns none
    // of them any more (documented above) and no other thread exists in a cloned child.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        return;
    }
    // Before Linux 5.9: one by one, up to the descriptor limit (/proc/self/fd may be
    // another pid namespace's by now).
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
        .min(1 << 20);
    for fd in first..u32::try_from(limit).unwrap_or(1024) {
        if let Ok(fd) = i32::try_from(fd) {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// As [`close_from`], but descriptor `keep` stays open (a child's error pipe).
pub fn close_from_but(first: i32, keep: i32) {
    if keep >= first {
        for fd in first..keep {
            let _ = nix::unistd::close(fd);
        }
        close_from(keep.saturating_add(1));
    } else {
        close_from(first);
    }
}

nix::ioctl_write_ptr_bad!(tiocsptlck, libc::TIOCSPTLCK, libc::c_int);

/// Unlocks the terminal whose master is `master` and opens its slave side through the
/// master (TIOCGPTPEER, Linux 4.13): no path lookup, so it works for a master opened from
/// another mount namespace's devpts (`/proc/<pid>/root/dev/pts/ptmx`).
pub fn open_pty_peer(master: &OwnedFd) -> nix::Result<OwnedFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which is valid for the call.
    unsafe { tiocsptlck(master.as_raw_fd(), &unlock) }?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes its flags by value and returns a new descriptor (or -1);
    // it reads and writes no memory of ours.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the ioctl returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Sends descriptor `fd` over the unix socket `socket` (SCM_RIGHTS, one byte of data).
pub fn send_fd(socket: &OwnedFd, fd: &OwnedFd) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"t")];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(|_| ())
}

/// Receives one descriptor sent with [`send_fd`], if one is waiting (no blocking).
pub fn recv_fd(socket: &OwnedFd) -> nix::Result<Option<OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel installed this descriptor for us with the message;
            // nothing else owns it.
            return Ok(Some(unsafe {
                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
            }));
        }
    }
    Ok(None)
}

/// The kernel's struct sigaction (x86_64 and aarch64 layout), for rt_sigaction(2).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Gives the calling (about to exec) process default signal dispositions and an empty
/// signal mask. Ignored signals survive exec: berthd, a Rust program, ignores SIGPIPE, and a
/// container started with it ignored would see EPIPE where shell pipelines expect to die.
/// The raw system call, because glibc's wrappers refuse the two real-time signals it keeps
/// for itself, which a parent may have left ignored too.
pub fn reset_signals() {
    let dfl = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `dfl` is a valid kernel sigaction that rt_sigaction only reads; SIG_DFL
        // runs no code of ours; the old action is not asked for (null); 8 is the size of
        // the kernel's signal set. Signals that do not exist fail with EINVAL, ignored.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
    }
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
}

/// Gives the heap's free pages back to the kernel (glibc's malloc_trim). The monitor calls it
/// after a container start, whose launch spec (compiled seccomp filters as JSON) makes a
/// passing peak that would otherwise stay resident for the pod's whole life; berthd calls
/// it periodically, after peaks of connections, streams and pulls.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks and trims malloc's own free lists, under malloc's own
    // locks (it is thread-safe); it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps the number of glibc malloc arenas. By default glibc makes up to 8 per core, one
/// for each thread that allocates while another holds an arena; with tokio's worker and
/// blocking threads that leaves many arenas, each keeping its own freed memory, so a peak
/// spread over threads stays resident. Call before threads exist.
pub fn limit_malloc_arenas(n: i32) -> bool {
    // SAFETY: mallopt only sets a malloc tunable; M_ARENA_MAX takes any positive value.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux keeps a nice value
/// per thread), for berthd's background threads that no caller waits for. A value at or
/// below the thread's current one is not asked for: raising a priority needs CAP_SYS_NICE
/// and is never what this is for.
pub fn lower_thread_priority(nice: i32) -> nix::Result<()> {
    use nix::errno::Errno;
    let tid = libc::id_t::try_from(nix::unistd::gettid().as_raw()).map_err(|_| Errno::EINVAL)?;
    Errno::clear();
    // SAFETY: getpriority reads the nice value of the thread `tid` (this thread, alive);
    // -1 is a valid answer, told from an error by errno, cleared just before.
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if now == -1 && Errno::last_raw() != 0 {
        return Err(Errno::last());
    }
    if nice <= now {
        return Ok(());
    }
    // SAFETY: setpriority sets the nice value of this thread only (PRIO_PROCESS with a
    // thread id applies to that thread on Linux); it touches no memory of ours.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where this node's cgroup v2 hierarchy is mounted, if it has one.
    fn cgroup2_mount() -> Option<std::path::PathBuf> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| {
                nix::sys::statfs::statfs(p)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            })
    }

    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let tid_nice = |tid: i32| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.to_owned();
                    after.split_whitespace().nth(16)?.parse::<i32>().ok()
                })
        };
        let me = nix::unistd::gettid().as_raw();
        let before = tid_nice(me).expect("own nice value");
        let target = (before + 5).min(19);
        let (inside, again) = std::thread::spawn(move || {
            lower_thread_priority(target).expect("setpriority");
            let t = nix::unistd::gettid().as_raw();
            let inside = tid_nice(t);
            // Asking for a higher priority than the thread has is left alone.
            lower_thread_priority(target - 2).expect("no-op");
            (inside, tid_nice(t))
        })
        .join()
        .expect("thread");
        assert_eq!(inside, Some(target));
        assert_eq!(again, Some(target));
        assert_eq!(
            tid_nice(me),
            Some(before),
            "the calling thread keeps its priority"
        );
    }

    /// Whether capability `cap` is in the calling thread's bounding set now.
    fn bounding_set_has(cap: u32) -> bool {
        // SAFETY: PR_CAPBSET_READ takes a capability number by value and reads or writes
        // no memory.
        unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) == 1 }
    }

    /// Waits for `pid` and returns its exit code.
    fn exit_code(pid: Pid) -> i32 {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
            other => panic!("child {pid}: {other:?}"),
        }
    }

    /// The pod init's seccomp filter, installed in a child: its loop's calls work, a new
    /// user namespace and the keyrings are refused with EPERM.
    #[test]
    fn the_pod_inits_filter_refuses_what_it_does_not_need() {
        let filter = crate::spec::seccomp::pod_init_filter().unwrap();
        // Made before the clone: the child (of a process with other threads) allocates
        // nothing.
        let insns: Vec<libc::sock_filter> = filter
            .0
            .iter()
            .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect();
        let prog = libc::sock_fprog {
            len: u16::try_from(insns.len()).unwrap(),
            filter: insns.as_ptr().cast_mut(),
        };
        let pid = clone_child(CloneFlags::empty(), || {
            // SAFETY: raw syscalls with integer arguments, and `prog` (alive: the child runs
            // on a copy of our memory) for seccomp, which copies the program in.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &raw const prog,
                    ) != 0
                {
                    return 2;
                }
                let eperm = |r: libc::c_long| r == -1 && *libc::__errno_location() == libc::EPERM;
                if !eperm(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)) {
                    return 3;
                }
                if !eperm(libc::syscall(
                    libc::SYS_keyctl,
                    0, /* KEYCTL_GET_KEYRING_ID */
                    -4,
                    0,
                )) {
                    return 4;
                }
                if libc::syscall(libc::SYS_getpid) <= 0 {
                    return 5;
                }
            }
            0
        })
        .unwrap();
        assert_eq!(
            exit_code(pid),
            0,
            "2: not installed, 3: unshare, 4: keyctl, 5: getpid"
        );
    }

    #[test]
    fn a_child_sharing_our_memory_runs_before_we_go_on() {
        use std::sync::atomic::{AtomicU32, Ordering};
        // The child only stores to memory it was lent and exits (the test process has other
        // threads, whose locks it must not need).
        let seen = AtomicU32::new(0);
        let pid = match clone_vfork(CloneFlags::empty(), None, &mut || {
            seen.store(
                nix::unistd::getpid().as_raw().cast_unsigned(),
                Ordering::SeqCst,
            );
            7
        }) {
            Err(nix::Error::ENOSYS) => return, // before Linux 5.7, or not x86_64
            r => r.expect("clone3 with CLONE_VM"),
        };
        // Its write is in our memory, and already done: we were suspended until it exited.
        assert_eq!(seen.load(Ordering::SeqCst), pid.as_raw().cast_unsigned());
        assert_eq!(exit_code(pid), 7);
    }

    #[test]
    fn a_child_sharing_our_memory_execs_what_was_prepared_for_it() {
        let argv = ExecArray::new(&["sh".into(), "-c".into(), "exit $CODE".into()]).unwrap();
        let envp = ExecArray::new(&["CODE=42".into()]).unwrap();
        let path = std::ffi::CString::new("/bin/sh").unwrap();
        let pid = match clone_vfork(CloneFlags::empty(), None, &mut || {
            let _ = execve(&path, &argv, &envp);
            99
        }) {
            Err(nix::Error::ENOSYS) => return, // before Linux 5.7, or not x86_64
            r => r.expect("clone3 with CLONE_VM"),
        };
        assert_eq!(exit_code(pid), 42);
        assert!(ExecArray::new(&["a\0b".to_owned()]).is_err());
    }

    #[test]
    fn kernel_releases_are_read_as_major_and_minor() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_release("6.1.0-28-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_release("7.0"), Some((7, 0)));
        assert_eq!(parse_kernel_release("weird"), None);
        assert!(kernel_at_least(3, 0));
        assert!(!kernel_at_least(999, 0));
    }

    #[test]
    fn the_known_capabilities_are_every_one_up_to_the_kernels_last() {
        let known = known_capabilities();
        // Every capability up to the kernel's last, which it names itself.
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .expect("cap_last_cap")
            .trim()
            .parse()
            .expect("a number");
        assert_eq!(known, u64::MAX >> (63 - last), "{known:#x}, last {last}");
    }

    #[test]
    fn capability_sets_are_set_together_and_read_back() {
        // Kernel numbers: CAP_CHOWN 0, CAP_KILL 5, CAP_SYS_BOOT 22.
        let (chown, kill, boot) = (1u64 << 0, 1u64 << 5, 22u32);
        let setpcap = 1u64 << 8;
        if permitted_capabilities().map_or(true, |p| {
            p & (chown | kill | setpcap) != chown | kill | setpcap
        }) {
            return; // not root: nothing to drop or set
        }
        // In a copy of this process, with syscalls only (no lock of another thread needed).
        let pid = clone_child(CloneFlags::empty(), || {
            // Dropping from the bounding set needs CAP_SETPCAP: first, as the child does.
            if drop_from_bounding_set(boot).is_err() {
                return 1;
            }
            if bounding_set_has(boot) {
                return 2;
            }
            if set_capabilities(chown, chown | kill, 0).is_err() {
                return 3;
            }
            if permitted_capabilities() != Ok(chown | kill) {
                return 4;
            }
            // Raising what is not permitted is refused.
            if set_capabilities(chown, chown | kill | (1 << boot), 0).is_ok() {
                return 5;
            }
            // Ambient capabilities must be permitted and inheritable: CAP_KILL is not
            // inheritable here.
            if set_ambient_capabilities(kill).is_ok() || set_ambient_capabilities(0).is_err() {
                return 6;
            }
            0
        })
        .expect("clone");
        assert_eq!(exit_code(pid), 0);
    }

    /// Whether a child `clone` makes into an open cgroup v2 directory is in it from its
    /// start (None: no cgroup v2 hierarchy of ours to try it in).
    fn born_in_cgroup(
        tag: &str,
        clone: impl FnOnce(&OwnedFd, &mut dyn FnMut() -> isize) -> nix::Result<Pid>,
    ) -> Option<nix::Result<i32>> {
        use nix::fcntl::{OFlag, open};
        let root = cgroup2_mount()?;
        let name = format!("berth-test-{tag}-{}", std::process::id());
        let dir = root.join(&name);
        // Not root, or the hierarchy is not ours to write: nothing to try.
        std::fs::create_dir(&dir).ok()?;
        let cg = open(
            &dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        // The child only makes syscalls into buffers on its stack (the test process has
        // other threads, whose locks it must not need): exit 0 when its first look at
        // /proc/self/cgroup finds it in `name`.
        let want = format!("0::/{name}\n");
        let born = clone(&cg, &mut || {
            let Ok(fd) = open(
                "/proc/self/cgroup",
                OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            ) else {
                return 2;
            };
            let mut buf = [0u8; 4096];
            let n = nix::unistd::read(&fd, &mut buf).unwrap_or(0);
            let text = &buf[..n];
            let found = text.windows(want.len()).any(|w| w == want.as_bytes());
            isize::from(!found)
        });
        let code = born.map(exit_code);
        let _ = std::fs::remove_dir(&dir);
        Some(code)
    }

    #[test]
    fn a_child_cloned_into_a_cgroup_v2_directory_is_born_there() {
        let copy = born_in_cgroup("clone-into", |cg, child| {
            clone_child_into(CloneFlags::empty(), cg, child)
        });
        let shared = born_in_cgroup("vfork-into", |cg, child| {
            clone_vfork(CloneFlags::empty(), Some(cg), child)
        });
        for (how, code) in [("copy", copy), ("shared memory", shared)] {
            if let Some(code) = code {
                assert_eq!(
                    code,
                    Ok(0),
                    "{how}: the child was not in its cgroup from its start"
                );
            }
        }
    }
}
