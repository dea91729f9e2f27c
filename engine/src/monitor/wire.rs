//! The typed monitor contract: berth's launch and exec specs, error kinds and exit records
//! as the messages of `proto/berth/monitor.proto` (protocol 2), and the protocol-1 forms
//! (JSON specs, positional error codes, JSON exit records) still read and, for monitors
//! of protocol 1, still written. The conversions here are the only place where the
//! engine's types meet the wire's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_proto::monitor as proto;
use berth_proto::prost::Message;

use crate::error::ErrorKind;
use crate::linux::spawn::{ExecSpec, LaunchSpec, ProcessSpec, Rootfs, StdioMode, UserNamespace};
use crate::spec::devices::DeviceNode;
use crate::spec::hooks::{Hook, Hooks};
use crate::spec::mounts::{Mount, Propagation};
use crate::spec::process::User;
use crate::spec::seccomp::Filter;
use crate::spec::security::Capabilities;

/// The protocol a monitor of this build speaks.
pub const PROTOCOL: u32 = proto::PROTOCOL_VERSION;

/// A message that does not describe a valid spec.
#[derive(Debug, thiserror::Error)]
#[error("monitor message: {0}")]
pub struct WireError(pub String);

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn paths(ps: &[PathBuf]) -> Vec<String> {
    ps.iter().map(|p| path(p)).collect()
}

fn to_paths(ps: Vec<String>) -> Vec<PathBuf> {
    ps.into_iter().map(PathBuf::from).collect()
}

fn mask(set: &BTreeSet<u8>) -> u64 {
    Capabilities::mask(set)
}

fn unmask(m: u64) -> BTreeSet<u8> {
    (0u8..64).filter(|b| m & (1u64 << b) != 0).collect()
}

impl From<&Filter> for proto::SeccompFilter {
    fn from(f: &Filter) -> Self {
        let mut program = Vec::with_capacity(f.0.len() * 8);
        for (code, jt, jf, k) in &f.0 {
            program.extend_from_slice(&code.to_le_bytes());
            program.push(*jt);
            program.push(*jf);
            program.extend_from_slice(&k.to_le_bytes());
        }
        proto::SeccompFilter { program }
    }
}

impl TryFrom<proto::SeccompFilter> for Filter {
    type Error = WireError;
    fn try_from(f: proto::SeccompFilter) -> Result<Self, WireError> {
        if !f.program.len().is_multiple_of(8) {
            return Err(WireError(format!(
                "a seccomp program of {} bytes is not whole instructions",
                f.program.len()
            )));
        }
        Ok(Filter(
            f.program
                .chunks_exact(8)
                .map(|i| {
                    (
                        u16::from_le_bytes([i[0], i[1]]),
                        i[2],
                        i[3],
                        u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
                    )
                })
                .collect(),
        ))
    }
}

impl From<&ProcessSpec> for proto::ProcessSpec {
    fn from(p: &ProcessSpec) -> Self {
        let c = &p.capabilities;
        proto::ProcessSpec {
            args: p.args.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            user: Some(proto::User {
                uid: p.user.uid,
                gid: p.user.gid,
                additional_gids: p.user.additional_gids.clone(),
                name: p.user.name.clone(),
                home: p.user.home.clone(),
            }),
            capabilities: Some(proto::Capabilities {
                bounding: mask(&c.bounding),
                effective: mask(&c.effective),
                permitted: mask(&c.permitted),
                inheritable: mask(&c.inheritable),
                ambient: mask(&c.ambient),
            }),
            no_new_privs: p.no_new_privs,
            seccomp: p.seccomp.iter().map(Into::into).collect(),
            apparmor: p.apparmor.clone(),
            selinux_label: p.selinux_label.clone(),
        }
    }
}

