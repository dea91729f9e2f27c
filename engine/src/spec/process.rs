//! The container process: what runs, with which environment, where, and as whom.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::SpecError;
use crate::images::manifest::RunConfig;

/// PATH when neither the image nor the config sets one (Docker's and containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command line: the image's ENTRYPOINT/CMD combined with CRI command/args the way
/// kubelet documents it:
/// - `command` set: it replaces ENTRYPOINT, and `args` (not the image's CMD) follow it;
/// - only `args` set: ENTRYPOINT, then `args`;
/// - neither: ENTRYPOINT, then CMD.
pub fn command_line(
    image: &RunConfig,
    command: &[String],
    args: &[String],
) -> Result<Vec<String>, SpecError> {
    let (entrypoint, cmd): (&[String], &[String]) = if !command.is_empty() {
        (command, args)
    } else if !args.is_empty() {
        (&image.entrypoint, args)
    } else {
        (&image.entrypoint, &image.cmd)
    };
    let argv: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if argv.is_empty() || argv[0].is_empty() {
        return Err(SpecError::new(
            "config.command",
            "no command: neither the container config nor the image sets ENTRYPOINT, CMD, command or args",
        ));
    }
    Ok(argv)
}

/// The environment: the image's variables, overridden by the config's (by name, keeping
/// the first position), then PATH and HOSTNAME if still unset.
pub fn environment(
    image_env: &[String],
    config_env: &[(String, String)],
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(ok, _)| ok == k) {
        Some(slot) => slot.1 = v.to_owned(),
        None => out.push((k.to_owned(), v.to_owned())),
    };
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if !k.is_empty() {
            set(k, v);
        }
    }
    for (k, v) in config_env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(SpecError::new(
                "config.envs",
                format!("invalid variable name {k:?}"),
            ));
        }
        set(k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !hostname.is_empty() && !out.iter().any(|(k, _)| k == "HOSTNAME") {
        out.push(("HOSTNAME".into(), hostname.into()));
    }
    Ok(out.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// The working directory: the config's, else the image's, else `/`. Must be absolute.
pub fn working_dir(image: &RunConfig, config: &str) -> Result<String, SpecError> {
    let wd = if !config.is_empty() {
        config
    } else if !image.working_dir.is_empty() {
        &image.working_dir
    } else {
        "/"
    };
    if !wd.starts_with('/') {
        return Err(SpecError::new(
            "config.working_dir",
            format!("{wd:?} is not an absolute path"),
        ));
    }
    Ok(wd.to_owned())
}

/// The identity the process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without the primary group.
    pub additional_gids: Vec<u32>,
    /// The user's name, when known (for HOME and logs).
    pub name: Option<String>,
    pub home: String,
}

impl User {
    /// The process's group list: the primary group and the supplementary ones, sorted, as
    /// containerd and CRI-O give it (the primary group is in the list too, so that it
    /// stays a member after a setgid program changes its gid).
    pub fn groups(&self) -> Vec<u32> {
        let mut g: BTreeSet<u32> = self.additional_gids.iter().copied().collect();
        g.insert(self.gid);
        g.into_iter().collect()
    }
}

/// What the config asks for (from the container's security context).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    pub run_as_user: Option<i64>,
    pub run_as_username: String,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    /// SupplementalGroupsPolicy Strict: only `supplemental_groups`, not the groups the
    /// image's /etc/group lists the user in (Merge, the default).
    pub strict_groups: bool,
}

#[derive(Debug)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of /etc/group lines.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn id(v: i64, field: &str) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| SpecError::new(field, format!("{v} is not a valid id")))
}

