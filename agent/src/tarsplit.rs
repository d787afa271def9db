//! Layer verification against the image's diff_ids ("tar-split").
//!
//! The plan names each layer by its diff_id, the sha256 of its uncompressed
//! tar, and the config's `rootfs.diff_ids` list them; but a layer tree is
//! built from a dedup archive, file by file, so nothing in the archive
//! itself proves that the tree is that tar. The registry therefore serves
//! each layer's **framing** (`POST /layerlink/v1/framing`, `proto/SPEC.md`
//! "Layer framing"): every byte of the tar except the contents of regular
//! files, which it names by size. Before a layer is committed
//! ([`crate::apply`] calls [`LayerCheck::verify`] from its commit) the agent
//! recomputes the tar's sha256 from the framing and the **files of the
//! built tree**, and refuses the layer (exit 5, nothing committed) when it
//! is not the diff_id.
//!
//! What that proves: each header record is parsed with the agent's own tar
//! reader ([`crate::tar`]), exactly one entry per record, so the framing
//! cannot move a boundary; a regular file's content is read from the tree at
//! the path its (hashed) header names, through the same path rules and
//! `O_NOFOLLOW` opens as the apply, and must be a regular file of the
//! header's size. So when the hash matches, every regular file of the tree
//! named by the layer's tar holds the bytes the tar gives it — the content
//! *is* the tree's, not a copy of the store, so no separate object check
//! is needed (a tree file is a hard link to its object). An entry that a
//! later entry of the same path replaces (flag `shadowed`) is not in the
//! tree: its content is read from the store by the object the framing
//! names (the only contents the framing names by digest: 32 bytes a file
//! would be two thirds of a compressed framing), and the claim is checked —
//! a later header must have that path.
//!
//! What it does not prove: metadata (mode, owner, times, xattrs, link
//! targets) of the tree against the headers, and the absence of extra
//! paths the archive added; those come from the archive's headers, which
//! the registry renders from the same index rows.
//!
//! Framings are fetched before the archive (decompressed into
//! `tmp/framing-<hex>`, so no second zstd decoder is alive while the
//! archive streams) and read back with a 64 KiB buffer: memory stays flat.
//! Cost: one more read and sha256 of every regular file of a new layer
//! (README, "Layer verification").

use crate::client::Remote;
use crate::error::{Error, Result};
use crate::fsops::{self, show};
use crate::store::objects::ObjectWriter;
use crate::store::Store;
use crate::tar::{Kind, TarReader};
use layerlink_proto::archive::{normalize_entry_path, Encoding, PathError};
use layerlink_proto::framing::{
    self as fr, FramingError, FramingRequest, Record, MAX_TRAILER_BYTES,
};
use layerlink_proto::limits::MAX_LAYER_ENTRIES;
use layerlink_proto::Digest;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

/// The `verify_layers` setting. Default `off`: without a trust policy the
/// diff_ids come from the same registry as the files (it could name other
/// ones), so the check only guards against the registry's own corruption,
/// and a framing costs ~130 KB on the wire for a 6,700-entry layer — more
/// than the whole update of some of the project's scenarios (README,
/// "Layer verification cost"). With a trust policy (`--trust-key`) the
/// default is `require`: the signed config's diff_ids are then what each
/// layer tree must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyLayers {
    /// Do not fetch framings.
    #[default]
    Off,
    /// Verify every layer the registry has a framing for; warn about the
    /// others (a registry without the endpoint, a layer whose tar the
    /// index cannot reproduce).
    On,
    /// Verify every layer; a layer without a framing is refused (exit 5).
    Require,
}

impl VerifyLayers {
    /// Parse `on`, `off`, `require` (also `true`/`false`).
    pub fn parse(s: &str) -> Option<VerifyLayers> {
        match s {
            "on" | "true" => Some(VerifyLayers::On),
            "off" | "false" => Some(VerifyLayers::Off),
            "require" => Some(VerifyLayers::Require),
            _ => None,
        }
    }
}

