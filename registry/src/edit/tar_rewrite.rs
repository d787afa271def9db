//! The streaming layer rewrite: one pass over a layer's tar, copying every
//! untouched entry byte for byte (extension headers, header, data,
//! padding), applying a [`ChangeSet`]:
//!
//! * **put**: the first entry at the path is replaced in place by the new
//!   file (later entries at the same path are dropped, since they would
//!   override it); a path the layer does not have is appended at the end.
//!   Parent directories the image lacks are written just before the file.
//! * **remove**: entries at the path and under it are dropped. No whiteout
//!   is written: lower layers' content at the path shows through.
//! * A hard link whose target was removed would break extraction. Its
//!   target's content is set aside while the target is dropped (the
//!   [`ChangeSet::spool`] set, found by a pre-scan) and the first such link
//!   becomes a regular file with it; later links to the same target point
//!   at that file. Removing a path thus removes a name, not other names of
//!   the same file.
//!
//! The trailer is two zero blocks; whatever padding the original had after
//! its end marker is not kept.

use super::stream::Scratch;
use super::tar::{
    normalize_layer_path, write_end, write_header, write_padding, NewEntry, NewKind, RawEntry,
    TarReader,
};
use anyhow::{bail, Context};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// A file to write into the layer.
#[derive(Debug, Clone)]
pub struct Put {
    /// Header of the new entry (kind [`NewKind::File`] with the source's size).
    pub entry: NewEntry,
    /// Where the content comes from (read at most `size` bytes; fewer is an error).
    pub source: PathBuf,
    /// Directories to create first (none of them exists in the image).
    pub parents: Vec<NewEntry>,
}

/// The changes to apply to one layer.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// Normalised paths removed with everything under them.
    pub removes: HashSet<Vec<u8>>,
    /// Files written (one per path).
    pub puts: Vec<Put>,
    /// Removed regular files whose content kept hard links of the layer need.
    pub spool: HashSet<Vec<u8>>,
}

