//! Per-layer entry index and object tables.
//!
//! Every ingested layer (keyed by its diff_id) has one [`LayerMeta`] row and
//! one [`EntryRecord`] row per tar entry, in tar order, so a layer's entries
//! can be walked without loading them all. redb tables (all in the shared
//! database):
//!
//! | table | key | value |
//! |---|---|---|
//! | `index_layers` | diff_id | postcard [`LayerMeta`] |
//! | `index_entries` | diff_id ‖ entry number (u32 BE) | postcard [`EntryRecord`] |
//! | `index_layer_objects` | diff_id ‖ object digest | `()` — distinct objects of a layer |
//! | `index_blobs` | compressed blob digest | diff_id |
//! | `objects_meta` (see [`crate::store::objects`]) | object digest | postcard [`ObjectMeta`](crate::store::objects::ObjectMeta) |
//!
//! A layer's rows are written in one transaction when its ingest succeeds,
//! so a layer is either fully indexed or absent.
//!
//! **Rebuilding a layer.** [`rebuild_layer_tar`] writes a layer's tar back
//! from its rows and objects. Each entry's header bytes are rendered from
//! the record ([`EntryRecord::canonical_header`]); where the original
//! header bytes differed (another tar writer's conventions, GNU long-name
//! entries, dropped `LAYERLINK.*` keys, …) the record keeps how they
//! differed ([`RawHeader`]), so an unedited layer is rebuilt byte for byte
//! (same diff_id) unless [`LayerMeta::exact`] is false (non-zero padding or
//! a huge non-zero trailer after the end of the archive). An edited entry
//! must set [`EntryRecord::raw`] to [`RawHeader::Canonical`].

mod rebuild;

pub use rebuild::{rebuild_layer_tar, rebuild_layer_tar_with};

use crate::store::objects::{self, ObjectStore, OBJECTS_META};
use crate::store::storage::Storage;
use crate::tar::{self as tarfmt, Fields};
use layerlink_proto::Digest;
use redb::{ReadableDatabase as _, ReadableTable as _};
use serde::{Deserialize, Serialize};

pub use crate::tar::{PaxRecord, PaxRecords};

/// diff_id → postcard [`LayerMeta`].
pub const LAYERS: redb::TableDefinition<&[u8; 32], &[u8]> =
    redb::TableDefinition::new("index_layers");
/// diff_id ‖ entry number (u32 big-endian) → postcard [`EntryRecord`].
pub const ENTRIES: redb::TableDefinition<&[u8], &[u8]> =
    redb::TableDefinition::new("index_entries");
/// diff_id ‖ object digest → `()`: the distinct objects of each layer.
pub const LAYER_OBJECTS: redb::TableDefinition<&[u8], ()> =
    redb::TableDefinition::new("index_layer_objects");
/// Compressed layer blob digest → diff_id.
pub const BLOBS: redb::TableDefinition<&[u8; 32], &[u8; 32]> =
    redb::TableDefinition::new("index_blobs");

/// Why the index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed.
    #[error("index database: {0}")]
    Db(#[from] redb::Error),
    /// A row did not decode (corrupt or from an incompatible version).
    #[error("index row for {what} does not decode: {source}")]
    Decode {
        /// Which row.
        what: String,
        /// Why.
        source: postcard::Error,
    },
    /// An object file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The layer is not in the index.
    #[error("layer {0} is not ingested")]
    UnknownLayer(Digest),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                IndexError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// How a layer blob was compressed (recorded in [`LayerMeta`]).
pub use crate::compression::Compression;

/// Bytes after the last entry of a layer tar (end-of-archive blocks and
/// any record padding).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    /// Length in bytes.
    pub len: u64,
    /// The bytes, when they are not all zero (and were small enough to keep).
    pub data: Option<Vec<u8>>,
}

/// One ingested layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// The compressed blob it was first ingested from.
    pub blob: Digest,
    /// That blob's compression.
    pub compression: Compression,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// Rows in `index_entries` (every tar entry, global PAX headers included).
    pub records: u32,
    /// Entries a dedup archive carries for this layer (records minus global
    /// PAX headers): the `LAYERLINK.entries` count.
    pub entries: u32,
    /// Regular-file entries.
    pub regular_files: u32,
    /// Sum of regular-file sizes.
    pub file_bytes: u64,
    /// Distinct objects the layer contains.
    pub distinct_objects: u32,
    /// Objects the layer added to the store when it was ingested.
    pub new_objects: u32,
    /// Bytes after the last entry.
    pub trailer: Trailer,
    /// Whether [`rebuild_layer_tar`] reproduces the tar byte for byte.
    pub exact: bool,
    /// Ingest time, seconds since the Unix epoch.
    pub ingested_at: u64,
}

