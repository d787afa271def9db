//! Object variants: writing new content, finding or making a variant with
//! given metadata, and linking it into a layer tree.
//!
//! New objects (and local copies made for a new variant) are written to
//! `tmp/obj-<n>` and collected in a *batch*; [`ObjectWriter::flush`] syncs
//! the file system once for the whole batch and then renames every file
//! into `objects/`. So an object name never points at unsynced content,
//! and a layer of ten thousand small files costs a few `syncfs` calls rather
//! than ten thousand `fsync`s. Layer trees link to a batched object's inode
//! while it is still in `tmp/`; the rename does not change the inode.

use super::Store;
use crate::error::{Error, Result};
use crate::fsops::{self, show, Meta};
use layerlink_proto::Digest;
use rustix::fs::{self as rfs, AtFlags, Mode};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};

/// Flush the batch after this many files…
const BATCH_FILES: usize = 256;
/// …or this many bytes.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// …or when its first object is this old: on a slow link a power cut then
/// costs at most a few seconds of download, not a whole batch.
const BATCH_AGE: std::time::Duration = std::time::Duration::from_secs(5);
/// Most `.<n>` suffixes tried for one variant.
const MAX_SUFFIX: u32 = 1000;

struct Staged {
    /// `obj-<n>` in `tmp/`.
    tmp: String,
    /// `<2 hex>/<name>` in `objects/`.
    name: String,
}

/// Where a variant's inode can be linked from.
enum Loc<'a> {
    Tmp(&'a str),
    Obj(String),
}

/// Writes and links objects for one apply.
pub struct ObjectWriter<'s> {
    store: &'s Store,
    batch: Vec<Staged>,
    batch_bytes: u64,
    /// When the first object of the batch was staged.
    batch_started: Option<std::time::Instant>,
    seq: u64,
    buf: Vec<u8>,
}

fn fanout(d: &Digest) -> String {
    d.hex()[..2].to_string()
}

fn variant_name(d: &Digest, vkey: &str, n: u32) -> String {
    if n == 0 {
        format!("{}/{}.{}", fanout(d), d.hex(), vkey)
    } else {
        format!("{}/{}.{}.{}", fanout(d), d.hex(), vkey, n)
    }
}

impl<'s> ObjectWriter<'s> {
    /// A writer for `store`.
    pub fn new(store: &'s Store) -> Self {
        ObjectWriter {
            store,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_started: None,
            seq: 0,
            buf: vec![0; fsops::COPY_BUF],
        }
    }

    fn staged(&self, name: &str) -> Option<&Staged> {
        self.batch.iter().find(|s| s.name == name)
    }

    /// `lstat` of a variant name, in the batch or in `objects/`.
    fn stat_name(&self, name: &str) -> Result<Option<rfs::Stat>> {
        let r = match self.staged(name) {
            Some(s) => fsops::lstat_at(self.store.tmp_fd(), s.tmp.as_bytes()),
            None => fsops::lstat_at(self.store.objects_fd(), name.as_bytes()),
        };
        r.map_err(|e| Error::errno(format!("looking up object {name}"), e))
    }

