//! File-system primitives that never follow symlinks.
//!
//! Everything here works relative to an open directory (`*at` system calls
//! through `rustix`): directories are opened one component at a time with
//! `O_NOFOLLOW | O_DIRECTORY`, so a symlink planted anywhere in a tree can
//! never redirect a write outside it. Metadata is applied in the order that
//! keeps it intact: owner (which clears set-id bits), mode, xattrs (which a
//! chown may clear), times last.

use crate::tar::{Header, Time};
use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Flags to open a directory without following a symlink.
pub const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Size of the copy buffers (one at a time; the agent is single-threaded).
pub const COPY_BUF: usize = 64 * 1024;

/// xattrs under this prefix belong to overlayfs: never taken from an
/// archive, never copied into a rootfs.
pub const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// The overlayfs opaque-directory xattr.
pub const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// xattrs under this prefix are the store's own marks: like
/// `trusted.overlay.*`, never taken from an archive, never copied into a
/// rootfs.
pub const LAYERLINK_XATTR_PREFIX: &[u8] = b"trusted.layerlink.";
/// Marks a directory of a stored layer that the layer's tar does not list
/// (it only holds paths below it). Its metadata is not the layer's own, so
/// checkout keeps what the layers below it *in the image being checked out*
/// gave that directory (issue 18: a layer restacked by an edit).
pub const IMPLIED_DIR: &[u8] = b"trusted.layerlink.implied";

/// Whether xattr `name` belongs to overlayfs or to the store.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(OVERLAY_XATTR_PREFIX) || name.starts_with(LAYERLINK_XATTR_PREFIX)
}

/// Mark directory `fd` as implied ([`IMPLIED_DIR`]).
pub fn mark_implied(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    fs::fsetxattr(fd, IMPLIED_DIR, b"y", XattrFlags::empty())
}

/// Remove the [`IMPLIED_DIR`] mark (absent is fine).
pub fn clear_implied(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    match fs::fremovexattr(fd, IMPLIED_DIR) {
        Ok(()) | Err(Errno::NODATA) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether directory `fd` carries the [`IMPLIED_DIR`] mark.
pub fn is_implied(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 1];
    matches!(fs::fgetxattr(fd, IMPLIED_DIR, &mut b[..]), Ok(1) if b[0] == b'y')
}

/// Mark directory `fd` opaque for overlayfs (`trusted.overlay.opaque=y`).
pub fn set_opaque(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    fs::fsetxattr(fd, OVERLAY_OPAQUE, b"y", XattrFlags::empty())
}

/// Whether directory `fd` is opaque for overlayfs.
pub fn has_opaque(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 4];
    matches!(fs::fgetxattr(fd, OVERLAY_OPAQUE, &mut b[..]), Ok(1) if b[0] == b'y')
}

