//! The device store: content-addressed objects, hard-linked layer trees,
//! image records.
//!
//! ```text
//! DIR/                                  mode 0700 (layer trees may hold device nodes)
//! ├── lock                              flock(2): sync and gc hold it exclusively
//! ├── checked                           empty; its ctime is the self-check
//! │                                     watermark (see `heal`)
//! ├── state                             postcard State: last acknowledged holdings
//! │                                     hash, last report, last sync result
//! │                                     (per image), check watermark
//! ├── objects/<2 hex>/<64 hex>.<vkey>[.<n>]
//! │                                     one file per object *variant*: the content
//! │                                     is the object (name = sha256), the inode's
//! │                                     mode/owner/mtime/xattrs are the variant's
//! │                                     (vkey = 16 hex of a hash over them; .<n>
//! │                                     when a variant is full (EMLINK) or its key
//! │                                     collides)
//! ├── layers/<diff_id hex>/             a committed layer tree, usable as an
//! │                                     overlayfs lower dir: every non-empty
//! │                                     regular file is a hard link to an object
//! │                                     variant; whiteouts are char devices 0:0,
//! │                                     opaque dirs carry trusted.overlay.opaque=y
//! ├── images/<sha256 of "repo:ref">.rec postcard ImageRecord: manifest, config,
//! │                                     diff_ids, sync time
//! ├── partial-archive[.info]            the compressed bytes of an archive a cut
//! │                                     interrupted, for its resumption
//! │                                     (`crate::resume`)
//! └── tmp/                              staging (layer-<hex>/, staged objects
//!                                       <64 hex>.<vkey>~<n>, local copies
//!                                       obj-<n>, gc-…); at start-up sound
//!                                       staged objects are promoted, the
//!                                       rest removed
//! ```
//!
//! **Invariants.** An object file's content always matches its name: new
//! content is written to `tmp/`, hashed while written, verified, synced
//! (`syncfs`, batched) and only then renamed into `objects/`. A directory in
//! `layers/` is complete: it is renamed there from `tmp/` after its
//! `layer-end` marker matched and everything in it was synced. An image record
//! names only committed layers. Power loss at any instant leaves the old or the
//! new state; the next run promotes the staged objects that re-hash to the
//! digest and variant key their name declares
//! ([`Store::promote_staged`]), empties the rest of `tmp/`, and finishes
//! the job without downloading those objects again.
//!
//! **Held set.** What the device reports: the committed layers' diff_ids and
//! the *loose* objects, those with a variant whose link count is 1 (linked
//! from no layer, e.g. left by an interrupted apply).
//!
//! **Garbage collection.** A layer no image record uses is removed (renamed
//! into `tmp/` first, so a crash cannot leave half a layer); then every
//! object variant with link count 1 is unused and removed.
//!
//! **Self-check.** See [`heal`]: before every sync, objects changed since
//! the last run are re-hashed; damaged ones and the layers using them go.
//!
//! **Locking.** `sync`, `gc`, `remove` and `verify --repair` take
//! `DIR/lock` exclusively (non-blocking: a second sync exits with code 4). Read-only commands (`status`,
//! `checkout`, `layers`, `verify`) take no lock: they only read committed
//! layers and records, which are replaced atomically.

pub mod heal;
pub mod objects;
pub mod record;

use crate::error::{Error, Result};
use crate::fsops::{self, file_type, show};
use layerlink_proto::limits::MAX_LOOSE_OBJECTS;
use layerlink_proto::msg::{HeldSet, ImageRef};
use layerlink_proto::Digest;
use record::{ImageRecord, State, FORMAT_VERSION};
use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How a command opens the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create the store if missing, take the lock exclusively (non-blocking)
    /// and empty `tmp/`. For `sync` and `gc`.
    Exclusive,
    /// Open an existing store without locking. For read-only commands.
    ReadOnly,
}

