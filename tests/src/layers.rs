//! An independent count of what layer blobs hold, for checking the
//! registry's dedup figures. Written against the tar and OCI specs only —
//! nothing from the registry's code.

use crate::oci::{Descriptor, OciLayout};
use std::collections::BTreeSet;
use std::io::Read;

/// What the tars of some layers hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerFiles {
    /// Tar entries (PAX/GNU extension headers excluded).
    pub entries: u64,
    /// Regular-file entries (type `0` / `\0` / contiguous `7`).
    pub regular_files: u64,
    /// Sum of regular-file sizes.
    pub logical_bytes: u64,
    /// sha256 (hex) of every regular file's content, deduplicated.
    pub digests: BTreeSet<String>,
}

impl LayerFiles {
    /// Add another set of layers' figures.
    pub fn merge(&mut self, other: LayerFiles) {
        self.entries += other.entries;
        self.regular_files += other.regular_files;
        self.logical_bytes += other.logical_bytes;
        self.digests.extend(other.digests);
    }

    /// Distinct non-empty contents (the empty file needs no object).
    pub fn distinct_nonempty(&self) -> usize {
        let empty = crate::sha256_hex(b"");
        self.digests.iter().filter(|d| **d != empty).count()
    }

    /// Whether some regular file is empty.
    pub fn has_empty_file(&self) -> bool {
        self.digests.contains(&crate::sha256_hex(b""))
    }
}

/// Open a layer blob's uncompressed tar stream by its media type.
pub fn layer_reader(layout: &OciLayout, layer: &Descriptor) -> Box<dyn Read> {
    let file = std::fs::File::open(layout.blob_path(&layer.digest)).expect("layer blob");
    let mt = layer.media_type.as_str();
    if mt.ends_with("+gzip") || mt.ends_with(".gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else if mt.ends_with("+zstd") || mt.ends_with(".zstd") {
        Box::new(zstd::stream::read::Decoder::new(file).expect("zstd"))
    } else {
        Box::new(std::io::BufReader::new(file))
    }
}

/// A dedup archive body's tar stream: gzip (possibly several members) or
/// zstd (possibly several frames), told apart by their magic numbers.
/// Returns the codec's name and the decoded stream.
pub fn decode_archive<'a, R: std::io::BufRead + 'a>(
    mut r: R,
) -> std::io::Result<(&'static str, Box<dyn Read + 'a>)> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(("gzip", Box::new(flate2::read::MultiGzDecoder::new(r))))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok((
            "zstd",
            Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        ))
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "archive body is neither gzip nor zstd (starts {:02x?})",
                &head[..head.len().min(4)]
            ),
        ))
    }
}

/// Walk one layer's tar and hash every regular file.
pub fn layer_files(layout: &OciLayout, layer: &Descriptor) -> LayerFiles {
    let mut out = LayerFiles::default();
    let mut archive = tar::Archive::new(layer_reader(layout, layer));
    for entry in archive.entries().expect("tar entries") {
        let entry = entry.expect("tar entry");
        out.entries += 1;
        let t = entry.header().entry_type();
        if t.is_file() || t == tar::EntryType::Continuous {
            out.regular_files += 1;
            out.logical_bytes += entry.size();
            out.digests
                .insert(crate::sha256_reader(entry).expect("read tar entry"));
        }
    }
    out
}

/// The figures over every distinct layer of the given tags of a layout.
pub fn image_files(layout: &OciLayout, tags: &[&str]) -> LayerFiles {
    let mut seen = BTreeSet::new();
    let mut all = LayerFiles::default();
    for tag in tags {
        for layer in layout.layers(tag) {
            if seen.insert(layer.digest.clone()) {
                all.merge(layer_files(layout, &layer));
            }
        }
    }
    all
}

