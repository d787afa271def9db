//! The content-addressed object store: every distinct regular-file content
//! of every ingested layer, stored once, zstd-compressed at rest.
//!
//! ```text
//! DATA/objects/
//! ├── 3f/3f5a…e1.zst          one object: zstd frame(s) of the content whose
//! │                            sha256 is the file name
//! └── .staging/<pid>-<n>/      one layer ingest in flight: new objects wait
//!     ├── <hex>.zst            here (fsync'd) until the layer commits, then are
//!     ├── tmp-<n>              renamed into place; removed when the ingest
//!     └── entries.spill        ends, and at start-up for dead processes
//! ```
//!
//! An object's metadata (size, compressed size, how many layers use it) is
//! the redb table [`OBJECTS_META`]; an object file without a row (left by a
//! crash between rename and commit) is harmless: it is not counted, and the
//! next ingest of that content just renames over it. Empty files are never
//! objects.
//!
//! Durability: staged files are written without an fsync each; publishing
//! calls `syncfs` once (content durable), renames, and calls `syncfs`
//! again (names durable) before the index transaction commits.

use layerlink_proto::Digest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Object digest → postcard [`ObjectMeta`].
pub const OBJECTS_META: redb::TableDefinition<&[u8; 32], &[u8]> =
    redb::TableDefinition::new("objects_meta");

/// zstd level objects are stored with.
pub const ZSTD_LEVEL: i32 = 3;

/// What the registry knows about one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Uncompressed content size.
    pub size: u64,
    /// Size of the `.zst` file.
    pub stored_size: u64,
    /// Number of ingested layers that contain this object.
    pub layers: u64,
}

/// Decode an [`ObjectMeta`] row.
pub fn decode_meta(bytes: &[u8]) -> Option<ObjectMeta> {
    postcard::from_bytes(bytes).ok()
}

/// The object store under `DATA/objects/`.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    root: PathBuf,
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);
const STAGING_DIR: &str = ".staging";

impl ObjectStore {
    /// An object store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> ObjectStore {
        ObjectStore { root: root.into() }
    }

    /// The object store of a registry data directory (`DATA/objects`).
    pub fn in_data_dir(data_dir: &Path) -> ObjectStore {
        ObjectStore::new(data_dir.join("objects"))
    }

    /// Root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where object `d` lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join(&hex[..2]).join(format!("{hex}.zst"))
    }

    /// Whether the object file exists.
    pub fn exists(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Open object `d` for reading its uncompressed content.
    pub fn open(&self, d: &Digest) -> io::Result<impl Read> {
        let path = self.path(d);
        let f = File::open(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("object {d} ({}): {e}", path.display()))
        })?;
        zstd::stream::read::Decoder::new(f)
    }

    /// Start staging the new objects of one layer ingest.
    pub fn stage(&self) -> io::Result<Staging> {
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join(STAGING_DIR)
            .join(format!("{}-{}", std::process::id(), n));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(Staging {
            dir,
            store: self.clone(),
            objects: HashMap::new(),
            tmp_counter: 0,
            compressor: None,
        })
    }

    /// Remove staging directories of processes that are gone (left by a
    /// crash). Directories of this process are kept.
    pub fn clean_stale_staging(&self) -> io::Result<()> {
        let dir = self.root.join(STAGING_DIR);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let me = std::process::id().to_string();
        for e in rd {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let pid = name.split('-').next().unwrap_or("");
            let alive = pid == me || Path::new("/proc").join(pid).exists() && !pid.is_empty();
            if !alive {
                fs::remove_dir_all(e.path())?;
            }
        }
        Ok(())
    }
}

/// New objects of one ingest, waiting in a staging directory until
/// [`Staging::publish`]. Dropping it removes whatever was not published.
pub struct Staging {
    dir: PathBuf,
    store: ObjectStore,
    /// Staged objects and their stored (compressed) size.
    objects: HashMap<Digest, u64>,
    tmp_counter: u64,
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

/// An object being written to a staging temp file while its content
/// streams by (large files). Finish with [`Staging::finish_stream`].
pub struct StreamingObject {
    path: PathBuf,
    enc: zstd::stream::write::Encoder<'static, BufWriter<File>>,
}

impl Write for StreamingObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.enc.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.enc.flush()
    }
}

impl Staging {
    /// The staging directory (other temp files of the ingest may live here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `d` is staged.
    pub fn contains(&self, d: &Digest) -> bool {
        self.objects.contains_key(d)
    }

    /// Stored size of a staged object.
    pub fn stored_size(&self, d: &Digest) -> Option<u64> {
        self.objects.get(d).copied()
    }

