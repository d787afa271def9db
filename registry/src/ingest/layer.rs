//! Ingest of one layer blob: decompress, walk the tar once (streaming,
//! with the registry's reader [`crate::tar::TarReader`], which hands out
//! each entry's original header bytes), stage new objects, verify the
//! diff_id, then record the entry index and publish the objects together.

use super::IngestError;
use crate::compression::decompressor;
use crate::hashing::HashReader;
use crate::store::index::{
    self, entry_key, layer_object_key, open_read, EntryKind, EntryRecord, LayerMeta, RawHeader,
    Trailer,
};
use crate::store::objects::{self, ObjectMeta, ObjectStore, Staging, OBJECTS_META};
use crate::tar::{RawEntry, TarReader};
use layerlink_proto::archive::PAX_PREFIX;
use layerlink_proto::limits::MAX_LAYER_ENTRIES;
use layerlink_proto::{Digest, Sha256};
use redb::{ReadableDatabase as _, ReadableTable as _};
use sha2::Digest as _;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};

/// Files up to this size are hashed in memory before being compressed
/// (and only when new); larger ones stream through a compressor to a temp
/// file.
const SMALL_FILE: u64 = 1024 * 1024;
/// Largest non-zero trailer kept for an exact rebuild.
const MAX_TRAILER_KEPT: usize = 1024 * 1024;

/// What [`ingest_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerOutcome {
    /// The layer was indexed now.
    Ingested(LayerMeta),
    /// The layer was already indexed (only the blob → diff_id link was added).
    AlreadyIngested,
}

/// sha256 and size of a layer's uncompressed content (to link a second
/// blob of a known diff_id).
pub fn uncompressed_digest(reader: impl Read, media_type: &str) -> io::Result<(Digest, u64)> {
    let mut r = HashReader::new(decompressor(reader, media_type)?);
    io::copy(&mut r, &mut io::sink())?;
    let (_, digest, len) = r.finish();
    Ok((digest, len))
}

struct Walk<'a> {
    layer: Digest,
    staging: Staging,
    store: &'a ObjectStore,
    known: Option<redb::ReadOnlyTable<&'static [u8; 32], &'static [u8]>>,
    spill: BufWriter<File>,
    /// Distinct objects of the layer and their sizes.
    distinct: HashMap<Digest, u64>,
    records: u32,
    entries: u32,
    regular_files: u32,
    file_bytes: u64,
    buf: Vec<u8>,
}

impl Walk<'_> {
    fn corrupt(&self, message: impl std::fmt::Display) -> IngestError {
        IngestError::Corrupt {
            layer: self.layer,
            message: message.to_string(),
        }
    }

    fn is_known(&self, d: &Digest) -> Result<bool, IngestError> {
        if self.staging.contains(d) {
            return Ok(true);
        }
        let Some(t) = &self.known else {
            return Ok(false);
        };
        let in_meta = t.get(&d.0).map_err(IngestError::store)?.is_some();
        Ok(in_meta && self.store.exists(d))
    }

    /// Read an entry's content: hash it, stage it when new. Returns its digest.
    fn content(
        &mut self,
        r: &mut impl Read,
        size: u64,
        path: &[u8],
    ) -> Result<Digest, IngestError> {
        let short = |got: u64| IngestError::Corrupt {
            layer: self.layer,
            message: format!(
                "entry {:?} is truncated ({got} of {size} bytes)",
                String::from_utf8_lossy(path)
            ),
        };
        let mut h = Sha256::new();
        if size <= SMALL_FILE {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let got = r
                .take(size)
                .read_to_end(&mut buf)
                .map_err(|e| self.corrupt(e))? as u64;
            if got != size {
                return Err(short(got));
            }
            h.update(&buf);
            let d = Digest::from_hasher(h);
            if !self.is_known(&d)? {
                self.staging
                    .put_bytes(d, &buf)
                    .map_err(IngestError::store)?;
            }
            self.buf = buf;
            return Ok(d);
        }
        let mut w = self.staging.begin_stream().map_err(IngestError::store)?;
        let mut chunk = vec![0u8; 128 * 1024];
        let mut got = 0u64;
        while got < size {
            let want = chunk.len().min((size - got) as usize);
            let n = r.read(&mut chunk[..want]).map_err(|e| self.corrupt(e))?;
            if n == 0 {
                let _ = self.staging.discard_stream(w);
                return Err(short(got));
            }
            h.update(&chunk[..n]);
            w.write_all(&chunk[..n]).map_err(IngestError::store)?;
            got += n as u64;
        }
        let d = Digest::from_hasher(h);
        if self.is_known(&d)? {
            self.staging.discard_stream(w).map_err(IngestError::store)?;
        } else {
            self.staging
                .finish_stream(w, d)
                .map_err(IngestError::store)?;
        }
        Ok(d)
    }

    fn push(&mut self, rec: &EntryRecord) -> Result<(), IngestError> {
        let bytes = postcard::to_allocvec(rec).map_err(IngestError::store)?;
        self.spill
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .and_then(|_| self.spill.write_all(&bytes))
            .map_err(IngestError::store)?;
        self.records += 1;
        if rec.kind.is_sent() {
            self.entries += 1;
        }
        if rec.kind == EntryKind::File {
            self.regular_files += 1;
            self.file_bytes += rec.size;
        }
        if let Some(d) = rec.object {
            self.distinct.insert(d, rec.size);
        }
        Ok(())
    }
}

