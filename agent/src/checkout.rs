//! Turning a synced image into something a runtime runs.
//!
//! * [`checkout`] writes an OCI runtime bundle like `umoci unpack`:
//!   `DEST/config.json` generated from the image config, and `DEST/rootfs/`
//!   with the layers merged in order. Merging interprets the layer trees'
//!   overlayfs forms (whiteout = char device 0:0, opaque directory =
//!   `trusted.overlay.opaque=y`) with OCI semantics, and never follows a
//!   symlink: where the rootfs has a symlink (or file) and an upper layer has
//!   a directory, the directory replaces it.
//!   By default regular files are copied (reflinked where the file system
//!   can), so a writable rootfs never writes through into the store; with
//!   `read_only` they are hard links into the store (then mount it
//!   read-only). Intra-layer hard links become independent copies in copy
//!   mode: the store cannot tell them apart from equal files.
//! * [`lowerdir`] gives the overlayfs `lowerdir=` option for an image's
//!   committed layer directories.

use crate::apply::open_existing_dir;
use crate::error::{Error, Result};
use crate::fsops::{self, file_type, is_whiteout, show, Meta, OVERLAY_OPAQUE};
use crate::json::{self, Value};
use crate::store::record::{show_image_ref, ImageRecord};
use crate::store::Store;
use layerlink_proto::msg::ImageRef;
use rustix::fs::{self as rfs, FileType, Mode};
use rustix::io::Errno;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// Deepest directory nesting a checkout follows.
const MAX_DEPTH: usize = 1024;

/// The record of a synced image whose layers are all present.
pub fn synced_record(store: &Store, image: &ImageRef) -> Result<ImageRecord> {
    let rec = store.record(image)?.ok_or_else(|| {
        Error::Usage(format!(
            "image {} is not synced in {}",
            show_image_ref(image),
            store.root().display()
        ))
    })?;
    for l in &rec.layers {
        if !store.has_layer(l)? {
            return Err(Error::integrity(format!(
                "image {}: layer {l} is missing from the store (run sync again)",
                show_image_ref(image)
            )));
        }
    }
    Ok(rec)
}

/// The overlayfs `lowerdir=` option value for `image`: layer directories,
/// top layer first, `:`-separated (`\`-escaping `:`, `,` and `\`).
pub fn lowerdir(store: &Store, image: &ImageRef) -> Result<String> {
    let rec = synced_record(store, image)?;
    let mut parts = Vec::new();
    for l in rec.layers.iter().rev() {
        let p = store.layer_path(l);
        let abs = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("cwd", e))?
                .join(p)
        };
        let mut s = String::new();
        for c in abs.to_string_lossy().chars() {
            if matches!(c, ':' | ',' | '\\') {
                s.push('\\');
            }
            s.push(c);
        }
        parts.push(s);
    }
    Ok(format!("lowerdir={}", parts.join(":")))
}

