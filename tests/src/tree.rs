//! Compare two directory trees as a container runtime would see them.
//!
//! This is the oracle of the sync tests: the agent's checkout must equal
//! what `umoci unpack` makes of the same image. Symlinks are never followed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Extended attributes never compared (set by the host, not the image).
const IGNORED_XATTRS: &[&str] = &["security.selinux"];

/// One way two trees differ at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Path relative to the tree roots (`.` is the root itself).
    pub path: PathBuf,
    /// What differs: `missing`, `type`, `content`, `mode`, `uid`, `gid`,
    /// `mtime`, `symlink target`, `device`, `xattrs`.
    pub what: &'static str,
    /// The left tree's value.
    pub left: String,
    /// The right tree's value.
    pub right: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} differs: left {} / right {}",
            self.path.display(),
            self.what,
            self.left,
            self.right
        )
    }
}

/// What kind of file an entry is.
fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_char_device() {
        "char device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut map = BTreeMap::new();
    // `xattr::list`/`get` do not follow symlinks.
    let Ok(names) = xattr::list(path) else {
        return map;
    };
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if IGNORED_XATTRS.contains(&name.as_str()) {
            continue;
        }
        let value = xattr::get(path, &name).ok().flatten().unwrap_or_default();
        map.insert(name, value);
    }
    map
}

fn show_xattrs(map: &BTreeMap<String, Vec<u8>>) -> String {
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={:?}", String::from_utf8_lossy(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn sorted_names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    names.sort();
    names
}

/// Compare the trees under `left` and `right`: paths, file types, content
/// (sha256), mode (incl. setuid/setgid/sticky), uid, gid, mtime (seconds;
/// a symlink's own), symlink targets, device numbers and xattrs (all
/// listable namespaces except `security.selinux`). The roots themselves are
/// compared too. Link counts are not: a checkout may share inodes more.
pub fn compare_trees(left: &Path, right: &Path) -> Vec<Difference> {
    let mut diffs = Vec::new();
    compare_entry(left, right, Path::new("."), &mut diffs);
    diffs
}

fn compare_entry(left: &Path, right: &Path, rel: &Path, diffs: &mut Vec<Difference>) {
    let lp = left.join(rel);
    let rp = right.join(rel);
    let lm = std::fs::symlink_metadata(&lp);
    let rm = std::fs::symlink_metadata(&rp);
    let mut push = |what: &'static str, l: String, r: String| {
        diffs.push(Difference {
            path: rel.to_path_buf(),
            what,
            left: l,
            right: r,
        });
    };
    let (lm, rm) = match (lm, rm) {
        (Ok(l), Ok(r)) => (l, r),
        (Ok(l), Err(_)) => return push("missing", kind(&l).into(), "absent".into()),
        (Err(_), Ok(r)) => return push("missing", "absent".into(), kind(&r).into()),
        (Err(_), Err(_)) => return push("missing", "absent".into(), "absent".into()),
    };
    let (lk, rk) = (kind(&lm), kind(&rm));
    if lk != rk {
        return push("type", lk.into(), rk.into());
    }
    if lm.mode() != rm.mode() {
        push(
            "mode",
            format!("{:o}", lm.mode()),
            format!("{:o}", rm.mode()),
        );
    }
    if lm.uid() != rm.uid() {
        push("uid", lm.uid().to_string(), rm.uid().to_string());
    }
    if lm.gid() != rm.gid() {
        push("gid", lm.gid().to_string(), rm.gid().to_string());
    }
    if lm.mtime() != rm.mtime() {
        push("mtime", lm.mtime().to_string(), rm.mtime().to_string());
    }
    let (lx, rx) = (xattrs(&lp), xattrs(&rp));
    if lx != rx {
        push("xattrs", show_xattrs(&lx), show_xattrs(&rx));
    }
    match lk {
        "file" => {
            if lm.len() != rm.len() {
                push(
                    "content",
                    format!("{} bytes", lm.len()),
                    format!("{} bytes", rm.len()),
                );
            } else {
                let lh = crate::sha256_file(&lp).unwrap_or_else(|e| format!("unreadable: {e}"));
                let rh = crate::sha256_file(&rp).unwrap_or_else(|e| format!("unreadable: {e}"));
                if lh != rh {
                    push("content", lh, rh);
                }
            }
        }
        "symlink" => {
            let lt = std::fs::read_link(&lp).map(|t| t.display().to_string());
            let rt = std::fs::read_link(&rp).map(|t| t.display().to_string());
            let (lt, rt) = (format!("{lt:?}"), format!("{rt:?}"));
            if lt != rt {
                push("symlink target", lt, rt);
            }
        }
        "char device" | "block device" if lm.rdev() != rm.rdev() => {
            push(
                "device",
                format!("{:#x}", lm.rdev()),
                format!("{:#x}", rm.rdev()),
            );
        }
        "dir" => {
            let ln = sorted_names(&lp);
            let rn = sorted_names(&rp);
            let (mut i, mut j) = (0, 0);
            while i < ln.len() || j < rn.len() {
                let next = match (ln.get(i), rn.get(j)) {
                    (Some(a), Some(b)) if a == b => {
                        i += 1;
                        j += 1;
                        a.clone()
                    }
                    (Some(a), Some(b)) if a < b => {
                        i += 1;
                        a.clone()
                    }
                    (Some(a), None) => {
                        i += 1;
                        a.clone()
                    }
                    (_, Some(b)) => {
                        j += 1;
                        b.clone()
                    }
                    (None, None) => unreachable!(),
                };
                compare_entry(left, right, &rel.join(next), diffs);
            }
        }
        _ => {}
    }
}

/// `Ok` when `diffs` is empty, else a one-line summary (count and the
/// first five) for harnesses that report instead of panicking.
pub fn differences_summary(diffs: &[Difference]) -> Result<(), String> {
    if diffs.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = diffs.iter().take(5).map(|d| d.to_string()).collect();
    Err(format!(
        "checkout differs from umoci in {} places: {}",
        diffs.len(),
        shown.join("; ")
    ))
}

/// Panic, listing the first differences, unless the trees are equal.
pub fn assert_trees_equal(left: &Path, right: &Path) {
    let diffs = compare_trees(left, right);
    if !diffs.is_empty() {
        let shown: Vec<String> = diffs.iter().take(25).map(|d| format!("  {d}")).collect();
        panic!(
            "trees differ: left {} / right {} ({} differences; first {}):\n{}",
            left.display(),
            right.display(),
            diffs.len(),
            shown.len(),
            shown.join("\n")
        );
    }
}