impl ChangeSet {
    /// Whether `path` is at or under a removed path.
    pub fn is_removed(&self, path: &[u8]) -> bool {
        if self.removes.is_empty() {
            return false;
        }
        self.removes.contains(path)
            || path
                .iter()
                .enumerate()
                .any(|(i, &c)| c == b'/' && self.removes.contains(&path[..i]))
    }
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteStats {
    /// Entries copied unchanged.
    pub kept: u64,
    /// Entries replaced in place by a put.
    pub replaced: u64,
    /// Puts appended at the end.
    pub added: u64,
    /// Entries dropped.
    pub removed: u64,
    /// Parent directories created.
    pub created_dirs: u64,
    /// Hard links rewritten because their target was removed.
    pub relinked: u64,
}

struct Spooled {
    file: PathBuf,
    entry: NewEntry,
}

/// Copy the tar read by `input` to `out` with `changes` applied. `strict`
/// rejects entries whose path or hard-link target escapes the root (for
/// tars given by a user); otherwise such entries are copied untouched.
/// `scratch` holds spooled hard-link targets (needed only when
/// `changes.spool` is not empty).
pub fn rewrite<R: Read>(
    input: &mut TarReader<R>,
    out: &mut dyn Write,
    changes: &ChangeSet,
    scratch: Option<&Scratch>,
    strict: bool,
) -> anyhow::Result<RewriteStats> {
    let mut stats = RewriteStats::default();
    let put_index: HashMap<&[u8], usize> = changes
        .puts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.entry.path.as_slice(), i))
        .collect();
    let mut put_done = vec![false; changes.puts.len()];
    let mut dirs_done: HashSet<Vec<u8>> = HashSet::new();
    let mut spooled: HashMap<Vec<u8>, Spooled> = HashMap::new();
    let mut relinked: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();

    while let Some(e) = input.next_entry()? {
        if e.is_global() {
            copy_entry(input, out, &e)?;
            stats.kept += 1;
            continue;
        }
        let path = match normalize_layer_path(&e.path) {
            Ok(Some(p)) => p,
            Ok(None) => {
                copy_entry(input, out, &e)?;
                stats.kept += 1;
                continue;
            }
            Err(err) if strict => bail!("tar entry {:?}: {err}", String::from_utf8_lossy(&e.path)),
            Err(_) => {
                copy_entry(input, out, &e)?;
                stats.kept += 1;
                continue;
            }
        };
        let link_target = if e.typ == b'1' {
            match normalize_layer_path(&e.link) {
                Ok(Some(t)) => Some(t),
                Ok(None) | Err(_) if strict => bail!(
                    "tar entry {:?}: hard link to {:?} outside the layer",
                    String::from_utf8_lossy(&e.path),
                    String::from_utf8_lossy(&e.link)
                ),
                _ => None,
            }
        } else {
            None
        };

        if let Some(&i) = put_index.get(path.as_slice()) {
            if !put_done[i] {
                emit_put(out, &changes.puts[i], &mut dirs_done, &mut stats)?;
                put_done[i] = true;
                stats.replaced += 1;
            } else {
                stats.removed += 1;
            }
            continue;
        }
        if changes.is_removed(&path) {
            if changes.spool.contains(&path) && matches!(e.typ, b'0' | 0 | b'7') {
                let scratch = scratch
                    .context("a scratch directory is needed to keep a removed hard-link target")?;
                let file = scratch.file("spool");
                let mut f = File::create(&file)?;
                input.copy_content(&mut f)?;
                let entry = NewEntry::like(&e, path.clone(), NewKind::File { size: e.size });
                spooled.insert(path, Spooled { file, entry });
            }
            stats.removed += 1;
            continue;
        }
        if let Some(target) = link_target {
            if let Some(new_target) = relinked.get(&target) {
                write_header(
                    out,
                    &NewEntry::like(&e, path, NewKind::HardLink(new_target.clone())),
                )?;
                stats.relinked += 1;
                continue;
            }
            if let Some(sp) = spooled.remove(&target) {
                let mut entry = sp.entry;
                entry.path = path.clone();
                let size = match entry.kind {
                    NewKind::File { size } => size,
                    _ => 0,
                };
                write_header(out, &entry)?;
                copy_exact(&sp.file, size, out)?;
                write_padding(out, size)?;
                let _ = std::fs::remove_file(&sp.file);
                relinked.insert(target, path);
                stats.relinked += 1;
                continue;
            }
        }
        copy_entry(input, out, &e)?;
        stats.kept += 1;
    }
    for (i, put) in changes.puts.iter().enumerate() {
        if !put_done[i] {
            emit_put(out, put, &mut dirs_done, &mut stats)?;
            stats.added += 1;
        }
    }
    write_end(out)?;
    Ok(stats)
}

fn copy_entry<R: Read>(
    input: &mut TarReader<R>,
    out: &mut dyn Write,
    e: &RawEntry,
) -> io::Result<()> {
    out.write_all(&e.ext)?;
    out.write_all(&e.header)?;
    input.copy_raw(out)
}

fn emit_put(
    out: &mut dyn Write,
    put: &Put,
    dirs_done: &mut HashSet<Vec<u8>>,
    stats: &mut RewriteStats,
) -> anyhow::Result<()> {
    for dir in &put.parents {
        if dirs_done.insert(dir.path.clone()) {
            write_header(out, dir)?;
            stats.created_dirs += 1;
        }
    }
    let size = match put.entry.kind {
        NewKind::File { size } => size,
        _ => 0,
    };
    write_header(out, &put.entry)?;
    copy_exact(&put.source, size, out)?;
    write_padding(out, size)?;
    Ok(())
}