/// Ingest one layer blob (`reader` yields the blob as pushed) whose config
/// says `diff_id`. On success the layer's entries, objects and meta are
/// recorded in one transaction; on any error nothing is recorded and no
/// object is published. Blocking.
pub fn ingest_layer(
    db: &redb::Database,
    store: &ObjectStore,
    blob: &Digest,
    media_type: &str,
    diff_id: &Digest,
    reader: impl Read,
) -> Result<LayerOutcome, IngestError> {
    let layer = *blob;
    let corrupt = |m: String| IngestError::Corrupt { layer, message: m };
    let inner = decompressor(reader, media_type).map_err(|e| corrupt(e.to_string()))?;
    let compression = inner.compression();
    let staging = store.stage().map_err(IngestError::store)?;
    let spill_path = staging.dir().join("entries.spill");
    let spill = BufWriter::new(File::create(&spill_path).map_err(IngestError::store)?);
    let read_txn = db.begin_read().map_err(IngestError::store)?;
    let known = open_read(&read_txn, OBJECTS_META).map_err(IngestError::store)?;
    let mut w = Walk {
        layer,
        staging,
        store,
        known,
        spill,
        distinct: HashMap::new(),
        records: 0,
        entries: 0,
        regular_files: 0,
        file_bytes: 0,
        buf: Vec::new(),
    };

    // Everything the tar reader reads is hashed (the diff_id) and counted.
    let mut tar = TarReader::new(HashReader::new(inner));
    let bad_tar = |e: io::Error| corrupt(format!("bad tar: {e}"));
    // Where the last entry's data and padding end: the trailer starts there.
    let end = loop {
        tar.skip_rest().map_err(bad_tar)?;
        let here = tar.offset();
        let Some(entry) = tar.next_entry().map_err(bad_tar)? else {
            break here;
        };
        if u64::from(w.records) >= MAX_LAYER_ENTRIES {
            return Err(IngestError::Unsupported {
                layer,
                message: format!("more than {MAX_LAYER_ENTRIES} entries"),
            });
        }
        let rec = record(&entry, &mut tar, &mut w, layer)?;
        w.push(&rec)?;
    };
    let mut exact = tar.padding_was_zero();

    // The end-of-archive block (already read, all zero) and whatever
    // follows it: kept when not all zero and small enough.
    let end_block = tar.offset() - end;
    let mut rest = tar.into_inner();
    let mut kept = vec![0u8; end_block as usize];
    let mut overflow = false;
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        let n = match rest.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(format!("bad compressed stream: {e}"))),
        };
        if kept.len() + n <= MAX_TRAILER_KEPT {
            kept.extend_from_slice(&sink[..n]);
        } else {
            overflow = true;
        }
    }
    let len = rest.len() - end;
    let trailer = if overflow {
        exact = false;
        Trailer { len, data: None }
    } else if kept.iter().all(|&b| b == 0) {
        Trailer { len, data: None }
    } else {
        Trailer {
            len,
            data: Some(kept),
        }
    };
    let (_, found, tar_size) = rest.finish();
    if found != *diff_id {
        return Err(IngestError::DiffIdMismatch {
            layer,
            expected: *diff_id,
            found,
        });
    }
    drop(read_txn);

    let Walk {
        mut staging,
        spill,
        distinct,
        records,
        entries,
        regular_files,
        file_bytes,
        ..
    } = w;
    spill
        .into_inner()
        .map_err(|e| IngestError::store(e.into_error()))?;
    let meta = LayerMeta {
        blob: layer,
        compression,
        tar_size,
        records,
        entries,
        regular_files,
        file_bytes,
        distinct_objects: distinct.len() as u32,
        new_objects: 0,
        trailer,
        exact,
        ingested_at: crate::clock::now_secs(),
    };
    commit(db, &mut staging, &spill_path, diff_id, meta, &distinct)
}