/// Write an OCI runtime bundle for `image` into `dest` (created; must be
/// empty if it exists).
pub fn checkout(store: &Store, image: &ImageRef, dest: &Path, read_only: bool) -> Result<()> {
    let rec = synced_record(store, image)?;
    match rfs::mkdir(dest, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(Errno::EXIST) => {
            let mut empty = true;
            let fd = fsops::open_dir_path(dest)
                .map_err(|e| Error::io(format!("opening {}", dest.display()), e))?;
            fsops::for_each_entry(fd.as_fd(), |_, _| {
                empty = false;
                Ok(())
            })?;
            if !empty {
                return Err(Error::Usage(format!(
                    "{} exists and is not empty",
                    dest.display()
                )));
            }
        }
        Err(e) => return Err(Error::errno(format!("creating {}", dest.display()), e)),
    }
    let dest_fd = fsops::open_dir_path(dest)
        .map_err(|e| Error::io(format!("opening {}", dest.display()), e))?;
    rfs::mkdirat(&dest_fd, "rootfs", Mode::from_raw_mode(0o755))
        .map_err(|e| Error::errno(format!("creating {}/rootfs", dest.display()), e))?;
    let rootfs = fsops::open_dir_at(dest_fd.as_fd(), b"rootfs")
        .map_err(|e| Error::errno("opening rootfs", e))?;
    let mut m = Merger {
        read_only,
        copied: 0,
        linked: 0,
    };
    for (i, l) in rec.layers.iter().enumerate() {
        let layer = store.open_layer(l)?;
        // The bottom layer lands in an empty rootfs: nothing to replace.
        // A layer without a "./" entry leaves the root as the layers below
        // it made it (restored after its entries went in, as umoci does).
        let implied = fsops::is_implied(layer.as_fd());
        let below = if implied && i > 0 {
            Some(read_meta(rootfs.as_fd(), None)?)
        } else {
            None
        };
        m.merge(layer.as_fd(), rootfs.as_fd(), b"", 0, i == 0)?;
        let meta = match (implied, below) {
            (false, _) => Some(read_meta(layer.as_fd(), None)?),
            (true, below) => below,
        };
        if let Some(meta) = meta {
            apply_dir_meta(rootfs.as_fd(), &meta)
                .map_err(|e| Error::errno("metadata of rootfs", e))?;
        }
    }
    let spec = runtime_spec(&rec.config, rootfs.as_fd(), read_only)?;
    let text = spec.to_pretty();
    fsops::write_atomic(dest_fd.as_fd(), "config.json", text.as_bytes())
        .map_err(|e| Error::io(format!("writing {}/config.json", dest.display()), e))?;
    rfs::chmodat(
        &dest_fd,
        "config.json",
        Mode::from_raw_mode(0o644),
        rfs::AtFlags::empty(),
    )
    .map_err(|e| Error::errno("chmod config.json", e))?;
    Ok(())
}

struct Merger {
    read_only: bool,
    copied: u64,
    linked: u64,
}

/// Metadata of a directory (`name` in `dir`, or `dir` itself).
fn read_meta(dir: BorrowedFd<'_>, name: Option<&[u8]>) -> Result<Meta> {
    let (st, x) = match name {
        None => (
            rfs::fstat(dir).map_err(|e| Error::errno("stat", e))?,
            fsops::read_xattrs_fd(dir).map_err(|e| Error::errno("xattrs", e))?,
        ),
        Some(n) => (
            rfs::statat(dir, n, rfs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::errno("stat", e))?,
            fsops::read_xattrs_at(dir, n).map_err(|e| Error::errno("xattrs", e))?,
        ),
    };
    Ok(Meta::from_stat(&st, x))
}

fn apply_dir_meta(fd: BorrowedFd<'_>, meta: &Meta) -> std::result::Result<(), Errno> {
    fsops::set_meta_fd(fd, meta, true)
}

fn has_opaque(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 4];
    matches!(rfs::fgetxattr(fd, OVERLAY_OPAQUE, &mut b[..]), Ok(1) if b[0] == b'y')
}