impl TryFrom<proto::ProcessSpec> for ProcessSpec {
    type Error = WireError;
    fn try_from(p: proto::ProcessSpec) -> Result<Self, WireError> {
        let u = p
            .user
            .ok_or_else(|| WireError("a process without a user".into()))?;
        let c = p.capabilities.unwrap_or_default();
        Ok(ProcessSpec {
            args: p.args,
            env: p.env,
            cwd: p.cwd,
            user: User {
                uid: u.uid,
                gid: u.gid,
                additional_gids: u.additional_gids,
                name: u.name,
                home: u.home,
            },
            capabilities: Capabilities {
                bounding: unmask(c.bounding),
                effective: unmask(c.effective),
                permitted: unmask(c.permitted),
                inheritable: unmask(c.inheritable),
                ambient: unmask(c.ambient),
            },
            no_new_privs: p.no_new_privs,
            seccomp: p
                .seccomp
                .into_iter()
                .map(Filter::try_from)
                .collect::<Result<_, _>>()?,
            apparmor: p.apparmor,
            selinux_label: p.selinux_label,
        })
    }
}

impl From<&Mount> for proto::Mount {
    fn from(m: &Mount) -> Self {
        let propagation = match m.propagation {
            None => proto::Propagation::Unspecified,
            Some(Propagation::Private) => proto::Propagation::Private,
            Some(Propagation::RSlave) => proto::Propagation::Rslave,
            Some(Propagation::RShared) => proto::Propagation::Rshared,
        };
        proto::Mount {
            destination: m.destination.clone(),
            source: m.source.clone(),
            kind: m.kind.clone(),
            options: m.options.clone(),
            propagation: propagation as i32,
        }
    }
}

impl TryFrom<proto::Mount> for Mount {
    type Error = WireError;
    fn try_from(m: proto::Mount) -> Result<Self, WireError> {
        let propagation = match proto::Propagation::try_from(m.propagation) {
            Ok(proto::Propagation::Unspecified) => None,
            Ok(proto::Propagation::Private) => Some(Propagation::Private),
            Ok(proto::Propagation::Rslave) => Some(Propagation::RSlave),
            Ok(proto::Propagation::Rshared) => Some(Propagation::RShared),
            Err(_) => {
                return Err(WireError(format!(
                    "mount {}: unknown propagation {}",
                    m.destination, m.propagation
                )));
            }
        };
        Ok(Mount {
            destination: m.destination,
            source: m.source,
            kind: m.kind,
            options: m.options,
            propagation,
        })
    }
}

impl From<&DeviceNode> for proto::DeviceNode {
    fn from(d: &DeviceNode) -> Self {
        proto::DeviceNode {
            path: d.path.clone(),
            kind: d.kind.to_string(),
            major: d.major,
            minor: d.minor,
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
        }
    }
}

impl TryFrom<proto::DeviceNode> for DeviceNode {
    type Error = WireError;
    fn try_from(d: proto::DeviceNode) -> Result<Self, WireError> {
        let kind = match d.kind.as_str() {
            "c" => 'c',
            "b" => 'b',
            other => {
                return Err(WireError(format!(
                    "device {}: kind {other:?} is neither c nor b",
                    d.path
                )));
            }
        };
        Ok(DeviceNode {
            path: d.path,
            kind,
            major: d.major,
            minor: d.minor,
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
        })
    }
}

impl From<&LaunchSpec> for proto::LaunchSpec {
    fn from(l: &LaunchSpec) -> Self {
        proto::LaunchSpec {
            id: l.id.clone(),
            rootfs: Some(proto::Rootfs {
                lowerdirs: paths(&l.rootfs.lowerdirs),
                upperdir: path(&l.rootfs.upperdir),
                workdir: path(&l.rootfs.workdir),
                target: path(&l.rootfs.target),
                readonly: l.rootfs.readonly,
            }),
            process: Some((&l.process).into()),
            devices: l.devices.iter().map(Into::into).collect(),
            oom_score_adj: l.oom_score_adj,
            mounts: l.mounts.iter().map(Into::into).collect(),
            masked_paths: l.masked_paths.clone(),
            readonly_paths: l.readonly_paths.clone(),
            cgroup_dirs: paths(&l.cgroup_dirs),
            cgroup_view: l
                .cgroup_view
                .iter()
                .map(|(name, dir)| proto::CgroupView {
                    name: name.clone(),
                    dir: path(dir),
                })
                .collect(),
            new_pid_namespace: l.new_pid_namespace,
            pid_target: l.pid_target.clone(),
            pod_pid_namespace: l
                .pod_pid_namespace
                .as_ref()
                .map(|dirs| proto::PodPidNamespace {
                    init_cgroup_dirs: paths(dirs),
                }),
            sysctls: l.sysctls.clone().into_iter().collect(),
            userns: l.userns.as_ref().map(|u| proto::UserNamespace {
                path: path(&u.path),
                root_uid: u.root_uid,
                root_gid: u.root_gid,
            }),
            stdio: Some(proto::StdioMode {
                stdin: l.stdio.stdin,
                stdin_once: l.stdio.stdin_once,
                tty: l.stdio.tty,
            }),
            hooks: l.hooks.as_ref().map(Into::into),
            cgroup_park: l.cgroup_park.as_deref().map(path).unwrap_or_default(),
        }
    }
}