/// Most bytes of a decompressed framing kept in `tmp/` (a layer of
/// [`MAX_LAYER_ENTRIES`] entries with ordinary headers fits).
const MAX_FRAMING_BYTES: u64 = 4 << 30;
/// Read buffer of the framing file, and of the files hashed: small, as
/// they are live while the archive's decoder is (peak RSS; 16 KiB reads
/// cost no measurable CPU over 64 KiB ones next to SHA-256).
const SRC_BUF: usize = 8 * 1024;
const READ_BUF: usize = 16 * 1024;
/// Most entries marked `shadowed` whose later entry has not come yet.
const MAX_SHADOWED: usize = 4096;

/// The framings an apply checks its layers against (empty: no check).
#[derive(Debug, Clone, Default)]
pub struct LayerCheck {
    /// (layer, name of its decompressed framing in `tmp/`).
    pub framings: Vec<(Digest, String)>,
}

fn framing_name(d: &Digest) -> String {
    format!("framing-{}", d.hex())
}

/// Fetch the framings of `layers` (of manifest `manifest_digest` in
/// `repository`) into `tmp/`. A layer the registry has none for (404) is
/// refused under [`VerifyLayers::Require`], else left unchecked with a
/// warning on stderr.
pub fn fetch(
    store: &Store,
    remote: &mut dyn Remote,
    mode: VerifyLayers,
    repository: &str,
    manifest_digest: Digest,
    layers: &[Digest],
) -> Result<LayerCheck> {
    let mut check = LayerCheck::default();
    if mode == VerifyLayers::Off {
        return Ok(check);
    }
    for d in layers {
        let req = FramingRequest {
            repository: repository.to_string(),
            manifest_digest,
            layer: *d,
        };
        let mut dl = match remote.framing(&req) {
            Ok(dl) => dl,
            Err(Error::Server {
                status: 404,
                message,
                ..
            }) => {
                if mode == VerifyLayers::Require {
                    return Err(Error::integrity(format!(
                        "layer {d}: the registry has no framing for it, so it cannot be \
                         verified against its diff_id (verify_layers = require): {message}"
                    )));
                }
                eprintln!("warning: layer {d} is not verified against its diff_id: {message}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let name = framing_name(d);
        let mut out = fsops::create_file_at(store.tmp_fd(), name.as_bytes(), 0o600)
            .map_err(|e| Error::errno(format!("creating tmp/{name}"), e))?;
        let mut dec = crate::codec::ArchiveDecoder::new(&mut dl.body, Some(Encoding::Zstd))
            .map_err(|e| framing_stream_error(d, e))?;
        let mut buf = vec![0u8; fsops::COPY_BUF];
        let mut total = 0u64;
        loop {
            let n = match dec.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(framing_stream_error(d, e)),
            };
            total += n as u64;
            if total > MAX_FRAMING_BYTES {
                return Err(Error::integrity(format!(
                    "layer {d}: framing larger than {MAX_FRAMING_BYTES} bytes"
                )));
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(format!("writing tmp/{name}"), e))?;
        }
        check.framings.push((*d, name));
    }
    Ok(check)
}

fn framing_stream_error(d: &Digest, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            Error::integrity(format!("layer {d}: corrupt framing stream: {e}"))
        }
        _ => Error::Transient(format!("layer {d}: framing stream interrupted: {e}")),
    }
}

impl LayerCheck {
    /// Verify the built tree `root` of layer `diff_id` against its framing,
    /// if one was fetched. `Ok(None)`: no framing, not checked.
    pub fn verify(
        &self,
        store: &Store,
        diff_id: &Digest,
        root: BorrowedFd<'_>,
    ) -> Result<Option<Verified>> {
        let Some((_, name)) = self.framings.iter().find(|(d, _)| d == diff_id) else {
            return Ok(None);
        };
        let open = || {
            fsops::open_file_at(store.tmp_fd(), name.as_bytes())
                .map_err(|e| Error::errno(format!("opening tmp/{name}"), e))
        };
        let r = verify_tree(store, diff_id, root, open()?)?;
        if r.digest == *diff_id {
            let _ = fsops::remove_at(store.tmp_fd(), name.as_bytes());
            return Ok(Some(r));
        }
        Err(Error::integrity(format!(
            "layer {diff_id}: the built tree hashes to {}, not to its diff_id (the \
             registry's files or headers are not the layer's); the layer is not committed",
            r.digest
        )))
    }
}