/// The same figures counted by another tar implementation: Python's
/// `tarfile` (`tests/oracle/tar_count.py`, run with `python3`), over every
/// distinct layer of `tags`. Independent of both the registry's ingest and
/// [`image_files`] (which use the `tar` crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarfileCount {
    /// Tar members.
    pub entries: u64,
    /// Regular files.
    pub regular_files: u64,
    /// Sum of regular-file sizes.
    pub logical_bytes: u64,
    /// Distinct non-empty contents.
    pub distinct_nonempty: u64,
    /// Their bytes (each distinct content once).
    pub distinct_bytes: u64,
}

/// The distinct non-empty file contents (sha256 hex) of the layers of
/// `tags`, by the Python `tarfile` oracle.
pub fn tarfile_digests(layout: &OciLayout, tags: &[&str]) -> BTreeSet<String> {
    let v = tarfile_json(layout, tags, true);
    v["digests"]
        .as_array()
        .unwrap_or_else(|| panic!("tar_count.py --digests: no `digests` in {v}"))
        .iter()
        .map(|d| d.as_str().expect("digest string").to_owned())
        .collect()
}

/// Run the Python `tarfile` oracle over the distinct layers of `tags`.
pub fn tarfile_count(layout: &OciLayout, tags: &[&str]) -> TarfileCount {
    let v = tarfile_json(layout, tags, false);
    let get = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("tar_count.py: no `{k}` in {v}"))
    };
    TarfileCount {
        entries: get("entries"),
        regular_files: get("regular_files"),
        logical_bytes: get("logical_bytes"),
        distinct_nonempty: get("distinct_nonempty"),
        distinct_bytes: get("distinct_bytes"),
    }
}

fn tarfile_json(layout: &OciLayout, tags: &[&str], digests: bool) -> serde_json::Value {
    let mut seen = BTreeSet::new();
    let mut paths = Vec::new();
    for tag in tags {
        for layer in layout.layers(tag) {
            if seen.insert(layer.digest.clone()) {
                paths.push(layout.blob_path(&layer.digest));
            }
        }
    }
    let script = crate::bins::workspace_root().join("tests/oracle/tar_count.py");
    let out = crate::run_ok(
        std::process::Command::new("python3")
            .arg(&script)
            .args(digests.then_some("--digests"))
            .args(&paths),
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{} printed no JSON ({e}): {}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A regular file read from a layer tar, with the header fields an edit
/// needs to put it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Path as the tar names it, without a leading `./` or `/`.
    pub path: String,
    /// Content.
    pub data: Vec<u8>,
    /// Permission bits (and setuid/setgid/sticky) from the header.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time (seconds).
    pub mtime: u64,
}

/// The largest regular file of `layer` whose path `keep` accepts.
pub fn largest_file_in(
    layout: &OciLayout,
    layer: &Descriptor,
    keep: impl Fn(&str) -> bool,
) -> Option<LayerFile> {
    let mut best: Option<LayerFile> = None;
    let mut archive = tar::Archive::new(layer_reader(layout, layer));
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let h = entry.header();
        let path = entry
            .path()
            .expect("tar path")
            .to_string_lossy()
            .into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_owned();
        let bigger = best
            .as_ref()
            .is_none_or(|b| entry.size() > b.data.len() as u64);
        if !h.entry_type().is_file() || !bigger || !keep(&path) {
            continue;
        }
        let (mode, uid, gid, mtime) = (
            h.mode().expect("mode"),
            h.uid().expect("uid"),
            h.gid().expect("gid"),
            h.mtime().expect("mtime"),
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read tar entry");
        best = Some(LayerFile {
            path,
            data,
            mode,
            uid,
            gid,
            mtime,
        });
    }
    best
}

/// The largest regular file over every layer of `tag`.
pub fn largest_file(layout: &OciLayout, tag: &str) -> LayerFile {
    layout
        .layers(tag)
        .iter()
        .filter_map(|l| largest_file_in(layout, l, |_| true))
        .max_by_key(|f| f.data.len())
        .expect("a regular file")
}