impl From<&Hooks> for proto::Hooks {
    fn from(h: &Hooks) -> Self {
        let list = |v: &[Hook]| {
            v.iter()
                .map(|h| proto::Hook {
                    path: h.path.clone(),
                    args: h.args.clone(),
                    env: h.env.clone(),
                    timeout_seconds: h.timeout,
                })
                .collect()
        };
        proto::Hooks {
            prestart: list(&h.prestart),
            create_runtime: list(&h.create_runtime),
            create_container: list(&h.create_container),
            start_container: list(&h.start_container),
            poststart: list(&h.poststart),
            poststop: list(&h.poststop),
            bundle: h.bundle.clone(),
            annotations: h.annotations.clone().into_iter().collect(),
        }
    }
}

impl From<proto::Hooks> for Hooks {
    fn from(h: proto::Hooks) -> Self {
        let list = |v: Vec<proto::Hook>| {
            v.into_iter()
                .map(|h| Hook {
                    path: h.path,
                    args: h.args,
                    env: h.env,
                    timeout: h.timeout_seconds,
                })
                .collect()
        };
        Hooks {
            prestart: list(h.prestart),
            create_runtime: list(h.create_runtime),
            create_container: list(h.create_container),
            start_container: list(h.start_container),
            poststart: list(h.poststart),
            poststop: list(h.poststop),
            bundle: h.bundle,
            annotations: h.annotations.into_iter().collect(),
        }
    }
}

impl TryFrom<proto::LaunchSpec> for LaunchSpec {
    type Error = WireError;
    fn try_from(l: proto::LaunchSpec) -> Result<Self, WireError> {
        let r = l
            .rootfs
            .ok_or_else(|| WireError(format!("container {}: no rootfs", l.id)))?;
        let process = l
            .process
            .ok_or_else(|| WireError(format!("container {}: no process", l.id)))?;
        let stdio = l.stdio.unwrap_or_default();
        Ok(LaunchSpec {
            rootfs: Rootfs {
                lowerdirs: to_paths(r.lowerdirs),
                upperdir: r.upperdir.into(),
                workdir: r.workdir.into(),
                target: r.target.into(),
                readonly: r.readonly,
            },
            process: process.try_into()?,
            devices: l
                .devices
                .into_iter()
                .map(DeviceNode::try_from)
                .collect::<Result<_, _>>()?,
            oom_score_adj: l.oom_score_adj,
            mounts: l
                .mounts
                .into_iter()
                .map(Mount::try_from)
                .collect::<Result<_, _>>()?,
            masked_paths: l.masked_paths,
            readonly_paths: l.readonly_paths,
            cgroup_dirs: to_paths(l.cgroup_dirs),
            cgroup_view: l
                .cgroup_view
                .into_iter()
                .map(|v| (v.name, PathBuf::from(v.dir)))
                .collect(),
            new_pid_namespace: l.new_pid_namespace,
            pid_target: l.pid_target,
            pod_pid_namespace: l.pod_pid_namespace.map(|p| to_paths(p.init_cgroup_dirs)),
            sysctls: l.sysctls.into_iter().collect(),
            userns: l.userns.map(|u| UserNamespace {
                path: u.path.into(),
                root_uid: u.root_uid,
                root_gid: u.root_gid,
            }),
            stdio: StdioMode {
                stdin: stdio.stdin,
                stdin_once: stdio.stdin_once,
                tty: stdio.tty,
            },
            hooks: l.hooks.map(Into::into),
            cgroup_park: (!l.cgroup_park.is_empty()).then(|| PathBuf::from(l.cgroup_park)),
            id: l.id,
        })
    }
}

