//! seccomp: which profile a container gets (CRI `seccomp`, or the legacy
//! `seccomp_profile_path`), berth's RuntimeDefault profile, Localhost profiles in the
//! OCI/Docker JSON format, and their compilation to BPF (seccompiler) at CreateContainer,
//! so that a bad profile is an InvalidArgument before anything runs and the process only
//! installs ready programs just before exec.
//!
//! A profile with several actions becomes several filters: the first allows every listed
//! syscall (with its argument conditions) and applies the default action to the rest;
//! one more per other action returns that action for its syscalls. The kernel runs them
//! all and keeps the strictest answer, so the result is the profile's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::api;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};
use syscalls::Sysno;

use super::SpecError;
use super::seccomp_default::{ALLOWED, BY_CAPABILITY};

/// The CRI field errors name.
const FIELD: &str = "security_context.seccomp";

/// One compiled filter: BPF instructions (code, jt, jf, k), as the kernel takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter(pub Vec<(u16, u8, u8, u32)>);

/// Which profile a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

/// The profile from the CRI fields: `seccomp` wins over the legacy path; neither is
/// Unconfined (Kubernetes' meaning of an empty field).
pub fn choice(
    profile: Option<&api::SecurityProfile>,
    legacy_path: &str,
) -> Result<Choice, SpecError> {
    if let Some(p) = profile {
        return match p.profile_type {
            0 => Ok(Choice::RuntimeDefault),
            1 => Ok(Choice::Unconfined),
            2 => {
                if !Path::new(&p.localhost_ref).is_absolute() {
                    return Err(SpecError::new(
                        FIELD,
                        format!(
                            "seccomp localhost_ref {:?} must be an absolute path",
                            p.localhost_ref
                        ),
                    ));
                }
                Ok(Choice::Localhost(PathBuf::from(&p.localhost_ref)))
            }
            t => Err(SpecError::new(
                FIELD,
                format!("seccomp: unknown profile type {t}"),
            )),
        };
    }
    match legacy_path {
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(path) if Path::new(path).is_absolute() => {
                Ok(Choice::Localhost(PathBuf::from(path)))
            }
            _ => Err(SpecError::new(
                FIELD,
                format!(
                    "seccomp_profile_path {p:?}: expected runtime/default, unconfined or localhost/<absolute path>"
                ),
            )),
        },
    }
}

/// A profile in the OCI/Docker format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub syscalls: Vec<Group>,
}

/// Syscalls that share an action and argument conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    #[serde(default)]
    pub names: Vec<String>,
    /// The format's old single-name form.
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub includes: Filters,
    #[serde(default)]
    pub excludes: Filters,
}

/// Docker's conditions on a group: capabilities held and architectures.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub arches: Vec<String>,
}

/// A condition on one argument.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<SeccompAction, SpecError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(default_errno)),
        other => {
            return Err(SpecError::new(
                FIELD,
                format!("seccomp: unsupported action {other:?}"),
            ));
        }
    })
}

fn condition(a: &Arg) -> Result<SeccompCondition, SpecError> {
    let (op, value) = match a.op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, a.value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, a.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, a.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, a.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, a.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, a.value),
        // libseccomp's masked equality: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
        other => {
            return Err(SpecError::new(
                FIELD,
                format!("seccomp: unsupported argument operator {other:?}"),
            ));
        }
    };
    SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| SpecError::new(FIELD, format!("seccomp: argument condition: {e}")))
}

fn target_arch() -> Result<(TargetArch, &'static str), SpecError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok((TargetArch::x86_64, "amd64")),
        "aarch64" => Ok((TargetArch::aarch64, "arm64")),
        "riscv64" => Ok((TargetArch::riscv64, "riscv64")),
        a => Err(SpecError::new(
            FIELD,
            format!("seccomp is not supported on {a}"),
        )),
    }
}

/// Whether a group applies given the capabilities held and the architecture.
fn applies(g: &Group, caps: &BTreeSet<u8>, arch: &str) -> bool {
    let has = |c: &String| super::security::capability_number(c).is_some_and(|n| caps.contains(&n));
    let arch_ok = |a: &String| {
        a == arch || (arch == "amd64" && a == "x86_64") || (arch == "arm64" && a == "aarch64")
    };
    g.includes.caps.iter().all(has)
        && (g.includes.arches.is_empty() || g.includes.arches.iter().any(arch_ok))
        && !g.excludes.caps.iter().any(has)
        && !g.excludes.arches.iter().any(arch_ok)
}