/// What kind of tar entry a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Regular file (`'0'`, NUL, or contiguous `'7'`).
    File,
    /// Hard link to another path of the same layer (`'1'`).
    HardLink,
    /// Symbolic link (`'2'`).
    Symlink,
    /// Character device (`'3'`).
    Char,
    /// Block device (`'4'`).
    Block,
    /// Directory (`'5'`).
    Dir,
    /// FIFO (`'6'`).
    Fifo,
    /// A global PAX header (`'g'`): kept for rebuilding, not sent to devices.
    GlobalPax,
    /// Any other type flag, passed through as is.
    Other,
}

impl EntryKind {
    /// The kind of a tar type flag.
    pub fn from_type_flag(t: u8) -> EntryKind {
        match t {
            b'0' | 0 | b'7' => EntryKind::File,
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::Char,
            b'4' => EntryKind::Block,
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            b'g' => EntryKind::GlobalPax,
            _ => EntryKind::Other,
        }
    }

    /// Whether a dedup archive carries entries of this kind.
    pub fn is_sent(self) -> bool {
        self != EntryKind::GlobalPax
    }
}

/// How an entry's original header bytes differ from
/// [`EntryRecord::canonical_header`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawHeader {
    /// They are the same.
    Canonical,
    /// Same length; these byte runs (offset, bytes) differ.
    Patch(Vec<(u32, Vec<u8>)>),
    /// Different length: the original bytes.
    Verbatim(Vec<u8>),
}

impl RawHeader {
    /// Describe `original` relative to `canonical`.
    pub fn diff(canonical: &[u8], original: &[u8]) -> RawHeader {
        if canonical == original {
            return RawHeader::Canonical;
        }
        if canonical.len() != original.len() {
            return RawHeader::Verbatim(original.to_vec());
        }
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        let mut i = 0;
        while i < original.len() {
            if canonical[i] == original[i] {
                i += 1;
                continue;
            }
            // Extend the run while bytes differ or the next difference is
            // close (a run costs a few bytes of overhead).
            let start = i;
            let mut end = i + 1;
            let mut j = end;
            while j < original.len() && j - end < 8 {
                if canonical[j] != original[j] {
                    end = j + 1;
                }
                j += 1;
            }
            total += end - start + 4;
            runs.push((start as u32, original[start..end].to_vec()));
            i = end;
        }
        if total * 2 > original.len() {
            return RawHeader::Verbatim(original.to_vec());
        }
        RawHeader::Patch(runs)
    }

    /// The original bytes, given the canonical ones.
    pub fn apply(&self, canonical: Vec<u8>) -> Vec<u8> {
        match self {
            RawHeader::Canonical => canonical,
            RawHeader::Verbatim(v) => v.clone(),
            RawHeader::Patch(runs) => {
                let mut out = canonical;
                for (off, bytes) in runs {
                    let off = *off as usize;
                    if off + bytes.len() <= out.len() {
                        out[off..off + bytes.len()].copy_from_slice(bytes);
                    }
                }
                out
            }
        }
    }
}

/// One tar entry of a layer, as recorded at ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// Path bytes exactly as in the tar (after PAX `path` / GNU long name /
    /// ustar prefix), not normalised.
    pub path: Vec<u8>,
    /// Kind.
    pub kind: EntryKind,
    /// The original type flag byte.
    pub type_flag: u8,
    /// Mode field.
    pub mode: u32,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// Owner name.
    pub uname: Vec<u8>,
    /// Group name.
    pub gname: Vec<u8>,
    /// Modification time (whole seconds; a PAX `mtime` record keeps the
    /// fraction).
    pub mtime: u64,
    /// Link target of hard and symbolic links (empty otherwise).
    pub link: Vec<u8>,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Content size.
    pub size: u64,
    /// Digest of the content when `size > 0` (for regular files: the
    /// object a device links to).
    pub object: Option<Digest>,
    /// PAX records of the entry in their original order (`SCHILY.xattr.*`,
    /// `path`, `mtime`, …), without `LAYERLINK.*` keys.
    pub pax: PaxRecords,
    /// How the original header bytes differ from the canonical rendering.
    pub raw: RawHeader,
}