impl From<&ExecSpec> for proto::ExecSpec {
    fn from(e: &ExecSpec) -> Self {
        proto::ExecSpec {
            process: Some((&e.process).into()),
            cgroup_dirs: paths(&e.cgroup_dirs),
            userns: e.userns.as_deref().map(path),
        }
    }
}

impl TryFrom<proto::ExecSpec> for ExecSpec {
    type Error = WireError;
    fn try_from(e: proto::ExecSpec) -> Result<Self, WireError> {
        Ok(ExecSpec {
            process: e
                .process
                .ok_or_else(|| WireError("an exec without a process".into()))?
                .try_into()?,
            cgroup_dirs: to_paths(e.cgroup_dirs),
            userns: e.userns.map(PathBuf::from),
        })
    }
}

/// The launch spec of a Start request, typed or (protocol 1) JSON.
pub fn launch_of(s: &proto::Start) -> Result<LaunchSpec, WireError> {
    match &s.launch_spec {
        Some(l) => l.clone().try_into(),
        None => serde_json::from_slice(&s.launch_spec_json)
            .map_err(|e| WireError(format!("launch spec (JSON): {e}"))),
    }
}

/// The exec spec of an Exec or ExecSession request, typed or (protocol 1) JSON.
pub fn exec_of(typed: Option<&proto::ExecSpec>, json: &[u8]) -> Result<ExecSpec, WireError> {
    match typed {
        Some(e) => e.clone().try_into(),
        None => {
            serde_json::from_slice(json).map_err(|e| WireError(format!("exec spec (JSON): {e}")))
        }
    }
}

/// A Start request for a monitor speaking `protocol`.
pub fn start_request(
    protocol: u32,
    launch: &LaunchSpec,
    log_directory: String,
    log_path: String,
    oom_file: String,
) -> Result<proto::Start, WireError> {
    let (launch_spec, launch_spec_json) = if protocol >= 2 {
        (Some(launch.into()), Vec::new())
    } else {
        let json = serde_json::to_vec(launch)
            .map_err(|e| WireError(format!("encode launch spec: {e}")))?;
        (None, json)
    };
    Ok(proto::Start {
        container_id: launch.id.clone(),
        launch_spec_json,
        log_path,
        oom_file,
        launch_spec,
        log_directory,
        restore: None,
    })
}

impl From<&crate::linux::restore::RestoreSpec> for proto::Restore {
    fn from(r: &crate::linux::restore::RestoreSpec) -> Self {
        proto::Restore {
            criu: r.criu.display().to_string(),
            images_dir: r.images_dir.display().to_string(),
            work_dir: r.work_dir.display().to_string(),
            external_mounts: r
                .external_mounts
                .iter()
                .map(|(name, source)| proto::ExternalMount {
                    name: name.clone(),
                    source: source.display().to_string(),
                })
                .collect(),
            stdio: r.stdio.clone(),
            netns: r
                .netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }
    }
}

impl From<&proto::Restore> for crate::linux::restore::RestoreSpec {
    fn from(r: &proto::Restore) -> Self {
        crate::linux::restore::RestoreSpec {
            criu: PathBuf::from(&r.criu),
            images_dir: PathBuf::from(&r.images_dir),
            work_dir: PathBuf::from(&r.work_dir),
            external_mounts: r
                .external_mounts
                .iter()
                .map(|m| (m.name.clone(), PathBuf::from(&m.source)))
                .collect(),
            stdio: r.stdio.clone(),
            netns: (!r.netns.is_empty()).then(|| PathBuf::from(&r.netns)),
        }
    }
}

