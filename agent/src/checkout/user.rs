//! The process user of a bundle: `user[:group]` (names or ids) resolved
//! against the rootfs' `/etc/passwd` and `/etc/group` like runc/umoci.

/// The user a process runs as, resolved like runc/umoci
/// (`user[:group]`, names looked up in the rootfs' `/etc/passwd` and
/// `/etc/group`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids.
    pub sgids: Vec<u32>,
    /// Home directory, when the passwd entry was found.
    pub home: Option<String>,
}

/// Resolve `spec` against passwd and group file contents.
pub fn resolve_user(
    spec: &str,
    passwd: Option<&[u8]>,
    group: Option<&[u8]>,
) -> Result<ExecUser, String> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let mut out = ExecUser::default();
    let uid_arg = user_arg.parse::<u32>().ok();
    if let Some(u) = uid_arg {
        out.uid = u;
    }
    let mut matched_name: Option<String> = None;
    for line in passwd.unwrap_or(b"").split(|&c| c == b'\n') {
        let line = String::from_utf8_lossy(line);
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        let hit = if user_arg.is_empty() {
            uid == out.uid
        } else if let Some(u) = uid_arg {
            uid == u
        } else {
            f[0] == user_arg
        };
        if hit {
            out.uid = uid;
            out.gid = gid;
            out.home = Some(f[5].to_string());
            matched_name = Some(f[0].to_string());
            break;
        }
    }
    if matched_name.is_none() && !user_arg.is_empty() && uid_arg.is_none() {
        return Err(format!(
            "unable to find user {user_arg}: no matching entries in passwd file"
        ));
    }
    if !group_arg.is_empty() || matched_name.is_some() {
        let gid_arg = group_arg.parse::<u32>().ok();
        let mut groups = Vec::new();
        for line in group.unwrap_or(b"").split(|&c| c == b'\n') {
            let line = String::from_utf8_lossy(line);
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                continue;
            }
            let Ok(gid) = f[2].parse::<u32>() else {
                continue;
            };
            let hit = if group_arg.is_empty() {
                let name = matched_name.as_deref().unwrap_or("");
                f[3].split(',').any(|m| m == name)
            } else if let Some(g) = gid_arg {
                gid == g
            } else {
                f[0] == group_arg
            };
            if hit {
                groups.push(gid);
            }
        }
        if !group_arg.is_empty() {
            match (groups.first(), gid_arg) {
                (Some(&g), _) => out.gid = g,
                (None, Some(g)) => out.gid = g,
                (None, None) => {
                    return Err(format!(
                        "unable to find group {group_arg}: no matching entries in group file"
                    ))
                }
            }
        } else {
            out.sgids = groups;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n";
    const GROUP: &[u8] = b"root:x:0:\nappgrp:x:1001:\nwheel:x:10:app,other\naudio:x:29:app\n";

    #[test]
    fn resolves_users_like_runc() {
        let u = resolve_user("", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_deref()), (0, 0, Some("/root")));
        let u = resolve_user("app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid, u.sgids.clone()), (1000, 1001, vec![10, 29]));
        let u = resolve_user("app:wheel", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((u.uid, u.gid, u.sgids.len()), (1000, 10, 0));
        let u = resolve_user("1234:55", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home), (1234, 55, None));
        assert!(resolve_user("nobody", Some(PASSWD), Some(GROUP)).is_err());
        assert!(resolve_user("app:nogroup", Some(PASSWD), Some(GROUP)).is_err());
    }
}
