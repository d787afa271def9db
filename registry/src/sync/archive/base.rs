//! Layer sections built on a layer the device holds (archive feature
//! `layer-base`, `proto/SPEC.md` "Layers built on a held layer").
//!
//! An update of a Debian image rewrites one big layer in which almost every
//! entry is the same as in the version the device holds; sending each of
//! them as a reference entry costs ~50 gzip'd bytes (mostly the 64 hex
//! digits), more than the changed files themselves. Here the registry finds
//! the held layer most like the one to send and describes the new layer as
//! "that tree, minus these paths, plus these entries".
//!
//! Only *plain* layers take part (unique tree paths, every parent directory
//! an entry of the same layer, supported kinds only): for them the agent's
//! committed tree of a layer is a function of its entries alone, so an
//! entry that is identical in both layers is identical in both trees.
//! Comparisons are memoised per (layer, base) pair: layers are immutable.

use crate::store::index::{self, EntryKind, EntryRecord, IndexError};
use layerlink_proto::archive::{classify_whiteout, normalize_entry_path, PathError, Whiteout};
use layerlink_proto::compact::{tree_order, MetaEncoder, MetaRecord};
use layerlink_proto::limits::MAX_METADATA_BYTES;
use layerlink_proto::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// Held layers compared per needed layer, at most (closest entry counts).
const MAX_CANDIDATES: usize = 16;
/// A base is used only when it spares at least this many entries.
const MIN_SAVED_ENTRIES: u32 = 16;
/// Memoised comparisons kept (the map is cleared when it is full).
const CACHE_PAIRS: usize = 1024;

/// How a layer is sent on top of a held base layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseDiff {
    /// diff_id of the held base layer.
    pub base: Digest,
    /// Per entry record of the new layer (index order): whether it is the
    /// same as the base's entry at that path and is therefore not sent.
    same: Vec<u64>,
    /// How many records are the same.
    pub same_count: u32,
    /// Normalised entry paths of the base to remove (top-most only: a
    /// removed directory takes its contents along).
    pub removed: Vec<Vec<u8>>,
    /// Per entry record of the new layer: whether it differs from the
    /// base's only in mtime, mode, uid or gid (a compact record with
    /// feature `compact-meta`; sent whole without it).
    meta_only: Vec<u64>,
    /// The compact records of those entries, encoded, in base tree order.
    pub compact: Vec<u8>,
    /// How many records `compact` holds.
    pub compact_count: u32,
    /// sha256 of the base's tree-order node paths, each followed by a NUL
    /// (`LAYERLINK.base-order`).
    pub base_order: Digest,
}