impl Merger {
    /// Merge layer directory `src` onto rootfs directory `dst`; `fresh`
    /// when `dst` was just created empty (no lookups or removals needed).
    fn merge(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        path: &[u8],
        depth: usize,
        fresh: bool,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::integrity(format!(
                "{}: directories nested too deep",
                show(path)
            )));
        }
        let ctx = |p: &[u8], e: Errno| Error::errno(format!("checkout of {}", show(p)), e);
        if !fresh && has_opaque(src) {
            fsops::clear_dir(dst).map_err(|e| ctx(path, e))?;
        }
        let mut names = Vec::new();
        fsops::for_each_entry(src, |n, _| {
            names.push(n.to_vec());
            Ok(())
        })?;
        let mut sub = path.to_vec();
        for name in names {
            sub.truncate(path.len());
            if !sub.is_empty() {
                sub.push(b'/');
            }
            sub.extend_from_slice(&name);
            let Some(st) = fsops::lstat_at(src, &name).map_err(|e| ctx(&sub, e))? else {
                continue;
            };
            if is_whiteout(&st) {
                if !fresh {
                    fsops::remove_at(dst, &name).map_err(|e| ctx(&sub, e))?;
                }
                continue;
            }
            let ft = file_type(&st);
            if ft == FileType::Directory {
                let existing = if fresh {
                    None
                } else {
                    fsops::lstat_at(dst, &name).map_err(|e| ctx(&sub, e))?
                };
                let created = match existing {
                    Some(d) if file_type(&d) == FileType::Directory => false,
                    other => {
                        if other.is_some() {
                            fsops::remove_at(dst, &name).map_err(|e| ctx(&sub, e))?;
                        }
                        rfs::mkdirat(dst, name.as_slice(), Mode::from_raw_mode(0o700))
                            .map_err(|e| ctx(&sub, e))?;
                        true
                    }
                };
                let s = fsops::open_dir_at(src, &name).map_err(|e| ctx(&sub, e))?;
                let d = fsops::open_dir_at(dst, &name).map_err(|e| ctx(&sub, e))?;
                let implied = fsops::is_implied(s.as_fd());
                // Implied by this layer, made by a layer below: kept as it
                // was (restored after this layer's entries went in).
                let below = if implied && !created {
                    Some(read_meta(d.as_fd(), None)?)
                } else {
                    None
                };
                self.merge(s.as_fd(), d.as_fd(), &sub, depth + 1, created)?;
                if !implied {
                    // Listed by this layer: its metadata wins.
                    let meta = read_meta(s.as_fd(), None)?;
                    fsops::set_meta_fd(d.as_fd(), &meta, !created).map_err(|e| ctx(&sub, e))?;
                } else if let Some(meta) = below {
                    fsops::set_meta_fd(d.as_fd(), &meta, false).map_err(|e| ctx(&sub, e))?;
                } else {
                    // No layer below lists it: the metadata is not defined
                    // by the image. Like `umoci unpack` (MkdirAll): 0755,
                    // owned by the checkout's user, the time of the checkout.
                    rfs::fchmod(&d, Mode::from_raw_mode(0o755)).map_err(|e| ctx(&sub, e))?;
                }
                continue;
            }
            if !fresh {
                fsops::remove_at(dst, &name).map_err(|e| ctx(&sub, e))?;
            }
            match ft {
                FileType::RegularFile => {
                    if self.read_only {
                        match rfs::linkat(
                            src,
                            name.as_slice(),
                            dst,
                            name.as_slice(),
                            rfs::AtFlags::empty(),
                        ) {
                            Ok(()) => {
                                self.linked += 1;
                                continue;
                            }
                            Err(Errno::XDEV) | Err(Errno::MLINK) => {}
                            Err(e) => return Err(ctx(&sub, e)),
                        }
                    }
                    let from = fsops::open_file_at(src, &name).map_err(|e| ctx(&sub, e))?;
                    let to = fsops::create_file_at(dst, &name, 0o600).map_err(|e| ctx(&sub, e))?;
                    fsops::copy_data(&from, &to)
                        .map_err(|e| Error::io(format!("copying {}", show(&sub)), e))?;
                    let x = fsops::read_xattrs_fd(from.as_fd()).map_err(|e| ctx(&sub, e))?;
                    let meta = Meta::from_stat(&st, x);
                    fsops::set_meta_fd(to.as_fd(), &meta, false).map_err(|e| ctx(&sub, e))?;
                    self.copied += 1;
                }
                FileType::Symlink => {
                    let target = rfs::readlinkat(src, name.as_slice(), Vec::new())
                        .map_err(|e| ctx(&sub, e))?;
                    rfs::symlinkat(target.as_bytes(), dst, name.as_slice())
                        .map_err(|e| ctx(&sub, e))?;
                    let meta = read_meta(src, Some(&name))?;
                    fsops::set_meta_at(dst, &name, &meta, ft).map_err(|e| ctx(&sub, e))?;
                }
                FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                    rfs::mknodat(
                        dst,
                        name.as_slice(),
                        ft,
                        Mode::from_raw_mode(st.st_mode & 0o7777),
                        st.st_rdev,
                    )
                    .map_err(|e| ctx(&sub, e))?;
                    let meta = read_meta(src, Some(&name))?;
                    fsops::set_meta_at(dst, &name, &meta, ft).map_err(|e| ctx(&sub, e))?;
                }
                _ => {} // sockets and unknown types are not part of images
            }
        }
        Ok(())
    }
}

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