/// Compiles a profile for this machine's architecture, given the container's capabilities
/// (Docker-format groups may depend on them). Syscalls this architecture does not have
/// are skipped, as runc and crun do.
pub fn compile(p: &Profile, caps: &BTreeSet<u8>) -> Result<Vec<Filter>, SpecError> {
    let (arch, arch_name) = target_arch()?;
    let default_errno = p.default_errno_ret.unwrap_or(EPERM);
    let default = action(&p.default_action, p.default_errno_ret, EPERM)?;
    // Rules per action (kept in first-seen order) and all listed syscalls.
    let mut by_action: Vec<(SeccompAction, RuleSet)> = Vec::new();
    let mut listed = RuleSet::default();
    for g in p.syscalls.iter().filter(|g| applies(g, caps, arch_name)) {
        let act = action(&g.action, g.errno_ret, default_errno)?;
        let conds = g
            .args
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        for n in g.names.iter().chain(g.name.iter()) {
            let Ok(sys) = Sysno::from_str(n) else {
                continue;
            };
            let nr = i64::from(sys.id());
            listed.add(nr, &conds)?;
            if act != SeccompAction::Allow {
                let slot = match by_action.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        by_action.push((act.clone(), RuleSet::default()));
                        by_action.len() - 1
                    }
                };
                by_action[slot].1.add(nr, &conds)?;
            }
        }
    }
    let mut filters = Vec::new();
    let mut add = |rules: BTreeMap<i64, Vec<SeccompRule>>,
                   mismatch: SeccompAction,
                   on_match: SeccompAction|
     -> Result<(), SpecError> {
        if mismatch != on_match {
            filters.push(bpf(rules, mismatch, on_match, arch, "seccomp filter")?);
        }
        Ok(())
    };
    add(listed.rules, default.clone(), SeccompAction::Allow)?;
    for (act, set) in by_action {
        add(set.rules, SeccompAction::Allow, act)?;
    }
    Ok(filters)
}

/// What the pod's init may call: its exec, then the few calls of its reaping loop (and of
/// the monitor's copy that runs the loop where the program cannot run: memory, signals,
/// its name); everything else fails with EPERM. The init holds no capability and sees no
/// file, but it is pid 1 of a namespace a container allowed to trace can inject code into:
/// the filter keeps that code from the calls the container's own profile refuses (keyrings,
/// new user namespaces, BPF, perf, io_uring...). containerd gives its pause the pod's
/// profile.
const POD_INIT_CALLS: &[&str] = &[
    "execveat",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "sigaltstack",
    "wait4",
    "waitid",
    "prctl",
    "restart_syscall",
    "exit",
    "exit_group",
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "futex",
    "read",
    "write",
    "close",
    "getpid",
    "gettid",
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
];

/// The pod init's filter ([`POD_INIT_CALLS`] allowed, EPERM for the rest) for this
/// machine's architecture.
pub fn pod_init_filter() -> Result<Filter, SpecError> {
    let (arch, _) = target_arch()?;
    let rules = POD_INIT_CALLS
        .iter()
        .filter_map(|n| Sysno::from_str(n).ok())
        .map(|sys| (i64::from(sys.id()), Vec::new()))
        .collect();
    bpf(
        rules,
        SeccompAction::Errno(EPERM),
        SeccompAction::Allow,
        arch,
        "pod init seccomp filter",
    )
}

/// One filter compiled to BPF: `on_match` for the calls `rules` match, `mismatch` for the
/// rest; `what` names it in errors.
fn bpf(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    on_match: SeccompAction,
    arch: TargetArch,
    what: &str,
) -> Result<Filter, SpecError> {
    let f = SeccompFilter::new(rules, mismatch, on_match, arch)
        .map_err(|e| SpecError::new(FIELD, format!("{what}: {e}")))?;
    let prog: BpfProgram = f
        .try_into()
        .map_err(|e: seccompiler::BackendError| SpecError::new(FIELD, format!("{what}: {e}")))?;
    Ok(Filter(
        prog.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect(),
    ))
}

/// The rules of one filter: an empty list matches a syscall whatever its arguments, and an
/// unconditional entry wins over conditional ones.
#[derive(Default)]
struct RuleSet {
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    always: BTreeSet<i64>,
}

impl RuleSet {
    fn add(&mut self, nr: i64, conds: &[SeccompCondition]) -> Result<(), SpecError> {
        if conds.is_empty() {
            self.always.insert(nr);
            self.rules.insert(nr, Vec::new());
        } else if !self.always.contains(&nr) {
            let rule = SeccompRule::new(conds.to_vec()).map_err(|e| {
                SpecError::new(FIELD, format!("seccomp rule for syscall {nr}: {e}"))
            })?;
            self.rules.entry(nr).or_default().push(rule);
        }
        Ok(())
    }
}

/// Reads and compiles a Localhost profile; a missing or malformed file is InvalidArgument.
pub fn load(path: &Path, caps: &BTreeSet<u8>) -> Result<Vec<Filter>, SpecError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SpecError::new(FIELD, format!("seccomp profile {}: {e}", path.display())))?;
    let p: Profile = serde_json::from_str(&text).map_err(|e| {
        SpecError::new(
            FIELD,
            format!(
                "seccomp profile {}: not an OCI seccomp profile: {e}",
                path.display()
            ),
        )
    })?;
    compile(&p, caps)
}

