//! The runtime-spec `config.json` of a bundle, generated from the image
//! config the way `umoci unpack` does (process, env, user, mounts,
//! namespaces, annotations).

use super::user::resolve_user;
use crate::error::{Error, Result};
use crate::fsops::{self, open_existing_dir};
use crate::json::{self, Value};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

/// Read a small file of the rootfs (e.g. `etc/passwd`) without following
/// symlinks anywhere; `None` when absent or not a plain file.
fn read_rootfs_file(rootfs: BorrowedFd<'_>, path: &[u8]) -> Option<Vec<u8>> {
    let (parent, leaf) = fsops::split_leaf(path);
    let dir = open_existing_dir(rootfs, parent).ok()?;
    let f = fsops::open_file_at(dir.as_fd(), leaf).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut data = Vec::new();
    f.take(4 * 1024 * 1024).read_to_end(&mut data).ok()?;
    Some(data)
}

fn strs(v: &[&str]) -> Value {
    Value::Arr(v.iter().map(|s| Value::str(*s)).collect())
}

/// The runtime-spec `config.json` for an image config, in umoci's shape.
pub fn runtime_spec(config_json: &[u8], rootfs: BorrowedFd<'_>, read_only: bool) -> Result<Value> {
    let image = json::parse(config_json)
        .map_err(|e| Error::integrity(format!("image config is not JSON: {e}")))?;
    let null = Value::Null;
    let c = image.get("config").unwrap_or(&null);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();

    let passwd = read_rootfs_file(rootfs, b"etc/passwd");
    let group = read_rootfs_file(rootfs, b"etc/group");
    let user_spec = text(c.get("User"));
    let user = resolve_user(&user_spec, passwd.as_deref(), group.as_deref())
        .map_err(|e| Error::Other(format!("cannot parse user spec '{user_spec}': {e}")))?;

    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("TERM".into(), "xterm".into()),
    ];
    let mut set_env = |k: &str, v: &str| match env.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for e in c.get("Env").map(Value::str_list).unwrap_or_default() {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => set_env(k, v),
            _ => {
                return Err(Error::integrity(format!(
                    "image config: bad environment variable {e:?}"
                )))
            }
        }
    }
    if let Some(h) = &user.home {
        set_env("HOME", h);
    }
    let mut args: Vec<String> = c.get("Entrypoint").map(Value::str_list).unwrap_or_default();
    args.extend(c.get("Cmd").map(Value::str_list).unwrap_or_default());
    if args.is_empty() {
        args.push("sh".into());
    }
    let cwd = match text(c.get("WorkingDir")) {
        s if s.is_empty() => "/".to_string(),
        s => s,
    };

    let mut user_obj = vec![
        ("uid".to_string(), Value::num(user.uid)),
        ("gid".to_string(), Value::num(user.gid)),
    ];
    if !user.sgids.is_empty() {
        user_obj.push((
            "additionalGids".into(),
            Value::Arr(user.sgids.iter().map(|g| Value::num(*g)).collect()),
        ));
    }
    let caps = strs(&["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let process = Value::obj([
        ("terminal", Value::Bool(true)),
        ("user", Value::Obj(user_obj)),
        (
            "args",
            Value::Arr(args.into_iter().map(Value::Str).collect()),
        ),
        (
            "env",
            Value::Arr(
                env.into_iter()
                    .map(|(k, v)| Value::Str(format!("{k}={v}")))
                    .collect(),
            ),
        ),
        ("cwd", Value::Str(cwd)),
        (
            "capabilities",
            Value::obj([
                ("bounding", caps.clone()),
                ("effective", caps.clone()),
                ("inheritable", caps.clone()),
                ("permitted", caps.clone()),
                ("ambient", caps),
            ]),
        ),
        (
            "rlimits",
            Value::Arr(vec![Value::obj([
                ("type", Value::str("RLIMIT_NOFILE")),
                ("hard", Value::num(1024)),
                ("soft", Value::num(1024)),
            ])]),
        ),
        ("noNewPrivileges", Value::Bool(true)),
    ]);
    let mut root = vec![("path".to_string(), Value::str("rootfs"))];
    if read_only {
        root.push(("readonly".into(), Value::Bool(true)));
    }
    let mount = |dest: &str, ty: &str, src: &str, opts: &[&str]| {
        let mut m = vec![
            ("destination".to_string(), Value::str(dest)),
            ("type".to_string(), Value::str(ty)),
            ("source".to_string(), Value::str(src)),
        ];
        if !opts.is_empty() {
            m.push(("options".into(), strs(opts)));
        }
        Value::Obj(m)
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ];
    let mut volumes: Vec<String> = match c.get("Volumes") {
        Some(Value::Obj(m)) => m.iter().map(|(k, _)| k.clone()).collect(),
        _ => Vec::new(),
    };
    volumes.sort();
    for v in volumes {
        mounts.push(mount(
            &v,
            "tmpfs",
            "none",
            &["rw", "nosuid", "nodev", "noexec", "relatime"],
        ));
    }

    let mut ann: Vec<(String, Value)> = match c.get("Labels") {
        Some(Value::Obj(m)) => m
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), Value::str(s))))
            .collect(),
        _ => Vec::new(),
    };
    let mut ports: Vec<String> = match c.get("ExposedPorts") {
        Some(Value::Obj(m)) => m.iter().map(|(k, _)| k.clone()).collect(),
        _ => Vec::new(),
    };
    ports.sort();
    for (k, v) in [
        (
            "org.opencontainers.image.architecture",
            text(image.get("architecture")),
        ),
        ("org.opencontainers.image.author", text(image.get("author"))),
        (
            "org.opencontainers.image.created",
            text(image.get("created")),
        ),
        ("org.opencontainers.image.exposedPorts", ports.join(",")),
        ("org.opencontainers.image.os", text(image.get("os"))),
        (
            "org.opencontainers.image.stopSignal",
            text(c.get("StopSignal")),
        ),
    ] {
        ann.retain(|(n, _)| n != k);
        ann.push((k.to_string(), Value::Str(v)));
    }
    ann.sort_by(|a, b| a.0.cmp(&b.0));

    let ns = |t: &str| Value::obj([("type", Value::str(t))]);
    let linux = Value::obj([
        (
            "resources",
            Value::obj([(
                "devices",
                Value::Arr(vec![Value::obj([
                    ("allow", Value::Bool(false)),
                    ("access", Value::str("rwm")),
                ])]),
            )]),
        ),
        (
            "namespaces",
            Value::Arr(vec![
                ns("pid"),
                ns("network"),
                ns("ipc"),
                ns("uts"),
                ns("mount"),
            ]),
        ),
        (
            "maskedPaths",
            strs(&[
                "/proc/kcore",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ]),
        ),
        (
            "readonlyPaths",
            strs(&[
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]),
        ),
    ]);
    Ok(Value::obj([
        ("ociVersion", Value::str("1.0.0")),
        ("process", process),
        ("root", Value::Obj(root)),
        ("hostname", Value::str("umoci-default")),
        ("mounts", Value::Arr(mounts)),
        ("annotations", Value::Obj(ann)),
        ("linux", linux),
    ]))
}