/// Resolves the process identity inside the image, never on the host.
///
/// The user comes from `run_as_user` or `run_as_username`, else the image's USER
/// (`name`, `uid`, `name:group`, `uid:gid`), else root. A name is looked up in the image's
/// /etc/passwd, a group name in its /etc/group; a numeric uid absent from /etc/passwd runs
/// with gid 0 unless a group is given. `run_as_group` overrides the primary group, and
/// needs `run_as_user` or `run_as_username` beside it (as the CRI says).
/// Supplementary groups: those /etc/group lists the user in (unless `strict_groups`), plus
/// `supplemental_groups`.
pub fn resolve_user(
    image_user: &str,
    req: &UserRequest,
    passwd: &str,
    group: &str,
) -> Result<User, SpecError> {
    if req.run_as_group.is_some() && req.run_as_user.is_none() && req.run_as_username.is_empty() {
        return Err(SpecError::new(
            "security_context.run_as_group",
            "a group is set without run_as_user or run_as_username; set the user too",
        ));
    }
    let (user_part, group_part) = if let Some(uid) = req.run_as_user {
        (uid.to_string(), None)
    } else if !req.run_as_username.is_empty() {
        (req.run_as_username.clone(), None)
    } else {
        match image_user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image_user.to_owned(), None),
        }
    };
    let field = if req.run_as_user.is_some() || !req.run_as_username.is_empty() {
        "security_context.run_as_username"
    } else {
        "image USER"
    };
    let (uid, mut gid, name, home) = if user_part.is_empty() {
        let root = passwd_entries(passwd).find(|e| e.uid == 0);
        (
            0,
            0,
            root.as_ref().map(|e| e.name.to_owned()),
            root.map_or("/root".to_owned(), |e| e.home.to_owned()),
        )
    } else if let Ok(uid) = user_part.parse::<i64>() {
        let uid = id(uid, field)?;
        match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.to_owned()), e.home.to_owned()),
            None => (uid, 0, None, "/".to_owned()),
        }
    } else {
        let e = passwd_entries(passwd)
            .find(|e| e.name == user_part)
            .ok_or_else(|| {
                SpecError::new(
                    field,
                    format!("user {user_part:?} not found in the image's /etc/passwd"),
                )
            })?;
        (e.uid, e.gid, Some(e.name.to_owned()), e.home.to_owned())
    };
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<i64>() {
            Ok(n) => id(n, field)?,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    SpecError::new(
                        field,
                        format!("group {g:?} not found in the image's /etc/group"),
                    )
                })?,
        };
    }
    if let Some(g) = req.run_as_group {
        gid = id(g, "security_context.run_as_group")?;
    }
    let mut extra: BTreeSet<u32> = BTreeSet::new();
    if let Some(n) = name.as_ref().filter(|_| !req.strict_groups) {
        extra.extend(
            group_entries(group)
                .filter(|(_, _, m)| m.contains(&n.as_str()))
                .map(|(_, g, _)| g),
        );
    }
    for g in &req.supplemental_groups {
        extra.insert(id(*g, "security_context.supplemental_groups")?);
    }
    extra.remove(&gid);
    Ok(User {
        uid,
        gid,
        additional_gids: extra.into_iter().collect(),
        name,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> RunConfig {
        RunConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..RunConfig::default()
        }
    }

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_and_args_merge_like_kubelet() {
        let img = image(&["/ep"], &["c1", "c2"]);
        assert_eq!(
            command_line(&img, &[], &[]).unwrap(),
            v(&["/ep", "c1", "c2"])
        );
        assert_eq!(
            command_line(&img, &[], &v(&["a"])).unwrap(),
            v(&["/ep", "a"])
        );
        assert_eq!(
            command_line(&img, &v(&["/cmd"]), &[]).unwrap(),
            v(&["/cmd"])
        );
        assert_eq!(
            command_line(&img, &v(&["/cmd"]), &v(&["a", "b"])).unwrap(),
            v(&["/cmd", "a", "b"])
        );
        let only_cmd = image(&[], &["sh"]);
        assert_eq!(command_line(&only_cmd, &[], &[]).unwrap(), v(&["sh"]));
        assert_eq!(
            command_line(&only_cmd, &[], &v(&["echo", "x"])).unwrap(),
            v(&["echo", "x"])
        );
        let e = command_line(&image(&[], &[]), &[], &[]).unwrap_err();
        assert_eq!(e.field, "config.command");
    }

    #[test]
    fn environment_overrides_by_name_and_adds_defaults() {
        let env = environment(
            &v(&["A=1", "PATH=/bin", "B=2"]),
            &[("B".into(), "3".into()), ("C".into(), "x=y".into())],
            "pod-1",
        )
        .unwrap();
        assert_eq!(
            env,
            v(&["A=1", "PATH=/bin", "B=3", "C=x=y", "HOSTNAME=pod-1"])
        );
        let env = environment(&[], &[], "").unwrap();
        assert_eq!(env, vec![format!("PATH={DEFAULT_PATH}")]);
        assert!(environment(&[], &[("A=B".into(), "1".into())], "").is_err());
    }

    #[test]
    fn working_dir_rules() {
        let mut img = RunConfig::default();
        assert_eq!(working_dir(&img, "").unwrap(), "/");
        img.working_dir = "/app".into();
        assert_eq!(working_dir(&img, "").unwrap(), "/app");
        assert_eq!(working_dir(&img, "/x").unwrap(), "/x");
        assert!(working_dir(&img, "rel").is_err());
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nberth:x:1000:1000:b:/home/berth:/bin/sh\nnobody:x:65534:65534:n:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nberth:x:1000:\nextra:x:2000:berth,other\nwheel:x:10:other\n";

    #[test]
    fn users_resolve_in_the_image() {
        let none = UserRequest::default();
        let u = resolve_user("", &none, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user("berth", &none, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![2000]);
        assert_eq!(u.home, "/home/berth");
        let u = resolve_user("1234:5678", &none, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.name.clone()), (1234, 5678, None));
        let u = resolve_user("1000", &none, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let u = resolve_user("berth:wheel", &none, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        let e = resolve_user("ghost", &none, PASSWD, GROUP).unwrap_err();
        assert!(
            e.message.contains("ghost") && e.field == "image USER",
            "{e}"
        );
        assert!(resolve_user("berth:nogroup", &none, PASSWD, GROUP).is_err());
    }

    #[test]
    fn security_context_overrides_the_image() {
        let req = UserRequest {
            run_as_user: Some(65534),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000, 3000],
            ..UserRequest::default()
        };
        let u = resolve_user("berth", &req, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 3000));
        assert_eq!(u.additional_gids, vec![4000]);
        let req = UserRequest {
            run_as_username: "berth".into(),
            ..UserRequest::default()
        };
        assert_eq!(resolve_user("", &req, PASSWD, GROUP).unwrap().uid, 1000);
        let req = UserRequest {
            run_as_user: Some(-1),
            ..UserRequest::default()
        };
        assert!(resolve_user("", &req, PASSWD, GROUP).is_err());
    }

    #[test]
    fn a_group_needs_a_user() {
        let req = UserRequest {
            run_as_group: Some(3000),
            ..UserRequest::default()
        };
        let e = resolve_user("berth", &req, PASSWD, GROUP).unwrap_err();
        assert_eq!(e.field, "security_context.run_as_group");
        let req = UserRequest {
            run_as_username: "berth".into(),
            run_as_group: Some(3000),
            ..UserRequest::default()
        };
        assert_eq!(resolve_user("", &req, PASSWD, GROUP).unwrap().gid, 3000);
    }

    #[test]
    fn strict_groups_leave_out_the_images_groups() {
        let merge = UserRequest {
            run_as_user: Some(1000),
            supplemental_groups: vec![1234],
            ..UserRequest::default()
        };
        let u = resolve_user("", &merge, PASSWD, GROUP).unwrap();
        assert_eq!((u.gid, u.additional_gids.clone()), (1000, vec![1234, 2000]));
        let strict = UserRequest {
            strict_groups: true,
            ..merge
        };
        let u = resolve_user("", &strict, PASSWD, GROUP).unwrap();
        assert_eq!((u.gid, u.additional_gids), (1000, vec![1234]));
    }
}
