//! A directory tree as a layer tar: walked in byte order of names, parents
//! before children, keeping mode, owner, mtime, symlink targets, devices,
//! FIFOs, extended attributes (except `security.selinux`, a label of the
//! build host, as umoci does) and hard links between files of the tree.
//! The root directory itself is not an entry (its mode would otherwise
//! become the image's `/`). Sockets are skipped with a warning.

use super::tar::{write_header, write_padding, NewEntry, NewKind};
use super::tar_rewrite::copy_exact;
use super::Warning;
use anyhow::Context;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Linux `major()` / `minor()` of a device number.
fn split_dev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// The extended attributes of `path` (not following a symlink), sorted.
fn read_xattrs(path: &Path) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        // A file system without xattrs has none to keep.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing xattrs of {}", path.display())),
    };
    let mut out = Vec::new();
    for name in names {
        let key = name.as_bytes().to_vec();
        if key == b"security.selinux" {
            continue;
        }
        if let Some(value) = xattr::get(path, &name)
            .with_context(|| format!("reading xattr of {}", path.display()))?
        {
            out.push((key, value));
        }
    }
    out.sort();
    Ok(out)
}

/// Write the tree under `root` as tar entries (no end marker) to `out`.
/// Returns the number of entries.
pub fn write_dir(
    root: &Path,
    out: &mut dyn Write,
    warnings: &mut Vec<Warning>,
) -> anyhow::Result<u64> {
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut count = 0;
    walk(root, &[], out, &mut links, warnings, &mut count)?;
    Ok(count)
}

fn walk(
    dir: &Path,
    rel: &[u8],
    out: &mut dyn Write,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
    warnings: &mut Vec<Warning>,
    count: &mut u64,
) -> anyhow::Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    children.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for child in children {
        let path = child.path();
        let mut name = rel.to_vec();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(child.file_name().as_bytes());
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let ft = meta.file_type();
        let mut entry = NewEntry {
            path: name.clone(),
            kind: NewKind::Dir,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: meta.mtime().max(0) as u64,
            uname: Vec::new(),
            gname: Vec::new(),
            xattrs: read_xattrs(&path)?,
        };
        let mut data = None;
        if ft.is_dir() {
            write_header(out, &entry)?;
            *count += 1;
            walk(&path, &name, out, links, warnings, count)?;
            continue;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&path).with_context(|| format!("reading link {}", path.display()))?;
            entry.kind = NewKind::Symlink(target.as_os_str().as_bytes().to_vec());
        } else if ft.is_socket() {
            warnings.push(Warning::Skipped {
                path: super::scan::show_path(&name),
                reason: "a socket".into(),
            });
            continue;
        } else if meta.nlink() > 1 && links.contains_key(&(meta.dev(), meta.ino())) {
            entry.kind = NewKind::HardLink(links[&(meta.dev(), meta.ino())].clone());
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                links.insert((meta.dev(), meta.ino()), name.clone());
            }
            entry.kind = NewKind::File { size: meta.len() };
            data = Some(meta.len());
        } else if ft.is_char_device() {
            let (ma, mi) = split_dev(meta.rdev());
            entry.kind = NewKind::Char(ma, mi);
        } else if ft.is_block_device() {
            let (ma, mi) = split_dev(meta.rdev());
            entry.kind = NewKind::Block(ma, mi);
        } else if ft.is_fifo() {
            entry.kind = NewKind::Fifo;
        } else {
            warnings.push(Warning::Skipped {
                path: super::scan::show_path(&name),
                reason: "unknown file type".into(),
            });
            continue;
        }
        write_header(out, &entry)?;
        if let Some(size) = data {
            copy_exact(&path, size, out)?;
            write_padding(out, size)?;
        }
        *count += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers() {
        // makedev(8, 1) and makedev(259, 65536) on Linux.
        assert_eq!(split_dev(0x801), (8, 1));
        let dev: u64 = 0x1001_0300;
        assert_eq!(split_dev(dev), (259, 65536));
    }
}