/// Copy exactly `size` bytes of the file at `path` to `out`.
pub(crate) fn copy_exact(
    path: &std::path::Path,
    size: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n =
        io::copy(&mut f.take(size), out).with_context(|| format!("reading {}", path.display()))?;
    if n != size {
        bail!(
            "{} shrank while being read ({n} of {size} bytes)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::tar::Kind;

    fn builder() -> tar::Builder<Vec<u8>> {
        tar::Builder::new(Vec::new())
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        b.append_data(&mut h, path, &[][..]).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Link);
        b.append_link(&mut h, path, target).unwrap();
    }

    /// Path, kind, link target, content, raw bytes.
    type Seen = (String, Kind, String, Vec<u8>, Vec<u8>);

    /// Every entry of a tar.
    fn entries(tar: &[u8]) -> Vec<Seen> {
        let mut r = TarReader::new(tar);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut data = Vec::new();
            r.copy_content(&mut data).unwrap();
            let mut raw = e.ext.clone();
            raw.extend_from_slice(&e.header);
            raw.extend_from_slice(&data);
            out.push((
                String::from_utf8_lossy(&e.path).into_owned(),
                e.kind(),
                String::from_utf8_lossy(&e.link).into_owned(),
                data,
                raw,
            ));
        }
        out
    }

    fn run(
        input: &[u8],
        changes: &ChangeSet,
        scratch: Option<&Scratch>,
    ) -> (Vec<u8>, RewriteStats) {
        let mut out = Vec::new();
        let stats = rewrite(
            &mut TarReader::new(input),
            &mut out,
            changes,
            scratch,
            false,
        )
        .unwrap();
        // The tar crate (an independent reader) must accept the result.
        let mut ar = tar::Archive::new(&out[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            io::copy(&mut e, &mut io::sink()).unwrap();
        }
        (out, stats)
    }

    fn put(dir: &std::path::Path, path: &str, data: &[u8]) -> Put {
        let source = dir.join(path.replace('/', "_"));
        std::fs::write(&source, data).unwrap();
        Put {
            entry: NewEntry {
                path: path.as_bytes().to_vec(),
                kind: NewKind::File {
                    size: data.len() as u64,
                },
                mode: 0o600,
                uid: 7,
                gid: 8,
                mtime: 12345,
                uname: Vec::new(),
                gname: Vec::new(),
                xattrs: Vec::new(),
            },
            source,
            parents: Vec::new(),
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = builder();
        dir(&mut b, "etc/");
        file(&mut b, "etc/motd", b"old motd\n");
        // A long name (GNU long-name extension) and a PAX xattr entry.
        let long = format!("usr/share/{}/file.txt", "x".repeat(150));
        file(&mut b, &long, b"long");
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_pax_extensions([("SCHILY.xattr.user.color", &b"blue"[..])])
            .unwrap();
        b.append_data(&mut h, "etc/xattr", &b"xa\n"[..]).unwrap();
        dir(&mut b, "opt/");
        dir(&mut b, "opt/app/");
        file(&mut b, "opt/app/bin", b"binary");
        file(&mut b, "opt/app/lib", b"library");
        file(&mut b, "zz", b"last");
        b.into_inner().unwrap()
    }

    #[test]
    fn put_replaces_in_place_and_keeps_other_entries_byte_identical() {
        let tmp = tempfile::tempdir().unwrap();
        let input = sample();
        let mut cs = ChangeSet::default();
        cs.puts.push(put(tmp.path(), "etc/motd", b"new motd\n"));
        let (out, stats) = run(&input, &cs, None);
        assert_eq!(stats.replaced, 1);
        assert_eq!(stats.added, 0);
        let before = entries(&input);
        let after = entries(&out);
        assert_eq!(before.len(), after.len());
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_eq!(a.0, b.0, "entry {i} keeps its position");
            if a.0 == "etc/motd" {
                assert_eq!(a.3, b"new motd\n");
            } else {
                assert_eq!(a.4, b.4, "entry {} is byte-identical", a.0);
            }
        }
        // The replaced entry carries the new metadata.
        let mut ar = tar::Archive::new(&out[..]);
        let e = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| &*e.path_bytes() == b"etc/motd")
            .unwrap();
        assert_eq!(e.header().mode().unwrap(), 0o600);
        assert_eq!(e.header().uid().unwrap(), 7);
        assert_eq!(e.header().mtime().unwrap(), 12345);
    }

    #[test]
    fn put_new_path_is_appended_with_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let input = sample();
        let mut cs = ChangeSet::default();
        let mut p = put(tmp.path(), "srv/data/new.txt", b"fresh");
        p.parents = vec![
            NewEntry::dir(b"srv".to_vec(), 5),
            NewEntry::dir(b"srv/data".to_vec(), 5),
        ];
        cs.puts.push(p);
        let (out, stats) = run(&input, &cs, None);
        assert_eq!((stats.added, stats.created_dirs), (1, 2));
        let after = entries(&out);
        let n = after.len();
        assert_eq!(after[n - 3].0, "srv/");
        assert_eq!(after[n - 3].1, Kind::Dir);
        assert_eq!(after[n - 2].0, "srv/data/");
        assert_eq!(after[n - 1].0, "srv/data/new.txt");
        assert_eq!(after[n - 1].3, b"fresh");
        assert_eq!(
            &after[..n - 3].iter().map(|e| &e.4).collect::<Vec<_>>(),
            &entries(&input).iter().map(|e| &e.4).collect::<Vec<_>>()
        );
    }

    #[test]
    fn remove_directory_takes_everything_under_it() {
        let input = sample();
        let mut cs = ChangeSet::default();
        cs.removes.insert(b"opt/app".to_vec());
        let (out, stats) = run(&input, &cs, None);
        assert_eq!(stats.removed, 3);
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        assert!(names.contains(&"opt/".to_owned()));
        assert!(!names.iter().any(|n| n.starts_with("opt/app")), "{names:?}");
        assert!(names.contains(&"zz".to_owned()));
        // Long names and PAX xattrs of untouched entries survive exactly.
        let kept: Vec<Vec<u8>> = entries(&out).into_iter().map(|e| e.4).collect();
        for e in entries(&input) {
            if !e.0.starts_with("opt/app") {
                assert!(kept.contains(&e.4), "{} kept byte for byte", e.0);
            }
        }
        let mut ar = tar::Archive::new(&out[..]);
        let mut found = false;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if &*e.path_bytes() == b"etc/xattr" {
                let x: Vec<_> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|x| x.unwrap().value_bytes().to_vec())
                    .collect();
                assert_eq!(x, vec![b"blue".to_vec()]);
                found = true;
            }
        }
        assert!(found);
    }

    #[test]
    fn removed_hard_link_target_moves_to_first_link() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(tmp.path(), "s-").unwrap();
        let mut b = builder();
        file(&mut b, "a", b"shared content");
        link(&mut b, "b", "a");
        link(&mut b, "c", "./a");
        let input = b.into_inner().unwrap();
        let mut cs = ChangeSet::default();
        cs.removes.insert(b"a".to_vec());
        cs.spool.insert(b"a".to_vec());
        let (out, stats) = run(&input, &cs, Some(&scratch));
        assert_eq!(stats.relinked, 2);
        let after = entries(&out);
        assert_eq!(after.len(), 2);
        assert_eq!(
            (after[0].0.as_str(), after[0].1, after[0].3.as_slice()),
            ("b", Kind::File, &b"shared content"[..])
        );
        assert_eq!(
            (after[1].0.as_str(), after[1].1, after[1].2.as_str()),
            ("c", Kind::HardLink, "b")
        );
    }

    #[test]
    fn strict_mode_rejects_escaping_entries() {
        let mut b = builder();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_ustar_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let input = b.into_inner().unwrap();
        let err = rewrite(
            &mut TarReader::new(&input[..]),
            &mut Vec::new(),
            &ChangeSet::default(),
            None,
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        // Lenient mode copies it untouched.
        let (out, _) = run(&input, &ChangeSet::default(), None);
        assert_eq!(&out[..512], &input[..512]);
    }

    #[test]
    fn duplicate_entries_of_a_put_path_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = builder();
        file(&mut b, "f", b"one");
        file(&mut b, "f", b"two");
        let input = b.into_inner().unwrap();
        let mut cs = ChangeSet::default();
        cs.puts.push(put(tmp.path(), "f", b"three"));
        let (out, _) = run(&input, &cs, None);
        let after = entries(&out);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].3, b"three");
    }
}