/// Extended attributes: (name, value) pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The metadata a hard link shares: what makes an object *variant*.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (access time is set equal).
    pub mtime: Time,
    /// Extended attributes, sorted by name, without `trusted.overlay.*`.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// The metadata an archive entry asks for.
    pub fn from_header(h: &Header) -> Meta {
        let mut xattrs: Vec<_> = h
            .xattrs
            .iter()
            .filter(|(n, _)| !is_private_xattr(n))
            .cloned()
            .collect();
        xattrs.sort();
        Meta {
            mode: h.mode & 0o7777,
            uid: h.uid,
            gid: h.gid,
            mtime: h.mtime,
            xattrs,
        }
    }

    /// Metadata of an existing inode (`xattrs` read separately; the host's
    /// `trusted.overlay.*` marks are dropped, as in [`Meta::xattrs`]).
    #[allow(clippy::unnecessary_cast)] // the stat field types differ per target
    pub fn from_stat(st: &Stat, mut xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Meta {
        xattrs.retain(|(n, _)| !is_private_xattr(n));
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: Time {
                sec: st.st_mtime as i64,
                nsec: st.st_mtime_nsec as u32,
            },
            xattrs,
        }
    }

    /// Whether `st` has this mode, owner and mtime (xattrs not compared).
    #[allow(clippy::unnecessary_cast)] // the stat field types differ per target
    pub fn matches_stat(&self, st: &Stat) -> bool {
        st.st_mode & 0o7777 == self.mode
            && st.st_uid == self.uid
            && st.st_gid == self.gid
            && st.st_mtime as i64 == self.mtime.sec
            && st.st_mtime_nsec as u32 == self.mtime.nsec
    }

    /// The variant key: 16 hex characters of a sha256 over mode, owner,
    /// mtime and xattrs.
    pub fn vkey(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.mode.to_le_bytes());
        h.update(self.uid.to_le_bytes());
        h.update(self.gid.to_le_bytes());
        h.update(self.mtime.sec.to_le_bytes());
        h.update(self.mtime.nsec.to_le_bytes());
        for (n, v) in &self.xattrs {
            h.update((n.len() as u64).to_le_bytes());
            h.update(n);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
        let d = h.finalize();
        let mut s = String::with_capacity(16);
        for b in &d[..8] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn timestamps(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime.sec,
            tv_nsec: self.mtime.nsec as _,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

/// The file type of a `stat` result.
pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Whether `st` is an overlayfs whiteout (character device 0:0).
pub fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Open a directory by absolute or relative path (following symlinks: for
/// paths given by the operator, such as the store root).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open the directory `name` in `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    fs::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// Open an existing directory below `root` (a `/`-separated relative path,
/// empty for `root` itself) one component at a time, without creating or
/// following anything.
pub fn open_existing_dir(root: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, String> {
    let mut cur = open_dir_at(root, b".").map_err(|e| e.to_string())?;
    if path.is_empty() {
        return Ok(cur);
    }
    for comp in path.split(|&c| c == b'/') {
        cur = match open_dir_at(cur.as_fd(), comp) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(format!("{:?} does not exist", show(path))),
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                return Err(format!(
                    "{:?} is not a directory (or goes through a symlink)",
                    show(path)
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
    }
    Ok(cur)
}

/// `lstat` of `name` in `dir`; `None` when absent.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Stat>, Errno> {
    match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove `name` from `dir` whatever it is, recursively for directories,
/// never following symlinks. Returns whether something was removed.
pub fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<bool, Errno> {
    match fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            // EPERM is what unlink(2) of a directory returns on Linux.
            match lstat_at(dir, name)? {
                Some(st) if file_type(&st) == FileType::Directory => {
                    let sub = open_dir_at(dir, name)?;
                    clear_dir(sub.as_fd())?;
                    drop(sub);
                    fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
                    Ok(true)
                }
                Some(_) => Err(Errno::PERM),
                None => Ok(false),
            }
        }
        Err(e) => Err(e),
    }
}

/// Remove everything inside the directory `dir`.
pub fn clear_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    loop {
        // Re-read after each batch of removals: deleting while iterating a
        // directory stream may skip entries.
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut d = fs::Dir::read_from(dir)?;
        while let Some(ent) = d.read() {
            let ent = ent?;
            let n = ent.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            names.push(n.to_vec());
            if names.len() >= 256 {
                break;
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        for n in &names {
            remove_at(dir, n)?;
        }
    }
}

/// List the names in directory `dir` (excluding `.` and `..`), calling `f`
/// for each with its `d_type`.
pub fn for_each_entry(
    dir: BorrowedFd<'_>,
    mut f: impl FnMut(&[u8], FileType) -> crate::error::Result<()>,
) -> crate::error::Result<()> {
    let mut d =
        fs::Dir::read_from(dir).map_err(|e| crate::Error::errno("reading a directory", e))?;
    while let Some(ent) = d.read() {
        let ent = ent.map_err(|e| crate::Error::errno("reading a directory", e))?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        f(n, ent.file_type())?;
    }
    Ok(())
}

fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

/// Read all xattrs of an open file.
pub fn read_xattrs_fd(fd: BorrowedFd<'_>) -> Result<Xattrs, Errno> {
    read_xattrs_with(
        |buf| fs::flistxattr(fd, buf),
        |name, buf| fs::fgetxattr(fd, name, buf),
    )
}

/// Read all xattrs of `name` in `dir` without following a symlink.
pub fn read_xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Xattrs, Errno> {
    let p = proc_path(dir, name);
    read_xattrs_with(
        |buf| fs::llistxattr(p.as_slice(), buf),
        |n, buf| fs::lgetxattr(p.as_slice(), n, buf),
    )
}

fn read_xattrs_with(
    list: impl Fn(&mut [u8]) -> Result<usize, Errno>,
    get: impl Fn(&[u8], &mut [u8]) -> Result<usize, Errno>,
) -> Result<Xattrs, Errno> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match list(&mut buf) {
            Ok(n) => break n,
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    let names = buf[..n].to_vec();
    let mut out = Vec::new();
    for name in names.split(|&c| c == 0).filter(|n| !n.is_empty()) {
        let mut val = vec![0u8; 256];
        let len = loop {
            match get(name, &mut val) {
                Ok(l) => break l,
                Err(Errno::RANGE) if val.len() < 1 << 20 => val.resize(val.len() * 4, 0),
                Err(e) => return Err(e),
            }
        };
        val.truncate(len);
        out.push((name.to_vec(), val));
    }
    out.sort();
    Ok(out)
}

/// Set `want` on an open file; with `clear`, first remove other xattrs
/// (except `trusted.overlay.*` and `security.selinux`, which belong to the
/// host).
pub fn set_xattrs_fd(
    fd: BorrowedFd<'_>,
    want: &[(Vec<u8>, Vec<u8>)],
    clear: bool,
) -> Result<(), Errno> {
    if clear {
        for (n, _) in read_xattrs_fd(fd)? {
            if is_private_xattr(&n) || n == b"security.selinux" {
                continue;
            }
            if !want.iter().any(|(w, _)| *w == n) {
                fs::fremovexattr(fd, n.as_slice())?;
            }
        }
    }
    for (n, v) in want {
        fs::fsetxattr(fd, n.as_slice(), v, XattrFlags::empty())?;
    }
    Ok(())
}

/// Apply `meta` to an open regular file or directory.
pub fn set_meta_fd(fd: BorrowedFd<'_>, meta: &Meta, clear_xattrs: bool) -> Result<(), Errno> {
    fs::fchown(
        fd,
        Some(fs::Uid::from_raw(meta.uid)),
        Some(fs::Gid::from_raw(meta.gid)),
    )?;
    fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    set_xattrs_fd(fd, &meta.xattrs, clear_xattrs)?;
    fs::futimens(fd, &meta.timestamps())
}

/// Apply `meta` to `name` in `dir`, which is a symlink or a device node
/// (never opened, never followed).
pub fn set_meta_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
    ft: FileType,
) -> Result<(), Errno> {
    fs::chownat(
        dir,
        name,
        Some(fs::Uid::from_raw(meta.uid)),
        Some(fs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if ft != FileType::Symlink {
        fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
    }
    if !meta.xattrs.is_empty() {
        let p = proc_path(dir, name);
        for (n, v) in &meta.xattrs {
            fs::lsetxattr(p.as_slice(), n.as_slice(), v, XattrFlags::empty())?;
        }
    }
    set_times_at(dir, name, meta.mtime)
}

/// Set access and modification time of `name` in `dir` (not following).
pub fn set_times_at(dir: BorrowedFd<'_>, name: &[u8], t: Time) -> Result<(), Errno> {
    let ts = Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec as _,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
}

/// Create `name` in `dir` as a new file (`O_EXCL`, never following).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<File, Errno> {
    let fd = fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// Open `name` in `dir` for reading, refusing symlinks.
pub fn open_file_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<File, Errno> {
    let fd = fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Copy all data of `src` into the empty file `dst`: a reflink when the file
/// system can share extents, else an in-kernel copy, else a buffered copy.
pub fn copy_data(src: &File, dst: &File) -> io::Result<u64> {
    let len = src.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    if fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(len);
    }
    let mut off_in = 0u64;
    let mut off_out = 0u64;
    let mut kernel_ok = true;
    while off_in < len {
        let want = (len - off_in).min(1 << 30) as usize;
        match fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP)
                if off_in == 0 =>
            {
                kernel_ok = false;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if kernel_ok && off_in == len {
        return Ok(len);
    }
    let mut buf = vec![0u8; COPY_BUF];
    let mut r = src;
    let mut w = dst;
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}

/// Write `data` to `dir/name` atomically: temp file, fsync, rename, fsync
/// the directory.
pub fn write_atomic(dir: BorrowedFd<'_>, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = format!(".{name}.tmp");
    let _ = fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    let mut f = create_file_at(dir, tmp.as_bytes(), 0o600)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::renameat(dir, tmp.as_str(), dir, name)?;
    fs::fsync(dir)?;
    Ok(())
}

/// Read a whole small file (`limit` bytes at most).
pub fn read_small(dir: BorrowedFd<'_>, name: &[u8], limit: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match open_file_at(dir, name) {
        Ok(f) => f,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut data = Vec::new();
    f.take(limit + 1).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
    }
    Ok(Some(data))
}

/// Bytes available to unprivileged writers on the file system of `fd`
/// (root may use reserved blocks too, but the agent does not count on it).
pub fn free_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let s = fs::fstatvfs(fd)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Split a normalised path into its parent components and leaf name.
pub fn split_leaf(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    }
}

/// Render a byte path for messages (lossy UTF-8).
pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}