impl BaseDiff {
    /// Whether record `i` of the new layer is the base's and is not sent.
    pub fn is_same(&self, i: usize) -> bool {
        self.same
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Whether record `i` is sent as a compact record (feature
    /// `compact-meta` only).
    pub fn is_meta_only(&self, i: usize) -> bool {
        self.meta_only
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// The base marker's content: each removed path followed by a NUL.
    pub fn removed_list(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.removed {
            out.extend_from_slice(p);
            out.push(0);
        }
        out
    }
}

/// What a layer looks like as a tree, for comparison.
struct Scan {
    /// Tree key (normalised path; `.wh.x` → `x`) → entry.
    by_key: HashMap<Vec<u8>, Slot>,
    /// sha256 of the tree-order keys, each followed by a NUL.
    order: Digest,
}

struct Slot {
    record: usize,
    /// The normalised entry path (differs from the key for whiteouts).
    path: Vec<u8>,
    class: Class,
    identity: [u8; 16],
    /// [`Slot::identity`] without mode, uid, gid and mtime.
    shape: [u8; 16],
    /// Whether the entry may be taken from a base tree instead of sent.
    cloneable: bool,
    /// Index of the node in the agent's tree order (not for opaque marks).
    order: u32,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    /// Whether the entry has a PAX `mtime` record.
    pax_mtime: bool,
}

/// Kinds that replace each other in different ways on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Dir,
    Whiteout,
    Opaque,
    Other,
}

/// Scan layer `diff_id`; `None` when it is not plain.
fn scan(txn: &redb::ReadTransaction, diff_id: &Digest) -> Result<Option<Scan>, IndexError> {
    let mut by_key: HashMap<Vec<u8>, Slot> = HashMap::new();
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut parents: HashSet<Vec<u8>> = HashSet::new();
    for (i, rec) in index::layer_entries(txn, diff_id)?.enumerate() {
        let rec = rec?;
        if !rec.kind.is_sent() {
            continue;
        }
        if rec.kind == EntryKind::Other {
            return Ok(None);
        }
        let path = match normalize_entry_path(&rec.path) {
            Ok(p) => p,
            Err(PathError::Empty) if rec.kind == EntryKind::Dir => {
                // The layer root: always sent, never removed.
                if !dirs.insert(Vec::new()) {
                    return Ok(None);
                }
                continue;
            }
            Err(_) => return Ok(None),
        };
        let (key, class) = match classify_whiteout(&path) {
            Whiteout::None if rec.kind == EntryKind::Dir => (path.clone(), Class::Dir),
            Whiteout::None => (path.clone(), Class::Other),
            Whiteout::Remove(target) => {
                let leaf = target.rsplit(|&c| c == b'/').next().unwrap_or(&[]);
                if leaf.starts_with(b".wh.") || leaf.is_empty() {
                    return Ok(None);
                }
                (target, Class::Whiteout)
            }
            Whiteout::Opaque(_) => (path.clone(), Class::Opaque),
        };
        let parent = match key.iter().rposition(|&c| c == b'/') {
            Some(n) => key[..n].to_vec(),
            None => Vec::new(),
        };
        parents.insert(parent);
        if class == Class::Dir {
            dirs.insert(key.clone());
        }
        let cloneable = matches!(
            rec.kind,
            EntryKind::File
                | EntryKind::Dir
                | EntryKind::Symlink
                | EntryKind::Char
                | EntryKind::Block
                | EntryKind::Fifo
        ) && class != Class::Opaque;
        let slot = Slot {
            record: i,
            identity: identity(&rec, &path, true),
            shape: identity(&rec, &path, false),
            path,
            class,
            cloneable,
            order: u32::MAX,
            mode: rec.mode & 0o7777,
            uid: rec.uid,
            gid: rec.gid,
            mtime: rec.mtime,
            pax_mtime: rec.pax.iter().any(|(k, _)| k == b"mtime"),
        };
        if by_key.insert(key, slot).is_some() {
            return Ok(None); // a path given twice: order would matter
        }
    }
    for p in &parents {
        if !p.is_empty() && !dirs.contains(p) {
            return Ok(None); // an implicit directory: its metadata is the lower layers'
        }
    }
    // The agent's tree order: every node but the root (opaque marks are
    // attributes, not nodes), depth first, names sorted.
    let mut nodes: Vec<&Vec<u8>> = by_key
        .iter()
        .filter(|(_, s)| s.class != Class::Opaque)
        .map(|(k, _)| k)
        .collect();
    nodes.sort_by(|a, b| tree_order(a, b));
    let mut h = Sha256::new();
    let nodes: Vec<Vec<u8>> = nodes.into_iter().cloned().collect();
    for (n, key) in nodes.iter().enumerate() {
        h.update(key);
        h.update([0u8]);
        if let Some(s) = by_key.get_mut(key) {
            s.order = n as u32;
        }
    }
    Ok(Some(Scan {
        by_key,
        order: Digest::from_hasher(h),
    }))
}

/// What the agent's tree keeps of an entry: everything but names of users
/// and groups and the header's encoding.
fn identity(rec: &EntryRecord, path: &[u8], with_meta: bool) -> [u8; 16] {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(path);
    field(&[rec.kind as u8, rec.type_flag]);
    if with_meta {
        field(&rec.mode.to_le_bytes());
        field(&rec.uid.to_le_bytes());
        field(&rec.gid.to_le_bytes());
        field(&rec.mtime.to_le_bytes());
    }
    field(&rec.link);
    field(&rec.dev_major.to_le_bytes());
    field(&rec.dev_minor.to_le_bytes());
    field(&rec.size.to_le_bytes());
    field(rec.object.as_ref().map(|d| &d.0[..]).unwrap_or(&[]));
    for (k, v) in &rec.pax {
        if k.starts_with(b"SCHILY.xattr.") || (with_meta && k == b"mtime") {
            field(k);
            field(v);
        }
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Compare new layer `l` with held layer `b`; `None` when either is not
/// plain or the base would not pay.
fn compare(l_id: &Digest, l: &Scan, b_id: &Digest, b: &Scan, records: usize) -> Option<BaseDiff> {
    let mut same = vec![0u64; records.div_ceil(64)];
    let mut same_count = 0u32;
    let mut meta_only = vec![0u64; records.div_ceil(64)];
    let mut compact: Vec<MetaRecord> = Vec::new();
    let mut removed_keys: HashSet<&[u8]> = HashSet::new();
    for (key, s) in &l.by_key {
        match b.by_key.get(key) {
            Some(o) if s.cloneable && o.cloneable && o.identity == s.identity => {
                same[s.record / 64] |= 1u64 << (s.record % 64);
                same_count += 1;
            }
            Some(o) if s.cloneable && o.cloneable && o.shape == s.shape => {
                if let Some(r) = meta_record(s, o) {
                    meta_only[s.record / 64] |= 1u64 << (s.record % 64);
                    compact.push(r);
                }
            }
            // A different kind at the same path: the base's goes first, so
            // the sent entry lands on nothing (a whiteout on a file, a file
            // on a directory …). Same kinds replace or update in place.
            Some(o) if o.class != s.class => {
                removed_keys.insert(key);
            }
            _ => {}
        }
    }
    for key in b.by_key.keys() {
        if !l.by_key.contains_key(key) {
            removed_keys.insert(key);
        }
    }
    let mut removed: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0usize;
    for key in &removed_keys {
        // Inside a removed directory: goes with it.
        let covered = key
            .iter()
            .enumerate()
            .any(|(i, &c)| c == b'/' && removed_keys.contains(&key[..i]));
        if covered {
            continue;
        }
        let path = &b.by_key[*key].path;
        bytes += path.len() + 1;
        removed.push(path.clone());
    }
    removed.sort();
    let saved = (same_count + compact.len() as u32).saturating_sub(removed.len() as u32);
    if saved < MIN_SAVED_ENTRIES || bytes as u64 > MAX_METADATA_BYTES || l_id == b_id {
        return None;
    }
    compact.sort_by_key(|r| r.index);
    let mut enc = MetaEncoder::new();
    for r in &compact {
        enc.push(r);
    }
    Some(BaseDiff {
        base: *b_id,
        same,
        same_count,
        removed,
        meta_only,
        compact: enc.out,
        compact_count: compact.len() as u32,
        base_order: b.order,
    })
}

/// The compact record making base entry `o` into new entry `s` (same
/// shape), or `None` when `s` needs its full header (a PAX mtime, ids
/// above 32 bits, a node outside the tree order).
fn meta_record(s: &Slot, o: &Slot) -> Option<MetaRecord> {
    if s.pax_mtime || s.class == Class::Whiteout || o.order == u32::MAX {
        return None;
    }
    let (uid, gid) = (u32::try_from(s.uid).ok()?, u32::try_from(s.gid).ok()?);
    let mtime = i64::try_from(s.mtime).ok()?;
    let mut r = MetaRecord {
        index: u64::from(o.order),
        mtime: (s.mtime != o.mtime || o.pax_mtime).then_some(mtime),
        mode: (s.mode != o.mode).then_some(s.mode),
        uid: (s.uid != o.uid).then_some(uid),
        gid: (s.gid != o.gid).then_some(gid),
    };
    if r.mtime.is_none() && r.mode.is_none() && r.uid.is_none() && r.gid.is_none() {
        r.mtime = Some(mtime); // differs only in bits the tree does not keep
    }
    Some(r)
}

type Cache = Mutex<HashMap<(Digest, Digest), Option<Arc<BaseDiff>>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The best held layer to send `diff_id` on, if any pays: among `held`
/// (indexed layers the device holds), the one sparing the most entries.
pub fn choose_base(
    txn: &redb::ReadTransaction,
    diff_id: &Digest,
    held: &[Digest],
    compact: bool,
) -> Result<Option<Arc<BaseDiff>>, IndexError> {
    let Some(meta) = index::layer_meta_in(txn, diff_id)? else {
        return Ok(None);
    };
    let mut candidates = Vec::new();
    for b in held {
        if b == diff_id {
            continue;
        }
        if let Some(m) = index::layer_meta_in(txn, b)? {
            candidates.push((m.entries.abs_diff(meta.entries), *b));
        }
    }
    candidates.sort();
    candidates.truncate(MAX_CANDIDATES);
    let mut own: Option<Option<Scan>> = None;
    let mut best: Option<Arc<BaseDiff>> = None;
    for (_, b) in candidates {
        let key = (*diff_id, b);
        let known = cache().lock().map(|c| c.get(&key).cloned()).ok().flatten();
        let diff = match known {
            Some(d) => d,
            None => {
                if own.is_none() {
                    own = Some(scan(txn, diff_id)?);
                }
                let d = match (own.as_ref().and_then(Option::as_ref), scan(txn, &b)?) {
                    (Some(l), Some(bs)) => {
                        compare(diff_id, l, &b, &bs, meta.records as usize).map(Arc::new)
                    }
                    _ => None,
                };
                if let Ok(mut c) = cache().lock() {
                    if c.len() >= CACHE_PAIRS {
                        c.clear();
                    }
                    c.insert(key, d.clone());
                }
                d
            }
        };
        // Entries a base spares: compact records only for a device that
        // reads them (they are sent whole otherwise).
        let score = |d: &BaseDiff| {
            let kept = d.same_count + if compact { d.compact_count } else { 0 };
            kept as i64 - d.removed.len() as i64
        };
        if let Some(d) = diff.filter(|d| score(d) >= i64::from(MIN_SAVED_ENTRIES)) {
            if best.as_ref().is_none_or(|x| score(&d) > score(x)) {
                best = Some(d);
            }
        }
    }
    Ok(best)
}