/// An open store.
pub struct Store {
    root: PathBuf,
    root_fd: OwnedFd,
    objects_fd: OwnedFd,
    layers_fd: OwnedFd,
    images_fd: OwnedFd,
    tmp_fd: OwnedFd,
    _lock: Option<OwnedFd>,
}

const SUBDIRS: [&str; 4] = ["objects", "layers", "images", "tmp"];

/// Largest image record or state file read back.
const MAX_RECORD_BYTES: u64 = 2 * layerlink_proto::limits::MAX_METADATA_BYTES + 1024 * 1024;

/// Current Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parse a 64-hex name (or the leading 64 hex of an object file name).
pub fn parse_hex_name(name: &[u8]) -> Option<Digest> {
    let hex = name.get(..64)?;
    Digest::from_hex(core::str::from_utf8(hex).ok()?).ok()
}

impl Store {
    /// Open (and with [`Access::Exclusive`], create, lock and recover) the
    /// store at `root`.
    pub fn open(root: &Path, access: Access) -> Result<Store> {
        let ctx = |what: &str| format!("{what} store {}", root.display());
        if access == Access::Exclusive {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                // Missing parents too, as `mkdir -p` (the help says "created
                // if missing").
                std::fs::create_dir_all(parent).map_err(|e| Error::io(ctx("creating"), e))?;
            }
            match rfs::mkdir(root, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(Error::errno(ctx("creating"), e)),
            }
        }
        let root_fd = fsops::open_dir_path(root).map_err(|e| Error::io(ctx("opening"), e))?;
        let lock = if access == Access::Exclusive {
            let fd = rfs::openat(
                &root_fd,
                "lock",
                rfs::OFlags::RDWR
                    | rfs::OFlags::CREATE
                    | rfs::OFlags::CLOEXEC
                    | rfs::OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| Error::errno(ctx("opening the lock of"), e))?;
            match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    return Err(Error::Locked(format!(
                        "{} is locked",
                        root.join("lock").display()
                    )))
                }
                Err(e) => return Err(Error::errno(ctx("locking"), e)),
            }
            for d in SUBDIRS {
                match rfs::mkdirat(&root_fd, d, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(Error::errno(ctx("creating directories of"), e)),
                }
            }
            Some(fd)
        } else {
            None
        };
        let sub = |name: &str| {
            fsops::open_dir_at(root_fd.as_fd(), name.as_bytes()).map_err(|e| {
                Error::errno(
                    format!(
                        "opening {} (is this a layerlink store?)",
                        root.join(name).display()
                    ),
                    e,
                )
            })
        };
        let store = Store {
            root: root.to_path_buf(),
            objects_fd: sub("objects")?,
            layers_fd: sub("layers")?,
            images_fd: sub("images")?,
            tmp_fd: sub("tmp")?,
            root_fd,
            _lock: lock,
        };
        if access == Access::Exclusive {
            store.recover()?;
        }
        Ok(store)
    }

    /// Start-up recovery: promote the sound objects an interrupted run
    /// staged ([`Store::promote_staged`]), then empty `tmp/` (partial
    /// files, interrupted layer trees, gc leftovers).
    fn recover(&self) -> Result<()> {
        self.promote_staged()?;
        fsops::clear_dir(self.tmp_fd.as_fd())
            .map_err(|e| Error::errno(self.ctx("emptying tmp/ of"), e))
    }

    fn ctx(&self, what: &str) -> String {
        format!("{what} store {}", self.root.display())
    }

    /// The store's root path.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `objects/`.
    pub fn objects_fd(&self) -> BorrowedFd<'_> {
        self.objects_fd.as_fd()
    }
    /// `layers/`.
    pub fn layers_fd(&self) -> BorrowedFd<'_> {
        self.layers_fd.as_fd()
    }
    /// `tmp/`.
    pub fn tmp_fd(&self) -> BorrowedFd<'_> {
        self.tmp_fd.as_fd()
    }
    /// The store root directory.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root_fd.as_fd()
    }

    /// Path of a committed layer's directory.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// Whether `diff_id` is committed.
    pub fn has_layer(&self, diff_id: &Digest) -> Result<bool> {
        match fsops::lstat_at(self.layers_fd(), diff_id.hex().as_bytes()) {
            Ok(Some(st)) => Ok(file_type(&st) == FileType::Directory),
            Ok(None) => Ok(false),
            Err(e) => Err(Error::errno(self.ctx("reading layers/ of"), e)),
        }
    }

    /// Open a committed layer's root directory.
    pub fn open_layer(&self, diff_id: &Digest) -> Result<OwnedFd> {
        fsops::open_dir_at(self.layers_fd(), diff_id.hex().as_bytes()).map_err(|e| {
            Error::errno(
                format!("opening layer {diff_id} in {}", self.root.display()),
                e,
            )
        })
    }

    /// diff_ids of all committed layers, sorted.
    pub fn committed_layers(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        fsops::for_each_entry(self.layers_fd(), |name, ft| {
            if ft == FileType::Directory || ft == FileType::Unknown {
                if let Some(d) = parse_hex_name(name).filter(|_| name.len() == 64) {
                    out.push(d);
                }
            }
            Ok(())
        })?;
        out.sort_unstable();
        Ok(out)
    }

    /// Call `f(fanout_dir, file_name, stat)` for every object variant.
    pub fn for_each_object(
        &self,
        mut f: impl FnMut(BorrowedFd<'_>, &[u8], &rfs::Stat) -> Result<()>,
    ) -> Result<()> {
        let mut fanouts = Vec::new();
        fsops::for_each_entry(self.objects_fd(), |name, _| {
            if name.len() == 2 && name.iter().all(|c| c.is_ascii_hexdigit()) {
                fanouts.push(name.to_vec());
            }
            Ok(())
        })?;
        fanouts.sort();
        for fan in fanouts {
            let dir = fsops::open_dir_at(self.objects_fd(), &fan)
                .map_err(|e| Error::errno(self.ctx("reading objects/ of"), e))?;
            let mut names = Vec::new();
            fsops::for_each_entry(dir.as_fd(), |name, _| {
                names.push(name.to_vec());
                Ok(())
            })?;
            for name in names {
                if let Some(st) = fsops::lstat_at(dir.as_fd(), &name)
                    .map_err(|e| Error::errno(self.ctx("reading objects/ of"), e))?
                {
                    if file_type(&st) == FileType::RegularFile {
                        f(dir.as_fd(), &name, &st)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What the device truly holds: committed layers and loose objects
    /// (digests with a variant linked from no layer), canonical.
    pub fn held_set(&self) -> Result<HeldSet> {
        let layers = self.committed_layers()?;
        let mut objects = Vec::new();
        self.for_each_object(|_, name, st| {
            if st.st_nlink == 1 && objects.len() < MAX_LOOSE_OBJECTS {
                if let Some(d) = parse_hex_name(name) {
                    objects.push(d);
                }
            }
            Ok(())
        })?;
        let mut set = HeldSet { layers, objects };
        set.canonicalize();
        Ok(set)
    }

    /// Read `state` (default when missing or unreadable: a bad state file
    /// only costs one full holdings upload).
    pub fn state(&self) -> State {
        match fsops::read_small(self.root_fd(), b"state", MAX_RECORD_BYTES) {
            Ok(Some(bytes)) => postcard::from_bytes(&bytes).unwrap_or_default(),
            _ => State::default(),
        }
    }

    /// Write `state` atomically.
    pub fn save_state(&self, state: &State) -> Result<()> {
        let mut s = state.clone();
        s.version = FORMAT_VERSION;
        let bytes =
            postcard::to_allocvec(&s).map_err(|e| Error::Other(format!("encoding state: {e}")))?;
        fsops::write_atomic(self.root_fd(), "state", &bytes)
            .map_err(|e| Error::io(self.ctx("writing state of"), e))
    }

    /// The record of `image`, if synced.
    pub fn record(&self, image: &ImageRef) -> Result<Option<ImageRecord>> {
        let name = record::record_file_name(image);
        self.read_record(name.as_bytes())
    }

    fn read_record(&self, name: &[u8]) -> Result<Option<ImageRecord>> {
        let bytes = fsops::read_small(self.images_fd.as_fd(), name, MAX_RECORD_BYTES)
            .map_err(|e| Error::io(format!("reading image record {}", show(name)), e))?;
        match bytes {
            None => Ok(None),
            Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| {
                Error::integrity(format!(
                    "image record images/{} is damaged: {e}",
                    show(name)
                ))
            }),
        }
    }

    /// All image records, sorted by image name.
    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        let mut names = Vec::new();
        fsops::for_each_entry(self.images_fd.as_fd(), |name, _| {
            if name.ends_with(b".rec") && !name.starts_with(b".") {
                names.push(name.to_vec());
            }
            Ok(())
        })?;
        let mut out = Vec::new();
        for n in names {
            if let Some(r) = self.read_record(&n)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.image.cmp(&b.image));
        Ok(out)
    }

    /// Write an image record atomically. All its layers must be committed.
    pub fn write_record(&self, rec: &ImageRecord) -> Result<()> {
        for l in &rec.layers {
            if !self.has_layer(l)? {
                return Err(Error::Other(format!(
                    "refusing to record image: layer {l} is not committed"
                )));
            }
        }
        let bytes = postcard::to_allocvec(rec)
            .map_err(|e| Error::Other(format!("encoding record: {e}")))?;
        let name = record::record_file_name(&rec.image);
        fsops::write_atomic(self.images_fd.as_fd(), &name, &bytes)
            .map_err(|e| Error::io(format!("writing image record images/{name}"), e))
    }

    /// `syncfs` the store's file system.
    pub fn syncfs(&self) -> Result<()> {
        rfs::syncfs(self.root_fd()).map_err(|e| Error::errno(self.ctx("syncing"), e))
    }

    /// Commit a finished staging tree `tmp/<staging>` as `layers/<hex>`:
    /// sync, rename, sync the directory. A layer committed meanwhile wins.
    pub fn commit_layer(&self, staging: &str, diff_id: &Digest) -> Result<()> {
        self.syncfs()?;
        let hex = diff_id.hex();
        match rfs::renameat_with(
            self.tmp_fd(),
            staging,
            self.layers_fd(),
            hex.as_str(),
            rfs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {
                fsops::remove_at(self.tmp_fd(), staging.as_bytes())
                    .map_err(|e| Error::errno(self.ctx("removing staging of"), e))?;
            }
            Err(e) => return Err(Error::errno(format!("committing layer {diff_id}"), e)),
        }
        rfs::fsync(self.layers_fd()).map_err(|e| Error::errno(self.ctx("syncing layers/ of"), e))
    }

    /// Remove a committed layer (renamed into `tmp/` first, so a crash
    /// cannot leave half a layer). Returns the bytes only it held.
    pub fn remove_layer(&self, l: &Digest) -> Result<u64> {
        let victim = format!("gc-{}", l.hex());
        rfs::renameat(
            self.layers_fd(),
            l.hex().as_str(),
            self.tmp_fd(),
            victim.as_str(),
        )
        .map_err(|e| Error::errno(format!("removing layer {l}"), e))?;
        rfs::fsync(self.layers_fd())
            .map_err(|e| Error::errno(self.ctx("syncing layers/ of"), e))?;
        let dir = fsops::open_dir_at(self.tmp_fd(), victim.as_bytes())
            .map_err(|e| Error::errno(format!("removing layer {l}"), e))?;
        let freed = tree_private_bytes(dir.as_fd())?;
        drop(dir);
        fsops::remove_at(self.tmp_fd(), victim.as_bytes())
            .map_err(|e| Error::errno(format!("removing layer {l}"), e))?;
        Ok(freed)
    }

    /// Remove the record of `image` (its layers and objects stay until
    /// [`Store::gc`]). Returns whether there was one.
    pub fn remove_record(&self, image: &ImageRef) -> Result<bool> {
        let name = record::record_file_name(image);
        let removed = fsops::remove_at(self.images_fd.as_fd(), name.as_bytes())
            .map_err(|e| Error::errno(format!("removing image record images/{name}"), e))?;
        rfs::fsync(&self.images_fd).map_err(|e| Error::errno(self.ctx("syncing images/ of"), e))?;
        Ok(removed)
    }

    /// Remove layers no record uses, then unused object variants. A layer
    /// that a mounted read-only checkout uses (an overlay mount naming
    /// `/layers/<hex>`) is kept until it is unmounted.
    pub fn gc(&self) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let mut used: Vec<Digest> = self.records()?.into_iter().flat_map(|r| r.layers).collect();
        used.sort_unstable();
        let mounted = crate::checkout::mountinfo();
        for l in self.committed_layers()? {
            if used.binary_search(&l).is_ok() {
                continue;
            }
            if crate::checkout::mounts_layer(&mounted, &l.hex()) {
                stats.layers_mounted += 1;
                continue;
            }
            stats.bytes_freed += self.remove_layer(&l)?;
            stats.layers_removed += 1;
        }
        let mut victims: Vec<(OwnedFd, Vec<u8>, u64)> = Vec::new();
        self.for_each_object(|dir, name, st| {
            if st.st_nlink == 1 {
                let dup = fsops::open_dir_at(dir, b".").map_err(|e| Error::errno("gc", e))?;
                victims.push((dup, name.to_vec(), st.st_size as u64));
            }
            if victims.len() >= 1024 {
                remove_objects(&mut victims, &mut stats)?;
            }
            Ok(())
        })?;
        remove_objects(&mut victims, &mut stats)?;
        self.syncfs()?;
        Ok(stats)
    }

    /// Check everything: object content against names, variant keys,
    /// records' layers, layer trees' links. Returns the problems found.
    pub fn verify(&self, mut on_problem: impl FnMut(&str)) -> Result<VerifyStats> {
        let mut stats = VerifyStats::default();
        let mut buf = vec![0u8; fsops::COPY_BUF];
        self.for_each_object(|dir, name, st| {
            stats.objects += 1;
            let shown = format!(
                "objects/{}/{}",
                show(&name[..2.min(name.len())]),
                show(name)
            );
            for p in check_object(dir, name, st, &mut buf)? {
                stats.problems += 1;
                on_problem(&format!("{shown}: {p}"));
            }
            Ok(())
        })?;
        for rec in self.records()? {
            stats.images += 1;
            let name = record::show_image_ref(&rec.image);
            if Digest::of(&rec.manifest) != rec.manifest_digest {
                stats.problems += 1;
                on_problem(&format!(
                    "image {name}: stored manifest does not match {}",
                    rec.manifest_digest
                ));
            }
            for l in &rec.layers {
                if !self.has_layer(l)? {
                    stats.problems += 1;
                    on_problem(&format!("image {name}: layer {l} is missing"));
                }
            }
        }
        for l in self.committed_layers()? {
            stats.layers += 1;
            let dir = self.open_layer(&l)?;
            let mut path = Vec::new();
            walk_tree(dir.as_fd(), &mut path, &mut |_, p, st| {
                if file_type(st) == FileType::RegularFile && st.st_size > 0 && st.st_nlink < 2 {
                    stats.problems += 1;
                    on_problem(&format!(
                        "layer {l}: {} is not linked to an object",
                        show(p)
                    ));
                }
                Ok(())
            })?;
        }
        Ok(stats)
    }
}

/// Re-hash one object variant file and check its variant key: the
/// problems found (none = sound).
pub(crate) fn check_object(
    dir: BorrowedFd<'_>,
    name: &[u8],
    st: &rfs::Stat,
    buf: &mut [u8],
) -> Result<Vec<String>> {
    let shown = || {
        format!(
            "objects/{}/{}",
            show(&name[..2.min(name.len())]),
            show(name)
        )
    };
    let Some(want) = parse_hex_name(name) else {
        return Ok(vec!["not an object name".into()]);
    };
    let mut problems = Vec::new();
    let mut f = fsops::open_file_at(dir, name)
        .map_err(|e| Error::errno(format!("reading {}", shown()), e))?;
    let mut h = Sha256::new();
    loop {
        let n = f
            .read(buf)
            .map_err(|e| Error::io(format!("reading {}", shown()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = Digest::from_hasher(h);
    if got != want {
        problems.push(format!("content hashes to {got}"));
    }
    let xattrs = fsops::read_xattrs_fd(f.as_fd())
        .map_err(|e| Error::errno(format!("reading {}", shown()), e))?;
    let vkey = fsops::Meta::from_stat(st, xattrs).vkey();
    if name.get(65..81) != Some(vkey.as_bytes()) {
        problems.push(format!(
            "metadata does not match its variant key (now {vkey})"
        ));
    }
    Ok(problems)
}

fn remove_objects(victims: &mut Vec<(OwnedFd, Vec<u8>, u64)>, stats: &mut GcStats) -> Result<()> {
    for (dir, name, size) in victims.drain(..) {
        // Re-check: a link may have appeared since (not under our lock, but
        // cheap insurance).
        match fsops::lstat_at(dir.as_fd(), &name) {
            Ok(Some(st)) if st.st_nlink == 1 => {}
            _ => continue,
        }
        rfs::unlinkat(&dir, name.as_slice(), AtFlags::empty())
            .map_err(|e| Error::errno(format!("removing object {}", show(&name)), e))?;
        stats.objects_removed += 1;
        stats.bytes_freed += size;
    }
    Ok(())
}

/// Bytes of the inodes only this tree holds (link count 1 files).
fn tree_private_bytes(dir: BorrowedFd<'_>) -> Result<u64> {
    let mut total = 0;
    let mut path = Vec::new();
    walk_tree(dir, &mut path, &mut |_, _, st| {
        if st.st_nlink == 1 && file_type(st) != FileType::Directory {
            total += st.st_size as u64;
        }
        Ok(())
    })?;
    Ok(total)
}

/// The callback of [`walk_tree`]: (parent directory, relative path, lstat).
pub type WalkFn<'a> = dyn FnMut(BorrowedFd<'_>, &[u8], &rfs::Stat) -> Result<()> + 'a;

/// Depth-first walk of a tree without following symlinks: `f(dir, path,
/// stat)` for every entry below `dir` (pre-order). `path` is relative.
pub fn walk_tree(dir: BorrowedFd<'_>, path: &mut Vec<u8>, f: &mut WalkFn<'_>) -> Result<()> {
    let mut names = Vec::new();
    fsops::for_each_entry(dir, |n, _| {
        names.push(n.to_vec());
        Ok(())
    })?;
    names.sort();
    for name in names {
        let Some(st) =
            fsops::lstat_at(dir, &name).map_err(|e| Error::errno("walking a layer", e))?
        else {
            continue;
        };
        let len = path.len();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        f(dir, path, &st)?;
        if file_type(&st) == FileType::Directory {
            let sub = fsops::open_dir_at(dir, &name)
                .map_err(|e| Error::errno(format!("walking {}", show(path)), e))?;
            walk_tree(sub.as_fd(), path, f)?;
        }
        path.truncate(len);
    }
    Ok(())
}

/// What `gc` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Layers removed.
    pub layers_removed: u64,
    /// Unused layers kept because a read-only checkout has them mounted.
    pub layers_mounted: u64,
    /// Object variants removed.
    pub objects_removed: u64,
    /// Bytes freed (file sizes).
    pub bytes_freed: u64,
}

/// What `verify` checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyStats {
    /// Object variants re-hashed.
    pub objects: u64,
    /// Layer trees walked.
    pub layers: u64,
    /// Image records checked.
    pub images: u64,
    /// Problems found.
    pub problems: u64,
}