    /// Number of staged objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    fn staged_path(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!("{}.zst", d.hex()))
    }

    /// Stage a small object whose whole content is in memory.
    pub fn put_bytes(&mut self, d: Digest, content: &[u8]) -> io::Result<()> {
        if self.contains(&d) {
            return Ok(());
        }
        if self.compressor.is_none() {
            self.compressor = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
        }
        let packed = match self.compressor.as_mut() {
            Some(c) => c.compress(content)?,
            None => unreachable!("compressor set above"),
        };
        let path = self.staged_path(&d);
        let mut f = File::create(&path)?;
        f.write_all(&packed)?;
        self.objects.insert(d, packed.len() as u64);
        Ok(())
    }

    /// Start a streaming object (content too large to buffer).
    pub fn begin_stream(&mut self) -> io::Result<StreamingObject> {
        self.tmp_counter += 1;
        let path = self.dir.join(format!("tmp-{}", self.tmp_counter));
        let f = BufWriter::with_capacity(128 * 1024, File::create(&path)?);
        let enc = zstd::stream::write::Encoder::new(f, ZSTD_LEVEL)?;
        Ok(StreamingObject { path, enc })
    }

    /// Finish a streaming object whose content hashed to `d`: keep it
    /// staged unless `d` is already staged (then the temp file is dropped).
    pub fn finish_stream(&mut self, obj: StreamingObject, d: Digest) -> io::Result<()> {
        let StreamingObject { path, enc } = obj;
        let f = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        if self.contains(&d) {
            drop(f);
            return fs::remove_file(&path);
        }
        let stored = f.metadata()?.len();
        drop(f);
        fs::rename(&path, self.staged_path(&d))?;
        self.objects.insert(d, stored);
        Ok(())
    }

    /// Stage an object that arrives already in the stored form (a zstd
    /// file at `file`, e.g. downloaded from the shared bucket): its content
    /// must hash to `d` (checked by decompressing it), else it is removed
    /// and the error says so.
    pub fn adopt_stored(&mut self, d: Digest, file: &Path) -> io::Result<()> {
        let dec = zstd::stream::read::Decoder::new(File::open(file)?)?;
        let mut r = crate::hashing::HashReader::new(dec);
        io::copy(&mut r, &mut io::sink())?;
        let (_, found, _) = r.finish();
        if found != d {
            let _ = fs::remove_file(file);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("object {d} holds content hashing to {found}"),
            ));
        }
        if self.contains(&d) {
            return fs::remove_file(file);
        }
        let stored = fs::metadata(file)?.len();
        fs::rename(file, self.staged_path(&d))?;
        self.objects.insert(d, stored);
        Ok(())
    }

    /// Drop a streaming object whose content turned out to be known.
    pub fn discard_stream(&mut self, obj: StreamingObject) -> io::Result<()> {
        let StreamingObject { path, enc } = obj;
        drop(enc);
        fs::remove_file(path)
    }

    /// Move every staged object into the store: make the staged files
    /// durable (one `syncfs` for all of them rather than an fsync each —
    /// a layer can have tens of thousands of files), rename them into
    /// place, and make the renames durable (another `syncfs`). An object
    /// already there is success.
    pub fn publish(&mut self) -> io::Result<()> {
        if self.objects.is_empty() {
            return Ok(());
        }
        rustix::fs::syncfs(File::open(&self.dir)?)?;
        let mut dirs = std::collections::BTreeSet::new();
        for d in self.objects.keys() {
            let dst = self.store.path(d);
            let parent = dst.parent().map(Path::to_path_buf).unwrap_or_default();
            if dirs.insert(parent.clone()) {
                fs::create_dir_all(&parent)?;
            }
            fs::rename(self.staged_path(d), &dst)?;
        }
        rustix::fs::syncfs(File::open(&self.store.root)?)?;
        self.objects.clear();
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Read a whole object into memory (tests and small metadata only).
pub fn read_object(store: &ObjectStore, d: &Digest) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    BufReader::new(store.open(d)?).read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_objects_appear_only_after_publish() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(tmp.path().join("objects"));
        let small = b"hello world".to_vec();
        let big = vec![7u8; 300_000];
        let (ds, db) = (Digest::of(&small), Digest::of(&big));
        let mut st = store.stage().unwrap();
        st.put_bytes(ds, &small).unwrap();
        let mut w = st.begin_stream().unwrap();
        w.write_all(&big).unwrap();
        st.finish_stream(w, db).unwrap();
        assert_eq!(st.len(), 2);
        assert!(!store.exists(&ds) && !store.exists(&db));
        st.publish().unwrap();
        assert_eq!(read_object(&store, &ds).unwrap(), small);
        assert_eq!(read_object(&store, &db).unwrap(), big);
        let staged_dir = st.dir().to_path_buf();
        drop(st);
        assert!(!staged_dir.exists());
    }

    #[test]
    fn dropped_staging_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(tmp.path().join("objects"));
        let mut st = store.stage().unwrap();
        st.put_bytes(Digest::of(b"x"), b"x").unwrap();
        drop(st);
        assert!(!store.exists(&Digest::of(b"x")));
        let left: Vec<_> = fs::read_dir(tmp.path().join("objects/.staging"))
            .unwrap()
            .collect();
        assert!(left.is_empty());
    }
}
