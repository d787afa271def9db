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
    pub fn into_reference(mut self) -> Entry {
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

    pub fn get_ref(&self) -> &W {
        self.b.get_ref()
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

/// Builds a dedup archive section by section: gzip'd, or (`zstd()`) as
/// one zstd frame per tar entry (header and content), like the registry.
pub struct Archive {
    w: TarWriter<Vec<u8>>,
    zstd: bool,
    /// Tar offsets where a new zstd frame starts.
    cuts: Vec<usize>,
}

/// One zstd frame of `data` (level 3, window at most 2^`window_log`,
/// content size in the header).
pub fn zstd_frame(data: &[u8], window_log: u32) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(window_log))
        .unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
        .unwrap();
    c.compress(data).unwrap()
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
            w: TarWriter::new(Vec::new()),
            zstd: false,
            cuts: Vec::new(),
        }
    }
    /// The same archive as zstd frames.
    pub fn zstd() -> Self {
        Archive {
            zstd: true,
            ..Self::new()
        }
    }
    /// Start a new zstd frame here (the next entry starts one anyway).
    pub fn cut(&mut self) -> &mut Self {
        self.cuts.push(self.w.get_ref().len());
        self
    }
    fn put(&mut self, e: &Entry) {
        self.cuts.push(self.w.get_ref().len());
        self.w.entry(e);
    }
    /// The uncompressed tar so far.
    pub fn tar(&self) -> &[u8] {
        self.w.get_ref()
    }
    pub fn metadata(&mut self, manifest: &[u8], config: &[u8]) -> &mut Self {
        self.put(&marker("manifest", &[], manifest));
        self.put(&marker("config", &[], config));
        self
    }
    /// A whole layer section: marker, entries, layer-end with the count.
    pub fn layer(&mut self, diff_id: &Digest, entries: &[Entry]) -> &mut Self {
        self.layer_start(diff_id);
        for e in entries {
            self.put(e);
        }
        self.layer_end(diff_id, entries.len() as u64)
    }
    pub fn layer_start(&mut self, diff_id: &Digest) -> &mut Self {
        let id = diff_id.to_string();
        self.put(&marker(
            "layer",
            &[("LAYERLINK.diff_id", id.as_bytes())],
            b"",
        ));
        self
    }
    pub fn entry(&mut self, e: &Entry) -> &mut Self {
        self.put(e);
        self
    }
    /// A base marker (feature `layer-base`): build on held layer `base`,
    /// minus `removed` paths (the count says `count` of them).
    pub fn base(&mut self, base: &Digest, removed: &[&str], count: usize) -> &mut Self {
        let id = base.to_string();
        let n = count.to_string();
        let mut data = Vec::new();
        for p in removed {
            data.extend_from_slice(p.as_bytes());
            data.push(0);
        }
        self.put(&marker(
            "base",
            &[
                ("LAYERLINK.diff_id", id.as_bytes()),
                ("LAYERLINK.entries", n.as_bytes()),
            ],
            &data,
        ));
        self
    }
    /// A base marker with compact metadata (feature `compact-meta`): the
    /// PAX keys as given (`None`: left out), `records` then the removed
    /// paths as content.
    pub fn base_compact(
        &mut self,
        base: &Digest,
        removed: &[&str],
        meta: Option<&str>,
        meta_size: Option<&str>,
        order: Option<&Digest>,
        records: &[u8],
    ) -> &mut Self {
        let id = base.to_string();
        let n = removed.len().to_string();
        let order = order.map(|d| d.hex());
        let mut data = records.to_vec();
        for p in removed {
            data.extend_from_slice(p.as_bytes());
            data.push(0);
        }
        let mut keys: Vec<(&str, &[u8])> = vec![
            ("LAYERLINK.diff_id", id.as_bytes()),
            ("LAYERLINK.entries", n.as_bytes()),
        ];
        if let Some(m) = meta {
            keys.push(("LAYERLINK.meta", m.as_bytes()));
        }
        if let Some(m) = meta_size {
            keys.push(("LAYERLINK.meta-size", m.as_bytes()));
        }
        if let Some(o) = &order {
            keys.push(("LAYERLINK.base-order", o.as_bytes()));
        }
        self.put(&marker("base", &keys, &data));
        self
    }
    pub fn layer_end(&mut self, diff_id: &Digest, count: u64) -> &mut Self {
        let id = diff_id.to_string();
        let n = count.to_string();
        self.put(&marker(
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
        self.put(&marker(
            "object",
            &[("LAYERLINK.digest", d.as_bytes())],
            data,
        ));
        self
    }
    pub fn end(&mut self) -> &mut Self {
        self.put(&marker("end", &[], b""));
        self
    }
    pub fn finish(self) -> Vec<u8> {
        let tar = self.w.into_inner();
        if !self.zstd {
            let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
            gz.write_all(&tar).unwrap();
            return gz.finish().unwrap();
        }
        let mut cuts = self.cuts;
        cuts.push(tar.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut start = 0;
        for c in cuts {
            if c > start {
                out.extend(zstd_frame(&tar[start..c], 18));
                start = c;
            }
        }
        out
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
                    return e.clone().into_reference();
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

/// Write an OCI image layout at `dir` with one manifest tagged `tag`:
/// uncompressed layer tars and the given config. Returns (manifest bytes,
/// config bytes).
pub fn oci_layout(
    dir: &std::path::Path,
    tag: &str,
    layers: &[Vec<u8>],
    config: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        d
    };
    let cfg_d = put(config);
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|l| {
            let d = put(l);
            format!(
                "{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{d}\",\"size\":{}}}",
                l.len()
            )
        })
        .collect();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{cfg_d}\",\"size\":{}}},\
         \"layers\":[{}]}}",
        config.len(),
        layer_descs.join(",")
    )
    .into_bytes();
    let man_d = put(&manifest);
    std::fs::write(
        dir.join("oci-layout"),
        b"{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .unwrap();
    let index = format!(
        "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"digest\":\"{man_d}\",\"size\":{},\"annotations\":{{\"org.opencontainers.image.ref.name\":\"{tag}\"}}}}]}}",
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
    (manifest, config.to_vec())
}

/// An image config JSON for `diff_ids` with the given `config` object body.
pub fn image_config(diff_ids: &[Digest], config_body: &str) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "{{\"created\":\"2024-01-02T03:04:05Z\",\"author\":\"tests\",\"architecture\":\"amd64\",\"os\":\"linux\",\
         \"config\":{{{config_body}}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        ids.join(",")
    )
    .into_bytes()
}

/// Everything observable about a tree, one line per path, sorted: type,
/// mode, owner, mtime (ns), size + sha256 or link target or rdev, xattrs.
pub fn describe_tree(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &std::path::Path, rel: &std::path::Path, out: &mut Vec<String>) {
        let p = root.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink->{}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!(
                "file {} {}",
                m.len(),
                Digest::of(&std::fs::read(&p).unwrap()).hex()
            )
        } else {
            format!("special mode={:o} rdev={}", m.mode() & 0o170000, m.rdev())
        };
        let mut xattrs = Vec::new();
        let mut names = vec![0u8; 4096];
        if let Ok(n) = rustix::fs::llistxattr(&p, &mut names[..]) {
            for name in names[..n].split(|&c| c == 0).filter(|n| !n.is_empty()) {
                if name == b"security.selinux" {
                    continue;
                }
                let mut v = vec![0u8; 4096];
                let len = rustix::fs::lgetxattr(&p, name, &mut v[..]).unwrap();
                xattrs.push(format!(
                    "{}={:?}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&v[..len])
                ));
            }
        }
        xattrs.sort();
        let mode = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.push(format!(
            "/{} {kind} mode={mode:o} {}:{} mtime={}.{:09} {}",
            rel.display(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            xattrs.join(",")
        ));
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for n in names {
                walk(root, &rel.join(n), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, std::path::Path::new(""), &mut out);
    out
}

/// The agent binary's command line: through `LAYERLINK_AGENT_RUNNER`
/// (e.g. `qemu-arm -L /`) when set — under cross tests the kernel cannot
/// exec an ARM binary itself — else the binary alone.
pub fn agent_argv() -> Vec<std::ffi::OsString> {
    let runner = std::env::var("LAYERLINK_AGENT_RUNNER").unwrap_or_default();
    let mut argv: Vec<std::ffi::OsString> = runner.split_whitespace().map(Into::into).collect();
    argv.push(env!("CARGO_BIN_EXE_layerlink-agent").into());
    argv
}

/// Whether the agent runs under an emulator (its memory figures are the
/// emulator's then).
pub fn agent_emulated() -> bool {
    agent_argv().len() > 1
}

/// [`agent_argv`] as a command.
pub fn agent_command() -> std::process::Command {
    let argv = agent_argv();
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}