    fn loc<'a>(&'a self, name: &str) -> Loc<'a> {
        match self.staged(name) {
            Some(s) => Loc::Tmp(&s.tmp),
            None => Loc::Obj(name.to_string()),
        }
    }

    /// Try to link variant `name` to `dst/leaf`. `Ok(false)` when the
    /// variant is full (EMLINK).
    fn link_name(&self, name: &str, dst: BorrowedFd<'_>, leaf: &[u8]) -> Result<bool> {
        let r = match self.loc(name) {
            Loc::Tmp(t) => rfs::linkat(self.store.tmp_fd(), t, dst, leaf, AtFlags::empty()),
            Loc::Obj(o) => rfs::linkat(
                self.store.objects_fd(),
                o.as_str(),
                dst,
                leaf,
                AtFlags::empty(),
            ),
        };
        match r {
            Ok(()) => Ok(true),
            Err(Errno::MLINK) => Ok(false),
            Err(e) => Err(Error::errno(
                format!("linking object {name} to {}", show(leaf)),
                e,
            )),
        }
    }

    /// Any existing variant of `d` (batch first), to copy content from.
    fn any_variant(&self, d: &Digest) -> Result<Option<File>> {
        let prefix = format!("{}/{}.", fanout(d), d.hex());
        if let Some(s) = self.batch.iter().find(|s| s.name.starts_with(&prefix)) {
            let f = fsops::open_file_at(self.store.tmp_fd(), s.tmp.as_bytes())
                .map_err(|e| Error::errno(format!("reading object {}", s.name), e))?;
            return Ok(Some(f));
        }
        let dir = match fsops::open_dir_at(self.store.objects_fd(), fanout(d).as_bytes()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(Error::errno("reading objects/", e)),
        };
        let hexdot = format!("{}.", d.hex());
        let mut found: Option<Vec<u8>> = None;
        fsops::for_each_entry(dir.as_fd(), |n, _| {
            if found.is_none() && n.starts_with(hexdot.as_bytes()) {
                found = Some(n.to_vec());
            }
            Ok(())
        })?;
        match found {
            None => Ok(None),
            Some(n) => fsops::open_file_at(dir.as_fd(), &n)
                .map(Some)
                .map_err(|e| Error::errno(format!("reading object {}", show(&n)), e)),
        }
    }

    /// Any variant of `d` (a staged one first), opened for reading: the base
    /// of a binary delta.
    pub fn open_any(&self, d: &Digest) -> Result<Option<File>> {
        self.any_variant(d)
    }

    /// Whether any variant of `d` is present.
    pub fn has(&self, d: &Digest) -> Result<bool> {
        Ok(self.any_variant(d)?.is_some())
    }

    /// Link a variant of `d` with metadata `meta` to `dst/leaf` (which must
    /// not exist), making the variant by a local copy when needed.
    /// `Ok(false)` when the store has no variant of `d` at all.
    pub fn link(
        &mut self,
        d: &Digest,
        meta: &Meta,
        dst: BorrowedFd<'_>,
        leaf: &[u8],
    ) -> Result<bool> {
        let vkey = meta.vkey();
        for n in 0..MAX_SUFFIX {
            let name = variant_name(d, &vkey, n);
            match self.stat_name(&name)? {
                Some(st) if meta.matches_stat(&st) => {
                    if self.link_name(&name, dst, leaf)? {
                        return Ok(true);
                    }
                }
                Some(_) => {} // key collision or changed: try the next suffix
                None => {
                    let Some(src) = self.any_variant(d)? else {
                        return Ok(false);
                    };
                    let size = src
                        .metadata()
                        .map_err(|e| Error::io("reading an object", e))?
                        .len();
                    let (tmp, file) = self.new_tmp(Some((d, &vkey)))?;
                    let made = fsops::copy_data(&src, &file)
                        .map_err(|e| Error::io(format!("copying object {d} for a new variant"), e))
                        .and_then(|_| {
                            fsops::set_meta_fd(file.as_fd(), meta, false).map_err(|e| {
                                Error::errno(format!("setting metadata of object {d}"), e)
                            })
                        });
                    drop(file);
                    if let Err(e) = made {
                        let e = match e {
                            Error::DiskFull {
                                needed: None,
                                available,
                                context,
                            } => Error::DiskFull {
                                needed: Some(size),
                                available: available.or_else(|| {
                                    crate::fsops::free_bytes(self.store.root_fd()).ok()
                                }),
                                context,
                            },
                            e => e,
                        };
                        // A partial copy must not keep holding the space
                        // (a full disk is the usual cause).
                        let _ = rfs::unlinkat(self.store.tmp_fd(), tmp.as_str(), AtFlags::empty());
                        return Err(e);
                    }
                    self.stage(tmp, name.clone(), size)?;
                    if self.link_name(&name, dst, leaf)? {
                        return Ok(true);
                    }
                    return Err(Error::Other(format!(
                        "new object variant {name} cannot be linked"
                    )));
                }
            }
        }
        Err(Error::Other(format!(
            "object {d}: more than {MAX_SUFFIX} variants with one metadata"
        )))
    }

    /// A new staging file. With `declared` (the digest it must hash to and
    /// the variant key of the metadata it will get) its name says so —
    /// `<64 hex>.<vkey>~<n>` — and the next start promotes it into
    /// `objects/` if it still checks out ([`Store::promote_staged`]); else
    /// `obj-<n>`, dropped at the next start.
    fn new_tmp(&mut self, declared: Option<(&Digest, &str)>) -> Result<(String, File)> {
        self.seq += 1;
        let tmp = match declared {
            Some((d, vkey)) => format!("{}.{vkey}~{}", d.hex(), self.seq),
            None => format!("obj-{}", self.seq),
        };
        let f = fsops::create_file_at(self.store.tmp_fd(), tmp.as_bytes(), 0o600)
            .map_err(|e| Error::errno(format!("creating tmp/{tmp}"), e))?;
        Ok((tmp, f))
    }

    fn stage(&mut self, tmp: String, name: String, size: u64) -> Result<()> {
        self.batch.push(Staged { tmp, name });
        self.batch_bytes += size;
        let started = *self
            .batch_started
            .get_or_insert_with(std::time::Instant::now);
        if self.batch.len() >= BATCH_FILES
            || self.batch_bytes >= BATCH_BYTES
            || started.elapsed() >= BATCH_AGE
        {
            // Layer trees keep their links to the staged inodes.
            self.flush()?;
        }
        Ok(())
    }

    /// Write a new object of `size` bytes read through `read`, hashing as it
    /// goes; verify size and (when given) `expected`; store it with `meta`.
    /// Returns its digest. Content already present (same variant) is
    /// dropped.
    pub fn insert(
        &mut self,
        expected: Option<&Digest>,
        size: u64,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
        meta: &Meta,
    ) -> Result<Digest> {
        let vkey = meta.vkey();
        let (tmp, mut file) = self.new_tmp(expected.map(|d| (d, vkey.as_str())))?;
        let mut h = Sha256::new();
        let mut got: u64 = 0;
        let mut buf = std::mem::take(&mut self.buf);
        let res = (|| {
            while got < size {
                let want = (size - got).min(buf.len() as u64) as usize;
                let n = read(&mut buf[..want])?;
                if n == 0 {
                    return Err(Error::Transient("content ended early".into()));
                }
                h.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(|e| Error::io(format!("writing tmp/{tmp}"), e))?;
                got += n as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        if let Err(e) = res {
            drop(file);
            // What was free when the disk filled up, measured before the
            // partial file goes (afterwards the figure would describe a
            // disk that is no longer full).
            let e = match e {
                Error::DiskFull {
                    needed: None,
                    available: None,
                    context,
                } => Error::DiskFull {
                    needed: Some(size),
                    available: crate::fsops::free_bytes(self.store.root_fd()).ok(),
                    context,
                },
                e => e,
            };
            let _ = rfs::unlinkat(self.store.tmp_fd(), tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        let digest = Digest::from_hasher(h);
        if let Some(want) = expected {
            if *want != digest {
                drop(file);
                let _ = rfs::unlinkat(self.store.tmp_fd(), tmp.as_str(), AtFlags::empty());
                return Err(Error::integrity(format!(
                    "content announced as {want} hashes to {digest} ({size} bytes)"
                )));
            }
        }
        fsops::set_meta_fd(file.as_fd(), meta, false)
            .map_err(|e| Error::errno(format!("setting metadata of object {digest}"), e))?;
        drop(file);
        // Already stored with this metadata? Keep the old one.
        for n in 0..MAX_SUFFIX {
            let name = variant_name(&digest, &vkey, n);
            match self.stat_name(&name)? {
                Some(st) if meta.matches_stat(&st) => {
                    let _ = rfs::unlinkat(self.store.tmp_fd(), tmp.as_str(), AtFlags::empty());
                    return Ok(digest);
                }
                Some(_) => continue,
                None => {
                    self.stage(tmp, name, size)?;
                    return Ok(digest);
                }
            }
        }
        Err(Error::Other(format!("object {digest}: too many variants")))
    }

    /// Sync the batch's content, then rename it into `objects/`.
    pub fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.store.syncfs()?;
        for s in self.batch.drain(..) {
            let fan = &s.name[..2];
            match rfs::mkdirat(self.store.objects_fd(), fan, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::errno(format!("creating objects/{fan}"), e)),
            }
            rfs::renameat(
                self.store.tmp_fd(),
                s.tmp.as_str(),
                self.store.objects_fd(),
                s.name.as_str(),
            )
            .map_err(|e| Error::errno(format!("storing object {}", s.name), e))?;
        }
        // Make the renames durable too: without this a power cut can undo
        // them (the content stays in tmp/, which start-up clears), and the
        // batch is downloaded again (seen in the VM power-cut harness).
        self.store.syncfs()?;
        self.batch_bytes = 0;
        self.batch_started = None;
        Ok(())
    }
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        // Best effort: verified content stays as loose objects, so a retry
        // does not download it again.
        let _ = self.flush();
    }
}

/// What [`Store::promote_staged`] found in `tmp/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Promoted {
    /// Staged objects re-hashed, found sound and moved into `objects/`.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Staged files dropped: partial, damaged, or already stored.
    pub dropped: u64,
}