/// What a verification read.
#[derive(Debug, Clone)]
pub struct Verified {
    /// sha256 of the recomputed tar.
    pub digest: Digest,
    /// Tar entries.
    pub entries: u64,
    /// Content bytes read from the tree (or the store, for shadowed
    /// entries).
    pub content_bytes: u64,
}

/// Buffered source over the framing file: single bytes for the record
/// reader, bulk reads for header bytes.
struct Src<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    err: Option<io::Error>,
}

impl<R: Read> Src<R> {
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        loop {
            match self.r.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn byte(&mut self) -> Option<u8> {
        match self.fill() {
            Ok(true) => {
                self.pos += 1;
                Some(self.buf[self.pos - 1])
            }
            Ok(false) => None,
            Err(e) => {
                self.err = Some(e);
                None
            }
        }
    }
}

impl<R: Read> Read for Src<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// At most `left` bytes of `inner`, each also fed to `hasher`.
struct Hashed<'a, R> {
    inner: &'a mut R,
    left: u64,
    hasher: &'a mut Sha256,
}

impl<R: Read> Read for Hashed<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = (out.len() as u64).min(self.left) as usize;
        let n = self.inner.read(&mut out[..want])?;
        self.hasher.update(&out[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

const ZEROS: [u8; 512] = [0; 512];

fn pad(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// Recompute the tar of layer `diff_id` from `framing` (decompressed) and
/// the tree `root`; returns its sha256 (the caller compares).
pub fn verify_tree(
    store: &Store,
    diff_id: &Digest,
    root: BorrowedFd<'_>,
    framing: impl Read,
) -> Result<Verified> {
    let bad = |msg: String| Error::integrity(format!("layer {diff_id}: bad framing: {msg}"));
    let ferr = |e: FramingError, src_err: &mut Option<io::Error>| match src_err.take() {
        Some(io) => Error::io(format!("reading the framing of layer {diff_id}"), io),
        None => bad(e.to_string()),
    };
    let mut src = Src {
        r: framing,
        buf: vec![0; SRC_BUF],
        pos: 0,
        len: 0,
        err: None,
    };
    let start = fr::read_start(&mut || src.byte());
    let start = start.map_err(|e| ferr(e, &mut src.err))?;
    if start != *diff_id {
        return Err(bad(format!("it is the framing of layer {start}")));
    }
    // Made only for a shadowed entry (it carries a 64 KiB buffer).
    let mut objects: Option<ObjectWriter<'_>> = None;
    let mut hasher = Sha256::new();
    let mut out = Verified {
        digest: Digest([0; 32]),
        entries: 0,
        content_bytes: 0,
    };
    let mut buf = vec![0u8; READ_BUF];
    // The regular file whose content record must come next: (path, size).
    let mut want: Option<(Vec<u8>, u64)> = None;
    // Shadowed entries whose later entry has not come yet.
    let mut shadowed: Vec<Vec<u8>> = Vec::new();
    loop {
        let rec = fr::read_record(&mut || src.byte());
        let rec = rec.map_err(|e| ferr(e, &mut src.err))?;
        match rec {
            Record::Header { len } => {
                if let Some((p, _)) = &want {
                    return Err(bad(format!("no content record for {:?}", show(p))));
                }
                let mut take = Hashed {
                    inner: &mut src,
                    left: len,
                    hasher: &mut hasher,
                };
                let h = {
                    let mut tr = TarReader::new(&mut take);
                    match tr.next_header() {
                        Ok(Some(h)) => h,
                        Ok(None) => {
                            return Err(bad("end-of-archive inside a header record".into()))
                        }
                        Err(e) => return Err(bad(format!("header record: {e}"))),
                    }
                };
                if take.left != 0 {
                    return Err(bad("a header record holds more than one entry".into()));
                }
                out.entries += 1;
                if out.entries > MAX_LAYER_ENTRIES {
                    return Err(bad("too many entries".into()));
                }
                let path = match normalize_entry_path(&h.path) {
                    Ok(p) => p,
                    // "./": the layer root.
                    Err(PathError::Empty) => Vec::new(),
                    Err(e) => return Err(bad(format!("entry {:?}: {e:?}", show(&h.path)))),
                };
                shadowed.retain(|p| *p != path);
                if h.size > 0 {
                    if h.kind != Kind::Regular {
                        return Err(bad(format!(
                            "entry {:?} of type {:?} carries content",
                            show(&path),
                            h.kind
                        )));
                    }
                    want = Some((path, h.size));
                }
            }
            Record::Content { size, shadowed: by } => {
                let Some((path, wsize)) = want.take() else {
                    return Err(bad("a content record without a file header".into()));
                };
                if size != wsize {
                    return Err(bad(format!(
                        "content record of {size} bytes for {:?}, whose header says {wsize}",
                        show(&path)
                    )));
                }
                let file = if let Some(object) = by {
                    if shadowed.len() >= MAX_SHADOWED {
                        return Err(bad("too many shadowed entries".into()));
                    }
                    let objects = objects.get_or_insert_with(|| ObjectWriter::new(store));
                    let f = objects.open_any(&object)?.ok_or_else(|| {
                        Error::integrity(format!(
                            "layer {diff_id}: object {object} of the replaced entry {:?} is not in the store",
                            show(&path)
                        ))
                    })?;
                    shadowed.push(path.clone());
                    f
                } else {
                    open_tree_file(root, &path).map_err(|m| {
                        Error::integrity(format!("layer {diff_id}: {:?}: {m}", show(&path)))
                    })?
                };
                let st = rustix::fs::fstat(&file).map_err(|e| Error::errno("fstat", e))?;
                if fsops::file_type(&st) != rustix::fs::FileType::RegularFile
                    || st.st_size as u64 != size
                {
                    return Err(Error::integrity(format!(
                        "layer {diff_id}: {:?} is not a regular file of {size} bytes in the built tree",
                        show(&path)
                    )));
                }
                let mut left = size;
                let mut f = &file;
                while left > 0 {
                    let n = (buf.len() as u64).min(left) as usize;
                    let got = match f.read(&mut buf[..n]) {
                        Ok(0) => {
                            return Err(Error::integrity(format!(
                                "layer {diff_id}: {:?} is shorter than {size} bytes",
                                show(&path)
                            )))
                        }
                        Ok(g) => g,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Error::io(format!("reading {:?}", show(&path)), e)),
                    };
                    hasher.update(&buf[..got]);
                    left -= got as u64;
                }
                hasher.update(&ZEROS[..pad(size)]);
                out.content_bytes += size;
            }
            Record::End { len, data } => {
                if let Some((p, _)) = &want {
                    return Err(bad(format!("no content record for {:?}", show(p))));
                }
                debug_assert!(len <= MAX_TRAILER_BYTES);
                let mut left = len;
                let mut at = 0u64;
                while left > 0 {
                    let n = (buf.len() as u64).min(left) as usize;
                    if data {
                        src.read_exact(&mut buf[..n])
                            .map_err(|_| bad("truncated trailer".into()))?;
                    } else {
                        buf[..n].fill(0);
                    }
                    // The end-of-archive blocks: nothing may hide after the
                    // last entry that a tar reader would still read.
                    let zero_part = (1024u64.saturating_sub(at)).min(n as u64) as usize;
                    if buf[..zero_part].iter().any(|&b| b != 0) {
                        return Err(bad(
                            "the trailer does not start with end-of-archive blocks".into()
                        ));
                    }
                    hasher.update(&buf[..n]);
                    at += n as u64;
                    left -= n as u64;
                }
                if src.byte().is_some() || src.err.is_some() {
                    return Err(bad("bytes after the end record".into()));
                }
                if let Some(p) = shadowed.first() {
                    return Err(bad(format!(
                        "{:?} is marked as replaced by a later entry, but none follows",
                        show(p)
                    )));
                }
                out.digest = Digest::from_hasher(hasher);
                return Ok(out);
            }
        }
    }
}

/// Open the regular file at normalised `path` below `root`, without
/// following symlinks.
fn open_tree_file(root: BorrowedFd<'_>, path: &[u8]) -> std::result::Result<File, String> {
    let (parent, leaf) = fsops::split_leaf(path);
    let dir = fsops::open_existing_dir(root, parent)?;
    fsops::open_file_at(dir.as_fd(), leaf).map_err(|e| format!("not in the built tree ({e})"))
}