impl EntryRecord {
    /// The extended attributes (`SCHILY.xattr.<name>` records).
    pub fn xattrs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pax.iter().filter_map(|(k, v)| {
            k.strip_prefix(b"SCHILY.xattr.")
                .map(|name| (name, v.as_slice()))
        })
    }

    /// The ustar fields of this record (type flag as recorded).
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            path: &self.path,
            type_flag: self.type_flag,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime: self.mtime,
            link: &self.link,
            uname: &self.uname,
            gname: &self.gname,
            dev_major: self.dev_major,
            dev_minor: self.dev_minor,
        }
    }

    /// The PAX records of a layer-faithful header: the recorded records in
    /// order, with the values of `path`, `linkpath`, `size`, `uid`, `gid`,
    /// `uname`, `gname` taken from the fields (so an edit cannot leave them
    /// stale), plus any of those a field needs but the record lacks.
    pub fn layer_pax(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut have = [false; 7];
        let numbers = [self.size, self.uid, self.gid];
        for (k, v) in &self.pax {
            match k.as_slice() {
                b"path" => {
                    have[0] = true;
                    tarfmt::pax_record(&mut out, k, &self.path)
                }
                b"linkpath" => {
                    have[1] = true;
                    tarfmt::pax_record(&mut out, k, &self.link)
                }
                b"size" | b"uid" | b"gid" => {
                    let i = match k.as_slice() {
                        b"size" => 0,
                        b"uid" => 1,
                        _ => 2,
                    };
                    have[2 + i] = true;
                    let n = numbers[i];
                    if parse_decimal(v) == Some(n) {
                        tarfmt::pax_record(&mut out, k, v)
                    } else {
                        tarfmt::pax_record(&mut out, k, n.to_string().as_bytes())
                    }
                }
                b"uname" => {
                    have[5] = true;
                    tarfmt::pax_record(&mut out, k, &self.uname)
                }
                b"gname" => {
                    have[6] = true;
                    tarfmt::pax_record(&mut out, k, &self.gname)
                }
                _ => tarfmt::pax_record(&mut out, k, v),
            }
        }
        if !have[0] && !tarfmt::path_fits_ustar(&self.path) {
            tarfmt::pax_record(&mut out, b"path", &self.path);
        }
        if !have[1] && self.link.len() > 100 {
            tarfmt::pax_record(&mut out, b"linkpath", &self.link);
        }
        if !have[2] && self.size > tarfmt::MAX_OCTAL_11 {
            tarfmt::pax_record(&mut out, b"size", self.size.to_string().as_bytes());
        }
        if !have[3] && self.uid > tarfmt::MAX_OCTAL_7 {
            tarfmt::pax_record(&mut out, b"uid", self.uid.to_string().as_bytes());
        }
        if !have[4] && self.gid > tarfmt::MAX_OCTAL_7 {
            tarfmt::pax_record(&mut out, b"gid", self.gid.to_string().as_bytes());
        }
        if !have[5] && self.uname.len() > 32 {
            tarfmt::pax_record(&mut out, b"uname", &self.uname);
        }
        if !have[6] && self.gname.len() > 32 {
            tarfmt::pax_record(&mut out, b"gname", &self.gname);
        }
        out
    }

    /// The header bytes (PAX header if any, then the ustar block) this
    /// record renders to by the crate's own conventions.
    pub fn canonical_header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        tarfmt::entry_header(&mut out, &self.fields(), &self.layer_pax());
        out
    }

    /// The header bytes as they were in the original layer (for an
    /// unedited record).
    pub fn original_header(&self) -> Vec<u8> {
        self.raw.apply(self.canonical_header())
    }
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Key of entry `n` of layer `diff_id`.
pub fn entry_key(diff_id: &Digest, n: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&diff_id.0);
    k[32..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Key of (layer, object) in [`LAYER_OBJECTS`].
pub fn layer_object_key(diff_id: &Digest, object: &Digest) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&diff_id.0);
    k[32..].copy_from_slice(&object.0);
    k
}

/// Open a table for reading; `None` when it was never created.
pub fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, IndexError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, IndexError> {
    postcard::from_bytes(bytes).map_err(|source| IndexError::Decode {
        what: what(),
        source,
    })
}

/// The meta row of a layer, `None` when it is not ingested.
pub fn layer_meta(db: &redb::Database, diff_id: &Digest) -> Result<Option<LayerMeta>, IndexError> {
    let txn = db.begin_read()?;
    layer_meta_in(&txn, diff_id)
}

