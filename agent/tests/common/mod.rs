//! Builders for dedup archives and plain layer tars, following
//! `proto/SPEC.md`, written with the `tar` and `flate2` crates.
#![allow(dead_code)]

use flate2::write::GzEncoder;
use flate2::Compression;
use layerlink_proto::archive::reference_link;
use layerlink_proto::Digest;
use std::io::Write;

/// One tar entry, described fully (raw byte paths allowed).
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: u8,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub dev: (u32, u32),
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(kind: u8, path: &[u8], mode: u32) -> Entry {
        Entry {
            kind,
            path: path.to_vec(),
            link: Vec::new(),
            data: Vec::new(),
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
    pub fn dir(path: &str) -> Entry {
        Entry::new(b'5', path.as_bytes(), 0o755)
    }
    /// A regular file as in a plain layer (no digest).
    pub fn file(path: &str, data: &[u8]) -> Entry {
        let mut e = Entry::new(b'0', path.as_bytes(), 0o644);
        e.data = data.to_vec();
        e
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        let mut e = Entry::new(b'2', path.as_bytes(), 0o777);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn hardlink(path: &str, target: &str) -> Entry {
        let mut e = Entry::new(b'1', path.as_bytes(), 0o644);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn fifo(path: &str) -> Entry {
        Entry::new(b'6', path.as_bytes(), 0o600)
    }
    pub fn chardev(path: &str, major: u32, minor: u32) -> Entry {
        let mut e = Entry::new(b'3', path.as_bytes(), 0o666);
        e.dev = (major, minor);
        e
    }
    pub fn raw_path(mut self, p: &[u8]) -> Entry {
        self.path = p.to_vec();
        self
    }
    pub fn mode(mut self, m: u32) -> Entry {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, t: u64) -> Entry {
        self.mtime = t;
        self
    }
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Entry {
        self.pax
            .push((format!("SCHILY.xattr.{name}"), value.to_vec()));
        self
    }
    pub fn pax(mut self, key: &str, value: &[u8]) -> Entry {
        self.pax.push((key.to_string(), value.to_vec()));
        self
    }
    /// The same file as a new-file entry of a dedup archive.
    pub fn with_digest(self) -> Entry {
        if self.kind == b'0' && !self.data.is_empty() {
            let d = Digest::of(&self.data).hex();
            self.pax("LAYERLINK.digest", d.as_bytes())
        } else {
            self
        }
    }
    /// The same file as a reference entry of a dedup archive.
    pub fn as_reference(mut self) -> Entry {
        assert_eq!(self.kind, b'0');
        let d = Digest::of(&self.data);
        self.kind = b'1';
        self.link = reference_link(&d).to_vec();
        self.data.clear();
        self
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ' '=' '\n'
    let mut len = body_len + 1;
    loop {
        let total = body_len + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Writes raw tar entries (PAX headers where needed) into any writer.
pub struct TarWriter<W: Write> {
    b: tar::Builder<W>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        TarWriter {
            b: tar::Builder::new(w),
        }
    }

    pub fn entry(&mut self, e: &Entry) {
        let mut pax = e.pax.clone();
        if e.path.len() > 100 {
            pax.push(("path".into(), e.path.clone()));
        }
        if e.link.len() > 100 {
            pax.push(("linkpath".into(), e.link.clone()));
        }
        if !pax.is_empty() {
            let body: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut h = tar::Header::new_ustar();
            set_name(&mut h, b"PaxHeaders/entry");
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.b.append(&h, body.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        let name: &[u8] = if e.path.len() > 100 {
            b"long-name-in-pax"
        } else {
            &e.path
        };
        set_name(&mut h, name);
        if !e.link.is_empty() && e.link.len() <= 100 {
            h.as_old_mut().linkname[..e.link.len()].copy_from_slice(&e.link);
        }
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if e.kind == b'3' || e.kind == b'4' {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        self.b.append(&h, e.data.as_slice()).unwrap();
    }

    pub fn into_inner(self) -> W {
        self.b.into_inner().unwrap()
    }
}

fn set_name(h: &mut tar::Header, name: &[u8]) {
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name);
}

/// A plain (uncompressed) layer tar and its diff_id.
pub fn layer_tar(entries: &[Entry]) -> (Vec<u8>, Digest) {
    let mut w = TarWriter::new(Vec::new());
    for e in entries {
        w.entry(e);
    }
    let bytes = w.into_inner();
    let d = Digest::of(&bytes);
    (bytes, d)
}

/// Builds a gzip'd dedup archive section by section.
pub struct Archive {
    w: TarWriter<GzEncoder<Vec<u8>>>,
}

fn marker(kind: &str, extra: &[(&str, &[u8])], data: &[u8]) -> Entry {
    let mut e = Entry::new(b'0', format!(".layerlink/{kind}").as_bytes(), 0o644);
    e.mtime = 0;
    e.data = data.to_vec();
    e.pax
        .push(("LAYERLINK.marker".into(), kind.as_bytes().to_vec()));
    for (k, v) in extra {
        e.pax.push((k.to_string(), v.to_vec()));
    }
    e
}

impl Default for Archive {
    fn default() -> Self {
        Self::new()
    }
}

impl Archive {
    pub fn new() -> Self {
        Archive {
            w: TarWriter::new(GzEncoder::new(Vec::new(), Compression::fast())),
        }
    }
    pub fn metadata(&mut self, manifest: &[u8], config: &[u8]) -> &mut Self {
        self.w.entry(&marker("manifest", &[], manifest));
        self.w.entry(&marker("config", &[], config));
        self
    }
    /// A whole layer section: marker, entries, layer-end with the count.
    pub fn layer(&mut self, diff_id: &Digest, entries: &[Entry]) -> &mut Self {
        self.layer_start(diff_id);
        for e in entries {
            self.w.entry(e);
        }
        self.layer_end(diff_id, entries.len() as u64)
    }
    pub fn layer_start(&mut self, diff_id: &Digest) -> &mut Self {
        let id = diff_id.to_string();
        self.w.entry(&marker(
            "layer",
            &[("LAYERLINK.diff_id", id.as_bytes())],
            b"",
        ));
        self
    }
    pub fn entry(&mut self, e: &Entry) -> &mut Self {
        self.w.entry(e);
        self
    }
    pub fn layer_end(&mut self, diff_id: &Digest, count: u64) -> &mut Self {
        let id = diff_id.to_string();
        let n = count.to_string();
        self.w.entry(&marker(
            "layer-end",
            &[
                ("LAYERLINK.diff_id", id.as_bytes()),
                ("LAYERLINK.entries", n.as_bytes()),
            ],
            b"",
        ));
        self
    }
    pub fn object(&mut self, data: &[u8]) -> &mut Self {
        let d = Digest::of(data).hex();
        self.w.entry(&marker(
            "object",
            &[("LAYERLINK.digest", d.as_bytes())],
            data,
        ));
        self
    }
    pub fn end(&mut self) -> &mut Self {
        self.w.entry(&marker("end", &[], b""));
        self
    }
    pub fn finish(self) -> Vec<u8> {
        let gz = self.w.into_inner();
        gz.finish().unwrap()
    }
}

/// The entries of a layer as a dedup archive sends them to a device that
/// holds nothing: new files carry their digest, a repeated content becomes
/// a reference to the earlier copy.
pub fn as_new(entries: &[Entry]) -> Vec<Entry> {
    let mut seen: Vec<Digest> = Vec::new();
    entries
        .iter()
        .map(|e| {
            if e.kind == b'0' && !e.data.is_empty() {
                let d = Digest::of(&e.data);
                if seen.contains(&d) {
                    return e.clone().as_reference();
                }
                seen.push(d);
                e.clone().with_digest()
            } else {
                e.clone()
            }
        })
        .collect()
}

/// A fresh temporary directory (removed on drop).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "layerlink-agent-test-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
