//! Test helpers: a throw-away store, layer tars built with the `tar` crate,
//! and in-memory blobs.

use super::BlobSource;
use crate::store::objects::ObjectStore;
use layerlink_proto::Digest;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

/// A temp directory with a redb database, the device records in it and an
/// object store.
pub(crate) struct TestStore {
    pub _dir: tempfile::TempDir,
    pub db: std::sync::Arc<redb::Database>,
    pub devices: crate::store::storage::RedbDevices,
    pub objects: ObjectStore,
}

impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(redb::Database::create(dir.path().join("test.redb")).unwrap());
        let objects = ObjectStore::new(dir.path().join("objects"));
        TestStore {
            _dir: dir,
            devices: crate::store::storage::RedbDevices::new(db.clone()),
            db,
            objects,
        }
    }

    /// Number of `.zst` object files on disk.
    pub fn object_files(&self) -> usize {
        let mut n = 0;
        let Ok(rd) = std::fs::read_dir(self.objects.root()) else {
            return 0;
        };
        for e in rd.flatten() {
            if e.file_name() == ".staging" {
                continue;
            }
            if let Ok(sub) = std::fs::read_dir(e.path()) {
                n += sub.flatten().count();
            }
        }
        n
    }
}

/// Builds layer tars.
pub(crate) struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn file(&mut self, path: impl AsRef<[u8]>, content: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, content.len() as u64);
        let p = Path::new(OsStr::from_bytes(path.as_ref()));
        self.b.append_data(&mut h, p, content).unwrap();
        self
    }

    /// A regular file with its own mode and mtime.
    pub fn file_meta(&mut self, path: &str, content: &[u8], mode: u32, mtime: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, content.len() as u64);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, content).unwrap();
        self
    }

    pub fn file_with_pax(
        &mut self,
        path: &str,
        content: &[u8],
        pax: &[(&str, &[u8])],
    ) -> &mut Self {
        self.b.append_pax_extensions(pax.iter().copied()).unwrap();
        self.file(path, content)
    }

    pub fn link(&mut self, kind: tar::EntryType, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(kind, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(
        &mut self,
        kind: tar::EntryType,
        path: &str,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = Self::header(kind, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }

    /// Finish a builder used through `&mut` chains.
    pub fn finish_ref(&mut self) -> Vec<u8> {
        std::mem::replace(self, TarBuilder::new()).finish()
    }
}

/// A layer exercising every entry kind the index must keep.
pub(crate) fn sample_tar() -> Vec<u8> {
    let long = format!("usr/share/{}/file.txt", "long-directory-name".repeat(8));
    let mut t = TarBuilder::new();
    t.dir("etc/")
        .file("etc/hostname", b"edge\n")
        .file("etc/hostname.copy", b"edge\n")
        .file("etc/empty", b"")
        .link(
            tar::EntryType::Symlink,
            "etc/localtime",
            "/usr/share/zoneinfo/UTC",
        )
        .link(tar::EntryType::Link, "etc/hostname.hard", "etc/hostname")
        .file(long.as_bytes(), b"long name content")
        .file(b"caf\xe9.bin", b"latin-1 name")
        .file_with_pax(
            "bin/ping",
            b"\x7fELF ping",
            &[
                (
                    "SCHILY.xattr.security.capability",
                    b"\x01\x00\x00\x02\x0a\x00",
                ),
                ("SCHILY.xattr.user.note", b"hello"),
                ("LAYERLINK.digest", b"0000"),
            ],
        )
        .device(tar::EntryType::Char, "dev/null", 1, 3)
        .device(tar::EntryType::Fifo, "run/fifo", 0, 0)
        .file("var/.wh.cache", b"")
        .file("opt/.wh..wh..opq", b"");
    t.finish()
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[allow(dead_code)]
pub(crate) fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Blobs in memory.
#[derive(Default)]
pub(crate) struct MemBlobs(pub Mutex<HashMap<Digest, Vec<u8>>>);

impl MemBlobs {
    pub fn put(&self, data: Vec<u8>) -> Digest {
        let d = Digest::of(&data);
        self.0.lock().unwrap().insert(d, data);
        d
    }

    pub fn get(&self, d: &Digest) -> Option<Vec<u8>> {
        self.0.lock().unwrap().get(d).cloned()
    }

    /// Store an image (gzip layers) and return (manifest JSON, config digest,
    /// diff_ids).
    pub fn image(&self, tars: &[Vec<u8>]) -> (Vec<u8>, Digest, Vec<Digest>) {
        let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
        let layers: Vec<(Digest, usize)> = tars
            .iter()
            .map(|t| {
                let gz = gzip(t);
                let n = gz.len();
                (self.put(gz), n)
            })
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_len = config.len();
        let config_digest = self.put(config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::OCI_MANIFEST,
            "config": {"mediaType": crate::oci::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_len},
            "layers": layers.iter().map(|(d, n)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": n
            })).collect::<Vec<_>>(),
        });
        (
            serde_json::to_vec(&manifest).unwrap(),
            config_digest,
            diff_ids,
        )
    }
}

impl BlobSource for MemBlobs {
    fn open(&self, d: &Digest) -> std::io::Result<Option<Box<dyn Read + '_>>> {
        Ok(self
            .get(d)
            .map(|v| Box::new(std::io::Cursor::new(v)) as Box<dyn Read>))
    }
}