/// [`layer_meta`] within a read transaction.
pub fn layer_meta_in(
    txn: &redb::ReadTransaction,
    diff_id: &Digest,
) -> Result<Option<LayerMeta>, IndexError> {
    let Some(t) = open_read(txn, LAYERS)? else {
        return Ok(None);
    };
    match t.get(&diff_id.0)? {
        Some(v) => Ok(Some(decode(v.value(), || format!("layer {diff_id}"))?)),
        None => Ok(None),
    }
}

/// The diff_id a compressed blob was ingested as.
pub fn diff_id_for_blob(db: &redb::Database, blob: &Digest) -> Result<Option<Digest>, IndexError> {
    let txn = db.begin_read()?;
    let Some(t) = open_read(&txn, BLOBS)? else {
        return Ok(None);
    };
    Ok(t.get(&blob.0)?.map(|v| Digest(*v.value())))
}

/// Iterator over a layer's entry records, in tar order, reading rows as it
/// goes (constant memory).
pub struct LayerEntries {
    diff_id: Digest,
    range: Option<redb::Range<'static, &'static [u8], &'static [u8]>>,
    next: u32,
}

impl Iterator for LayerEntries {
    type Item = Result<EntryRecord, IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.range.as_mut()?.next()?;
        let n = self.next;
        self.next += 1;
        let diff_id = self.diff_id;
        Some(match item {
            Ok((_, v)) => decode(v.value(), || format!("entry {n} of layer {diff_id}")),
            Err(e) => Err(e.into()),
        })
    }
}

/// Walk the entries of layer `diff_id` within `txn` (empty when unknown).
pub fn layer_entries(
    txn: &redb::ReadTransaction,
    diff_id: &Digest,
) -> Result<LayerEntries, IndexError> {
    let range = match open_read(txn, ENTRIES)? {
        Some(t) => {
            let lo = entry_key(diff_id, 0);
            let hi = entry_key(diff_id, u32::MAX);
            Some(t.range::<&[u8]>(&lo[..]..=&hi[..])?)
        }
        None => None,
    };
    Ok(LayerEntries {
        diff_id: *diff_id,
        range,
        next: 0,
    })
}

/// The distinct objects of a layer.
pub fn layer_objects(
    txn: &redb::ReadTransaction,
    diff_id: &Digest,
) -> Result<Vec<Digest>, IndexError> {
    let Some(t) = open_read(txn, LAYER_OBJECTS)? else {
        return Ok(Vec::new());
    };
    let lo = layer_object_key(diff_id, &Digest([0; 32]));
    let hi = layer_object_key(diff_id, &Digest([0xff; 32]));
    let mut out = Vec::new();
    for item in t.range::<&[u8]>(&lo[..]..=&hi[..])? {
        let (k, _) = item?;
        let mut d = [0u8; 32];
        d.copy_from_slice(&k.value()[32..64]);
        out.push(Digest(d));
    }
    Ok(out)
}

/// Metadata of a stored object, `None` when unknown.
pub fn object_meta(
    txn: &redb::ReadTransaction,
    d: &Digest,
) -> Result<Option<objects::ObjectMeta>, IndexError> {
    let Some(t) = open_read(txn, OBJECTS_META)? else {
        return Ok(None);
    };
    match t.get(&d.0)? {
        Some(v) => Ok(Some(decode(v.value(), || format!("object {d}"))?)),
        None => Ok(None),
    }
}

/// (compressed blob digest, diff_id) rows of [`BLOBS`].
pub type BlobRows = Vec<(Digest, Digest)>;

/// Every indexed layer (diff_id, sorted), and every [`BLOBS`] row: what the
/// garbage collector starts from.
pub fn all_layers(db: &redb::Database) -> Result<(Vec<Digest>, BlobRows), IndexError> {
    let txn = db.begin_read()?;
    let mut layers = Vec::new();
    if let Some(t) = open_read(&txn, LAYERS)? {
        for item in t.iter()? {
            layers.push(Digest(*item?.0.value()));
        }
    }
    let mut blobs = Vec::new();
    if let Some(t) = open_read(&txn, BLOBS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            blobs.push((Digest(*k.value()), Digest(*v.value())));
        }
    }
    Ok((layers, blobs))
}

/// Every object row: digest and metadata.
pub fn all_objects(db: &redb::Database) -> Result<Vec<(Digest, objects::ObjectMeta)>, IndexError> {
    let txn = db.begin_read()?;
    let mut out = Vec::new();
    if let Some(t) = open_read(&txn, OBJECTS_META)? {
        for item in t.iter()? {
            let (k, v) = item?;
            let d = Digest(*k.value());
            out.push((d, decode(v.value(), || format!("object {d}"))?));
        }
    }
    Ok(out)
}