impl Store {
    /// Start-up: move the verified objects an interrupted run left in
    /// `tmp/` (the batch in flight) into `objects/`, so that they count as
    /// held and are not downloaded again. Only files whose name declares
    /// their digest and variant key (`<64 hex>.<vkey>~<n>`, see
    /// `ObjectWriter::new_tmp`) are candidates, and each is re-hashed and
    /// its metadata re-keyed first: a partial write (cut mid-content or
    /// before its metadata was set) or content damaged by the cut does not
    /// match and stays, to be removed with the rest of `tmp/`. The content
    /// is synced before the renames and the renames after, as a batch flush
    /// does. Must run before `tmp/` is emptied, under the exclusive lock.
    pub fn promote_staged(&self) -> Result<Promoted> {
        let mut out = Promoted::default();
        let mut names: Vec<Vec<u8>> = Vec::new();
        fsops::for_each_entry(self.tmp_fd(), |name, _| {
            let declared = name.len() > 82
                && super::parse_hex_name(name).is_some()
                && name[64] == b'.'
                && name[81] == b'~';
            if declared {
                names.push(name.to_vec());
            }
            Ok(())
        })?;
        let mut sound: Vec<(Vec<u8>, Digest, rfs::Stat)> = Vec::new();
        let mut buf = vec![0u8; fsops::COPY_BUF];
        for name in names {
            let st = match fsops::lstat_at(self.tmp_fd(), &name) {
                Ok(Some(st)) if fsops::file_type(&st) == rfs::FileType::RegularFile => st,
                _ => continue,
            };
            // `check_object` reads the leading `<hex>.<vkey>` of the name.
            if super::check_object(self.tmp_fd(), &name, &st, &mut buf)?.is_empty() {
                if let Some(d) = super::parse_hex_name(&name) {
                    sound.push((name, d, st));
                }
            } else {
                out.dropped += 1;
            }
        }
        if sound.is_empty() {
            return Ok(out);
        }
        self.syncfs()?;
        for (tmp, d, st) in sound {
            let vkey = core::str::from_utf8(&tmp[65..81]).unwrap_or_default();
            let meta = Meta::from_stat(&st, Vec::new());
            for n in 0..MAX_SUFFIX {
                let name = variant_name(&d, vkey, n);
                match fsops::lstat_at(self.objects_fd(), name.as_bytes())
                    .map_err(|e| Error::errno(format!("looking up object {name}"), e))?
                {
                    // Already stored with this metadata: tmp/ clearing drops it.
                    Some(old) if meta.matches_stat(&old) => {
                        out.dropped += 1;
                        break;
                    }
                    Some(_) => continue,
                    None => {
                        let fan = &name[..2];
                        match rfs::mkdirat(self.objects_fd(), fan, Mode::from_raw_mode(0o700)) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => {
                                return Err(Error::errno(format!("creating objects/{fan}"), e))
                            }
                        }
                        rfs::renameat(
                            self.tmp_fd(),
                            tmp.as_slice(),
                            self.objects_fd(),
                            name.as_str(),
                        )
                        .map_err(|e| Error::errno(format!("storing object {name}"), e))?;
                        out.objects += 1;
                        out.bytes += st.st_size as u64;
                        break;
                    }
                }
            }
        }
        self.syncfs()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Access;
    use std::io::Read;