/// An exec spec for a monitor speaking `protocol`: (typed, JSON).
pub fn exec_request(
    protocol: u32,
    spec: &ExecSpec,
) -> Result<(Option<proto::ExecSpec>, Vec<u8>), WireError> {
    if protocol >= 2 {
        Ok((Some(spec.into()), Vec::new()))
    } else {
        serde_json::to_vec(spec)
            .map(|j| (None, j))
            .map_err(|e| WireError(format!("encode exec spec: {e}")))
    }
}

/// ErrorKind <-> the wire: protocol 2's enum, and protocol 1's position in the order the
/// kinds were declared in then (which must never change).
const LEGACY_ORDER: [ErrorKind; 11] = [
    ErrorKind::NotFound,
    ErrorKind::AlreadyExists,
    ErrorKind::PermissionDenied,
    ErrorKind::InvalidArgument,
    ErrorKind::FailedPrecondition,
    ErrorKind::Unavailable,
    ErrorKind::ResourceExhausted,
    ErrorKind::DataLoss,
    ErrorKind::DeadlineExceeded,
    ErrorKind::Unimplemented,
    ErrorKind::Internal,
];

fn code_of(kind: ErrorKind) -> proto::ErrorCode {
    use proto::ErrorCode as C;
    match kind {
        ErrorKind::NotFound => C::NotFound,
        ErrorKind::AlreadyExists => C::AlreadyExists,
        ErrorKind::PermissionDenied => C::PermissionDenied,
        ErrorKind::InvalidArgument => C::InvalidArgument,
        ErrorKind::FailedPrecondition => C::FailedPrecondition,
        ErrorKind::Unavailable => C::Unavailable,
        ErrorKind::ResourceExhausted => C::ResourceExhausted,
        ErrorKind::DataLoss => C::DataLoss,
        ErrorKind::DeadlineExceeded => C::DeadlineExceeded,
        ErrorKind::Unimplemented => C::Unimplemented,
        ErrorKind::Internal => C::Internal,
    }
}

/// An Error message carrying `kind` both ways (for monitors and berthds of either
/// protocol).
pub fn error(kind: ErrorKind, message: String) -> proto::Error {
    let legacy = LEGACY_ORDER
        .iter()
        .position(|k| *k == kind)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(10);
    proto::Error {
        code: legacy,
        message,
        kind: code_of(kind) as i32,
    }
}