/// Forget, in one transaction, the layers `layers` (their meta row, entry
/// rows and object list), the blob rows `blob_rows` (compressed digests)
/// and the object rows `objects`; the layer count of every other object
/// those layers used drops by one per forgotten layer. Files are not
/// touched: the caller deletes them after this commits, so the index never
/// names a missing file (a crash in between leaves unnamed files, which
/// the next collection removes).
pub fn forget(
    db: &redb::Database,
    layers: &[Digest],
    blob_rows: &[Digest],
    objects: &[Digest],
) -> Result<(), IndexError> {
    let doomed: std::collections::HashSet<&Digest> = objects.iter().collect();
    let txn = db.begin_write()?;
    {
        let mut lt = txn.open_table(LAYERS)?;
        let mut et = txn.open_table(ENTRIES)?;
        let mut lo = txn.open_table(LAYER_OBJECTS)?;
        let mut om = txn.open_table(OBJECTS_META)?;
        for l in layers {
            lt.remove(&l.0)?;
            let (a, b) = (entry_key(l, 0), entry_key(l, u32::MAX));
            et.retain_in::<&[u8], _>(&a[..]..=&b[..], |_, _| false)?;
            let (a, b) = (
                layer_object_key(l, &Digest([0; 32])),
                layer_object_key(l, &Digest([0xff; 32])),
            );
            let mut used = Vec::new();
            for item in lo.range::<&[u8]>(&a[..]..=&b[..])? {
                let (k, _) = item?;
                let mut d = [0u8; 32];
                d.copy_from_slice(&k.value()[32..64]);
                used.push(Digest(d));
            }
            lo.retain_in::<&[u8], _>(&a[..]..=&b[..], |_, _| false)?;
            for d in used.iter().filter(|d| !doomed.contains(d)) {
                let meta = match om.get(&d.0)? {
                    Some(v) => Some(decode::<objects::ObjectMeta>(v.value(), || {
                        format!("object {d}")
                    })?),
                    None => None,
                };
                if let Some(mut m) = meta {
                    m.layers = m.layers.saturating_sub(1);
                    let bytes = postcard::to_allocvec(&m).expect("encoding ObjectMeta");
                    om.insert(&d.0, bytes.as_slice())?;
                }
            }
        }
        let mut bt = txn.open_table(BLOBS)?;
        for b in blob_rows {
            bt.remove(&b.0)?;
        }
        for o in objects {
            om.remove(&o.0)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Figures for `layerlink-registry stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DedupStats {
    /// Layers ingested.
    pub layers: u64,
    /// Tar entries recorded over all layers.
    pub file_entries: u64,
    /// Regular-file entries over all layers.
    pub regular_files: u64,
    /// Distinct objects stored.
    pub distinct_objects: u64,
    /// Sum of the distinct objects' uncompressed sizes.
    pub distinct_bytes: u64,
    /// Sum of regular-file sizes over all layers (what layers hold).
    pub logical_bytes: u64,
    /// Bytes the object store uses on disk (compressed).
    pub stored_bytes: u64,
}

/// Compute the dedup figures.
pub fn dedup_stats(storage: &Storage) -> anyhow::Result<DedupStats> {
    Ok(dedup_stats_db(storage.db())?)
}

/// [`dedup_stats`] on a database.
pub fn dedup_stats_db(db: &redb::Database) -> Result<DedupStats, IndexError> {
    let txn = db.begin_read()?;
    let mut s = DedupStats::default();
    if let Some(t) = open_read(&txn, LAYERS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            let m: LayerMeta = decode(v.value(), || format!("layer {}", Digest(*k.value())))?;
            s.layers += 1;
            s.file_entries += u64::from(m.entries);
            s.regular_files += u64::from(m.regular_files);
            s.logical_bytes += m.file_bytes;
        }
    }
    if let Some(t) = open_read(&txn, OBJECTS_META)? {
        for item in t.iter()? {
            let (k, v) = item?;
            let m: objects::ObjectMeta =
                decode(v.value(), || format!("object {}", Digest(*k.value())))?;
            s.distinct_objects += 1;
            s.distinct_bytes += m.size;
            s.stored_bytes += m.stored_size;
        }
    }
    Ok(s)
}

/// The object store of a [`Storage`].
pub fn object_store(storage: &Storage) -> ObjectStore {
    ObjectStore::in_data_dir(storage.data_dir())
}