    fn put(w: &mut ObjectWriter<'_>, data: &[u8], meta: &Meta) -> Digest {
        let d = Digest::of(data);
        let mut src = data;
        w.insert(
            Some(&d),
            data.len() as u64,
            &mut |b| Ok(src.read(b).unwrap()),
            meta,
        )
        .unwrap()
    }

    fn tmp_names(store: &Store) -> Vec<String> {
        let mut v = Vec::new();
        fsops::for_each_entry(store.tmp_fd(), |n, _| {
            v.push(String::from_utf8_lossy(n).into_owned());
            Ok(())
        })
        .unwrap();
        v.sort();
        v
    }

    /// A run killed with a batch in flight: at the next open the sound
    /// staged objects are promoted (and held, loose); a partial write, one
    /// whose metadata no longer matches its key, and undeclared files go.
    #[test]
    fn interrupted_batch_is_promoted_only_when_it_checks_out() {
        let root = std::env::temp_dir().join(format!("layerlink-promote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let meta = Meta {
            mode: 0o644,
            ..Meta::default()
        };
        let (good, partial, rekeyed) = {
            let store = Store::open(&root, Access::Exclusive).unwrap();
            let mut w = ObjectWriter::new(&store);
            let good = put(&mut w, b"a verified object", &meta);
            let partial = put(&mut w, b"an object cut while written", &meta);
            let rekeyed = put(&mut w, b"an object whose mode changed", &meta);
            let names = tmp_names(&store);
            assert_eq!(names.len(), 3, "{names:?}");
            let find = |d: &Digest| names.iter().find(|n| n.starts_with(&d.hex())).unwrap();
            // Truncate one (a cut mid-content), chmod another (a cut before
            // its metadata was set), and leave an undeclared file.
            let p = root.join("tmp").join(find(&partial));
            std::fs::write(&p, b"an object cut").unwrap();
            let r = root.join("tmp").join(find(&rekeyed));
            rfs::chmod(&r, Mode::from_raw_mode(0o600)).unwrap();
            std::fs::write(root.join("tmp").join("obj-9"), b"undeclared").unwrap();
            std::mem::forget(w); // SIGKILL: no flush
            (good, partial, rekeyed)
        };
        let store = Store::open(&root, Access::Exclusive).unwrap();
        assert!(tmp_names(&store).is_empty(), "tmp/ emptied");
        let w = ObjectWriter::new(&store);
        assert!(w.has(&good).unwrap(), "the sound object was promoted");
        assert!(!w.has(&partial).unwrap(), "a partial write is dropped");
        assert!(
            !w.has(&rekeyed).unwrap(),
            "a file off its variant key is dropped"
        );
        assert_eq!(store.held_set().unwrap().objects, vec![good]);
        let mut problems = Vec::new();
        let v = store.verify(|p| problems.push(p.to_string())).unwrap();
        assert_eq!(v.problems, 0, "{problems:?}");
        drop(w);
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }
}