/// Build the record of one entry and store its content.
fn record<R: Read>(
    e: &RawEntry,
    tar: &mut TarReader<R>,
    w: &mut Walk<'_>,
    layer: Digest,
) -> Result<EntryRecord, IngestError> {
    let corrupt = |m: String| IngestError::Corrupt { layer, message: m };
    let name = || String::from_utf8_lossy(&e.path).into_owned();
    let type_flag = e.typ;
    let kind = EntryKind::from_type_flag(type_flag);
    if type_flag == b'S' || e.pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
        return Err(IngestError::Unsupported {
            layer,
            message: format!(
                "entry {:?} is a GNU sparse file; sparse files are not supported",
                name()
            ),
        });
    }
    let h = e.header();
    let bad = |what: &str| corrupt(format!("entry {:?}: bad {what} field", name()));
    let mode = h.mode().ok_or_else(|| bad("mode"))?;
    let uid = match e.pax_u64(b"uid") {
        Some(u) => u,
        None => h.uid().ok_or_else(|| bad("uid"))?,
    };
    let gid = match e.pax_u64(b"gid") {
        Some(g) => g,
        None => h.gid().ok_or_else(|| bad("gid"))?,
    };
    let mtime = match e.pax_mtime() {
        Some(m) => m,
        None => h.mtime().ok_or_else(|| bad("mtime"))?,
    };
    let uname = e.pax_get(b"uname").unwrap_or(h.uname()).to_vec();
    let gname = e.pax_get(b"gname").unwrap_or(h.gname()).to_vec();
    let device = |n: Option<u64>, what: &str| match n.map(u32::try_from) {
        Some(Ok(n)) => Ok(n),
        _ if matches!(kind, EntryKind::Char | EntryKind::Block) => Err(bad(what)),
        _ => Ok(0),
    };
    let dev_major = device(h.dev_major(), "device major")?;
    let dev_minor = device(h.dev_minor(), "device minor")?;
    let object = if e.size > 0 {
        Some(w.content(&mut tar.data(), e.size, &e.path)?)
    } else {
        None
    };
    let mut rec = EntryRecord {
        path: e.path.clone(),
        kind,
        type_flag,
        mode,
        uid,
        gid,
        uname,
        gname,
        mtime,
        link: e.link.clone(),
        dev_major,
        dev_minor,
        size: e.size,
        object,
        pax: e
            .pax
            .iter()
            .filter(|(k, _)| !k.starts_with(PAX_PREFIX.as_bytes()))
            .cloned()
            .collect(),
        raw: RawHeader::Canonical,
    };
    rec.raw = RawHeader::diff(&rec.canonical_header(), &e.original_header());
    Ok(rec)
}

/// Record the layer and publish its staged objects.
pub(super) fn commit(
    db: &redb::Database,
    staging: &mut Staging,
    spill_path: &std::path::Path,
    diff_id: &Digest,
    mut meta: LayerMeta,
    distinct: &HashMap<Digest, u64>,
) -> Result<LayerOutcome, IngestError> {
    let txn = db.begin_write().map_err(IngestError::store)?;
    {
        let mut blobs = txn.open_table(index::BLOBS).map_err(IngestError::store)?;
        blobs
            .insert(&meta.blob.0, &diff_id.0)
            .map_err(IngestError::store)?;
        let mut layers = txn.open_table(index::LAYERS).map_err(IngestError::store)?;
        if layers
            .get(&diff_id.0)
            .map_err(IngestError::store)?
            .is_some()
        {
            drop((blobs, layers));
            txn.commit().map_err(IngestError::store)?;
            return Ok(LayerOutcome::AlreadyIngested);
        }
        let mut entries = txn.open_table(index::ENTRIES).map_err(IngestError::store)?;
        let mut spill = BufReader::new(File::open(spill_path).map_err(IngestError::store)?);
        let mut len = [0u8; 4];
        let mut buf = Vec::new();
        for n in 0..meta.records {
            spill.read_exact(&mut len).map_err(IngestError::store)?;
            buf.resize(u32::from_le_bytes(len) as usize, 0);
            spill.read_exact(&mut buf).map_err(IngestError::store)?;
            entries
                .insert(&entry_key(diff_id, n)[..], buf.as_slice())
                .map_err(IngestError::store)?;
        }
        let mut lo = txn
            .open_table(index::LAYER_OBJECTS)
            .map_err(IngestError::store)?;
        let mut om = txn.open_table(OBJECTS_META).map_err(IngestError::store)?;
        for (d, size) in distinct {
            lo.insert(&layer_object_key(diff_id, d)[..], ())
                .map_err(IngestError::store)?;
            let current = om
                .get(&d.0)
                .map_err(IngestError::store)?
                .and_then(|v| objects::decode_meta(v.value()));
            let next = match current {
                Some(m) => ObjectMeta {
                    layers: m.layers + 1,
                    ..m
                },
                None => {
                    meta.new_objects += 1;
                    ObjectMeta {
                        size: *size,
                        stored_size: staging.stored_size(d).unwrap_or(0),
                        layers: 1,
                    }
                }
            };
            let bytes = postcard::to_allocvec(&next).map_err(IngestError::store)?;
            om.insert(&d.0, bytes.as_slice())
                .map_err(IngestError::store)?;
        }
        let bytes = postcard::to_allocvec(&meta).map_err(IngestError::store)?;
        layers
            .insert(&diff_id.0, bytes.as_slice())
            .map_err(IngestError::store)?;
    }
    // Objects first: a crash before the commit leaves unnamed files only.
    staging.publish().map_err(IngestError::store)?;
    txn.commit().map_err(IngestError::store)?;
    Ok(LayerOutcome::Ingested(meta))
}