/// The filters for a choice (none for Unconfined).
pub fn filters(c: &Choice, caps: &BTreeSet<u8>) -> Result<Vec<Filter>, SpecError> {
    match c {
        Choice::Unconfined => Ok(Vec::new()),
        Choice::RuntimeDefault => compile(&runtime_default(), caps),
        Choice::Localhost(p) => load(p, caps),
    }
}

/// The clone flags that create namespaces: refused to clone without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// berth's RuntimeDefault profile.
pub fn runtime_default() -> Profile {
    let mut groups = vec![Group {
        names: names(ALLOWED),
        action: "SCMP_ACT_ALLOW".into(),
        ..Group::default()
    }];
    // personality: only the harmless personas.
    for v in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        groups.push(Group {
            names: names(&["personality"]),
            action: "SCMP_ACT_ALLOW".into(),
            args: vec![Arg {
                index: 0,
                value: v,
                value_two: 0,
                op: "SCMP_CMP_EQ".into(),
            }],
            ..Group::default()
        });
    }
    // clone without namespace flags; clone3 (flags in a struct the filter cannot read)
    // answers ENOSYS so that libc falls back to clone.
    groups.push(Group {
        names: names(&["clone"]),
        action: "SCMP_ACT_ALLOW".into(),
        args: vec![Arg {
            index: 0,
            value: CLONE_NAMESPACE_FLAGS,
            value_two: 0,
            op: "SCMP_CMP_MASKED_EQ".into(),
        }],
        excludes: Filters {
            caps: vec!["CAP_SYS_ADMIN".into()],
            arches: Vec::new(),
        },
        ..Group::default()
    });
    groups.push(Group {
        names: names(&["clone3"]),
        action: "SCMP_ACT_ERRNO".into(),
        errno_ret: Some(ENOSYS),
        excludes: Filters {
            caps: vec!["CAP_SYS_ADMIN".into()],
            arches: Vec::new(),
        },
        ..Group::default()
    });
    for (cap, calls) in BY_CAPABILITY {
        groups.push(Group {
            names: names(calls),
            action: "SCMP_ACT_ALLOW".into(),
            includes: Filters {
                caps: vec![(*cap).to_owned()],
                arches: Vec::new(),
            },
            ..Group::default()
        });
    }
    Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(EPERM),
        syscalls: groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::security::capability_number;

    fn caps(names: &[&str]) -> BTreeSet<u8> {
        names.iter().filter_map(|n| capability_number(n)).collect()
    }

    #[test]
    fn choices_from_cri_fields() {
        let p = |t: i32, r: &str| api::SecurityProfile {
            profile_type: t,
            localhost_ref: r.into(),
        };
        assert_eq!(choice(None, "").unwrap(), Choice::Unconfined);
        assert_eq!(
            choice(None, "runtime/default").unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choice(None, "localhost//etc/p.json").unwrap(),
            Choice::Localhost("/etc/p.json".into())
        );
        assert!(choice(None, "localhost/relative.json").is_err());
        assert_eq!(
            choice(Some(&p(0, "")), "unconfined").unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(choice(Some(&p(1, "")), "").unwrap(), Choice::Unconfined);
        assert!(choice(Some(&p(2, "x.json")), "").is_err());
        assert!(choice(Some(&p(9, "")), "").is_err());
    }

    #[test]
    fn runtime_default_depends_on_capabilities() {
        // Without CAP_SYS_ADMIN: the allow-list filter and the clone3 ENOSYS filter.
        let f = filters(&Choice::RuntimeDefault, &caps(&["CAP_CHOWN"])).unwrap();
        assert_eq!(f.len(), 2);
        // With it, clone3 is allowed like the rest: one filter, and a larger one.
        let admin = filters(&Choice::RuntimeDefault, &caps(&["CAP_SYS_ADMIN"])).unwrap();
        assert_eq!(admin.len(), 1);
        assert!(admin[0].0.len() > f[0].0.len());
        assert!(
            filters(&Choice::Unconfined, &BTreeSet::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn localhost_profiles_parse_and_fail_clearly() {
        let t = tempfile::tempdir().unwrap();
        let deny = t.path().join("deny-mkdir.json");
        std::fs::write(
            &deny,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat","no_such_syscall"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        // Default allow: only the ERRNO filter.
        assert_eq!(load(&deny, &BTreeSet::new()).unwrap().len(), 1);
        let bad = t.path().join("bad.json");
        std::fs::write(&bad, "{ not json").unwrap();
        let e = load(&bad, &BTreeSet::new()).unwrap_err();
        assert!(e.to_string().contains("not an OCI seccomp profile"), "{e}");
        let e = load(&t.path().join("missing.json"), &BTreeSet::new()).unwrap_err();
        assert!(e.to_string().contains("missing.json"), "{e}");
        std::fs::write(&bad, r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).unwrap();
        assert!(load(&bad, &BTreeSet::new()).is_err());
        let cond = t.path().join("cond.json");
        std::fs::write(
            &cond,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"syscalls":[
                {"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
                {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                {"names":["kill"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        )
        .unwrap();
        assert_eq!(load(&cond, &BTreeSet::new()).unwrap().len(), 2);
    }
}