/// The kind an Error message carries (its protocol-2 field, else the legacy code).
pub fn kind_of(e: &proto::Error) -> ErrorKind {
    use proto::ErrorCode as C;
    match proto::ErrorCode::try_from(e.kind) {
        Ok(C::Unspecified) | Err(_) => LEGACY_ORDER
            .get(usize::try_from(e.code).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(ErrorKind::Internal),
        Ok(c) => LEGACY_ORDER
            .iter()
            .copied()
            .find(|k| code_of(*k) == c)
            .unwrap_or(ErrorKind::Internal),
    }
}

/// Where a container's exit record is, in a pod's exits directory (protocol 2).
pub fn exit_record_path(exits: &Path, container_id: &str) -> PathBuf {
    exits.join(format!("{container_id}.exit"))
}

/// Where a protocol-1 monitor wrote it.
fn legacy_exit_record_path(exits: &Path, container_id: &str) -> PathBuf {
    exits.join(format!("{container_id}.json"))
}

/// The bytes of an exit record.
pub fn encode_exit(e: &proto::Exited) -> Vec<u8> {
    e.encode_to_vec()
}

/// A protocol-1 exit record (JSON, every field present).
#[derive(Debug, serde::Deserialize)]
struct LegacyExit {
    container_id: String,
    pid: u32,
    exit_code: i32,
    signal: i32,
    finished_at: i64,
    oom_killed: bool,
}

/// Reads container `id`'s exit record from a pod's exits directory, in either format;
/// None when there is none.
pub fn read_exit(exits: &Path, id: &str) -> Result<Option<proto::Exited>, WireError> {
    let typed = exit_record_path(exits, id);
    match std::fs::read(&typed) {
        Ok(b) => {
            return proto::Exited::decode(b.as_slice())
                .map(Some)
                .map_err(|e| WireError(format!("{}: {e}", typed.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WireError(format!("{}: {e}", typed.display()))),
    }
    let legacy = legacy_exit_record_path(exits, id);
    match std::fs::read(&legacy) {
        Ok(b) => {
            let l: LegacyExit = serde_json::from_slice(&b)
                .map_err(|e| WireError(format!("{}: {e}", legacy.display())))?;
            Ok(Some(proto::Exited {
                container_id: l.container_id,
                pid: l.pid,
                exit_code: l.exit_code,
                signal: l.signal,
                finished_at: l.finished_at,
                oom_killed: l.oom_killed,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WireError(format!("{}: {e}", legacy.display()))),
    }
}

/// Removes container `id`'s exit record, in either format.
pub fn remove_exit(exits: &Path, id: &str) {
    let _ = std::fs::remove_file(exit_record_path(exits, id));
    let _ = std::fs::remove_file(legacy_exit_record_path(exits, id));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LaunchSpec {
        let mut caps = Capabilities::default();
        caps.bounding.extend([0, 1, 21, 40]);
        caps.effective.extend([0, 21]);
        LaunchSpec {
            id: "c1".into(),
            rootfs: Rootfs {
                lowerdirs: vec!["/l/2".into(), "/l/1".into()],
                upperdir: "/u".into(),
                workdir: "/w".into(),
                target: "/t".into(),
                readonly: true,
            },
            process: ProcessSpec {
                args: vec!["sh".into(), "-c".into(), "true".into()],
                env: vec!["A=b".into()],
                cwd: "/".into(),
                user: User {
                    uid: 1000,
                    gid: 1000,
                    additional_gids: vec![4, 27],
                    name: Some("u".into()),
                    home: "/home/u".into(),
                },
                capabilities: caps,
                no_new_privs: true,
                seccomp: vec![Filter(vec![(0x20, 0, 0, 4), (0x15, 1, 0, 0xc000_003e)])],
                apparmor: Some("berth-default".into()),
                selinux_label: None,
            },
            devices: vec![DeviceNode {
                path: "/dev/fuse".into(),
                kind: 'c',
                major: 10,
                minor: 229,
                mode: 0o666,
                uid: 0,
                gid: 0,
            }],
            oom_score_adj: Some(-997),
            mounts: vec![
                Mount {
                    destination: "/proc".into(),
                    source: "proc".into(),
                    kind: "proc".into(),
                    options: vec!["nosuid".into()],
                    propagation: None,
                },
                Mount {
                    destination: "/data".into(),
                    source: "/srv".into(),
                    kind: "bind".into(),
                    options: vec!["rbind".into(), "rro".into()],
                    propagation: Some(Propagation::RSlave),
                },
            ],
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            cgroup_dirs: vec!["/sys/fs/cgroup/memory/p/c1".into()],
            cgroup_view: vec![("memory".into(), "/sys/fs/cgroup/memory/p/c1".into())],
            cgroup_park: Some("/run/berth/park/0123456789abcdef".into()),
            new_pid_namespace: false,
            pid_target: None,
            pod_pid_namespace: Some(vec!["/sys/fs/cgroup/cpu/p/pod-init".into()]),
            sysctls: [("net.ipv4.ip_forward".to_owned(), "1".to_owned())].into(),
            userns: Some(UserNamespace {
                path: "/run/p/userns".into(),
                root_uid: 100000,
                root_gid: 100000,
            }),
            stdio: StdioMode {
                stdin: true,
                stdin_once: true,
                tty: false,
            },
            hooks: Some(Hooks {
                create_container: vec![Hook {
                    path: "/usr/bin/nvidia-ctk".into(),
                    args: vec!["nvidia-ctk".into(), "hook".into(), "update-ldcache".into()],
                    env: vec!["A=b".into()],
                    timeout: Some(5),
                }],
                poststop: vec![Hook {
                    path: "/bin/true".into(),
                    ..Default::default()
                }],
                bundle: "/var/lib/berth/containers/c1".into(),
                annotations: [("k".to_owned(), "v".to_owned())].into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn launch_specs_round_trip_through_the_message() {
        let l = sample();
        let wire = proto::LaunchSpec::from(&l);
        let bytes = wire.encode_to_vec();
        let back =
            LaunchSpec::try_from(proto::LaunchSpec::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, l);
        // Compiled seccomp filters go as the kernel's 8-byte instructions.
        assert_eq!(wire.process.unwrap().seccomp[0].program.len(), 16);
        let e = ExecSpec::for_container(&l, vec!["id".into()]);
        let back = ExecSpec::try_from(proto::ExecSpec::from(&e)).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn protocol_1_json_specs_are_still_read_and_written() {
        let l = sample();
        // berthd talking to a monitor of protocol 1 sends JSON, which this build reads too.
        let start = start_request(1, &l, "".into(), "/log".into(), "".into()).unwrap();
        assert!(start.launch_spec.is_none() && !start.launch_spec_json.is_empty());
        assert_eq!(launch_of(&start).unwrap(), l);
        let start = start_request(2, &l, "".into(), "/log".into(), "".into()).unwrap();
        assert!(start.launch_spec.is_some() && start.launch_spec_json.is_empty());
        assert_eq!(launch_of(&start).unwrap(), l);
        // A protocol-1 spec, as the previous berth wrote it (no pod_pid_namespace field).
        let mut v = serde_json::to_value(&l).unwrap();
        v.as_object_mut().unwrap().remove("pod_pid_namespace");
        let old = proto::Start {
            launch_spec_json: serde_json::to_vec(&v).unwrap(),
            ..Default::default()
        };
        let read = launch_of(&old).unwrap();
        assert_eq!(read.pod_pid_namespace, None);
        assert_eq!(read.process, l.process);
        let e = ExecSpec::for_container(&l, vec!["ls".into()]);
        let (typed, json) = exec_request(1, &e).unwrap();
        assert!(typed.is_none());
        assert_eq!(exec_of(None, &json).unwrap(), e);
    }

    #[test]
    fn error_kinds_cross_both_protocols() {
        for (i, kind) in LEGACY_ORDER.iter().enumerate() {
            let e = error(*kind, "m".into());
            assert_eq!(e.code as usize, i, "protocol 1's code of {kind:?}");
            assert_eq!(kind_of(&e), *kind);
            // From a peer of protocol 1: only the code.
            let old = proto::Error {
                code: e.code,
                message: "m".into(),
                kind: 0,
            };
            assert_eq!(kind_of(&old), *kind);
        }
        let nonsense = proto::Error {
            code: 99,
            message: String::new(),
            kind: 0,
        };
        assert_eq!(kind_of(&nonsense), ErrorKind::Internal);
    }

    #[test]
    fn exit_records_of_both_protocols_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let e = proto::Exited {
            container_id: "new".into(),
            pid: 42,
            exit_code: 137,
            signal: 9,
            finished_at: 1_700_000_000_000_000_000,
            oom_killed: true,
        };
        std::fs::write(exit_record_path(dir.path(), "new"), encode_exit(&e)).unwrap();
        assert_eq!(read_exit(dir.path(), "new").unwrap(), Some(e));
        // What a protocol-1 monitor wrote.
        std::fs::write(
            dir.path().join("old.json"),
            r#"{"container_id":"old","exit_code":3,"finished_at":1700000000123456789,"oom_killed":false,"pid":7,"signal":0}"#,
        )
        .unwrap();
        let old = read_exit(dir.path(), "old").unwrap().unwrap();
        assert_eq!(
            (old.exit_code, old.pid, old.finished_at),
            (3, 7, 1_700_000_000_123_456_789)
        );
        assert_eq!(read_exit(dir.path(), "none").unwrap(), None);
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        assert!(read_exit(dir.path(), "bad").is_err());
        remove_exit(dir.path(), "old");
        remove_exit(dir.path(), "new");
        assert_eq!(read_exit(dir.path(), "old").unwrap(), None);
        assert_eq!(read_exit(dir.path(), "new").unwrap(), None);
    }
}
