//! Per-device holdings record (the mapping table) and the `devices` command.
//!
//! Every plan, archive and report request with `Holdings::Full` records the
//! device's canonical [`HeldSet`] and its hash; a later request may send
//! just the hash. Reports also record the images the device holds. The
//! device id always comes from the bearer token, never from a body, so a
//! device can only change its own record.
//!
//! | table | key | value |
//! |---|---|---|
//! | `device_holdings` | device id | postcard `(hash, HeldSet)` |
//! | `device_seen` | device id | last request time, Unix seconds |
//! | `device_images` | device id | postcard [`ImagesRecord`] |
//! | `device_last_sync` | device id | postcard [`LastSync`]: the last archive/objects response or refusal |

use crate::clock::now_secs;
use crate::store::index::open_read;
use crate::store::storage::Storage;
use crate::sync::SyncError;
use layerlink_proto::limits::{MAX_HELD_LAYERS, MAX_LOOSE_OBJECTS};
use layerlink_proto::msg::{HeldImage, HeldSet, Holdings};
use layerlink_proto::time::rfc3339;
use layerlink_proto::{Digest, ErrorCode};
use redb::{ReadableDatabase as _, ReadableTable as _};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Device id → postcard `(Digest, HeldSet)`.
pub const HOLDINGS: redb::TableDefinition<&str, &[u8]> =
    redb::TableDefinition::new("device_holdings");
/// Device id → last request time (Unix seconds).
pub const SEEN: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("device_seen");
/// Device id → postcard [`ImagesRecord`].
pub const IMAGES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("device_images");

/// Device id → postcard [`LastSync`].
pub const LAST_SYNC: redb::TableDefinition<&str, &[u8]> =
    redb::TableDefinition::new("device_last_sync");

/// How a device's last transfer (archive or objects response) or refused
/// request ended. Up-to-date plans do not write it (they only move the
/// last-seen time), so the cheap path stays one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// When (Unix seconds).
    pub at: u64,
    /// `repo@digest` (archive), `repo` (objects), `repo:ref,…` (plan).
    pub image: String,
    /// `plan`, `archive`, `objects`, `report`.
    pub request: String,
    /// `complete`, `client_gone`, `failed`, `refused (STATUS): reason`.
    pub outcome: String,
    /// Body bytes sent.
    pub bytes: u64,
}

/// Record how a device's last transfer or refused request ended.
pub fn record_last_sync(
    db: &redb::Database,
    device: &str,
    image: &str,
    request: &str,
    outcome: &str,
    bytes: u64,
) -> Result<(), SyncError> {
    let rec = LastSync {
        at: now_secs(),
        image: image.to_owned(),
        request: request.to_owned(),
        outcome: outcome.to_owned(),
        bytes,
    };
    let bytes = postcard::to_allocvec(&rec).map_err(SyncError::internal)?;
    let txn = db.begin_write().map_err(SyncError::internal)?;
    {
        let mut t = txn.open_table(LAST_SYNC).map_err(SyncError::internal)?;
        t.insert(device, bytes.as_slice())
            .map_err(SyncError::internal)?;
    }
    txn.commit().map_err(SyncError::internal)
}

/// The last transfer as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSyncView {
    /// RFC 3339 UTC.
    pub at: String,
    /// See [`LastSync::image`].
    pub image: String,
    /// See [`LastSync::request`].
    pub request: String,
    /// See [`LastSync::outcome`].
    pub outcome: String,
    /// Body bytes sent.
    pub bytes: u64,
}

/// One device in the fleet view (`GET /layerlink/v1/fleet`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDevice {
    /// Device id.
    pub id: String,
    /// In the current config (false: a record left by a removed device).
    pub configured: bool,
    /// Never made a request.
    pub never_seen: bool,
    /// Last request of any kind, RFC 3339 UTC.
    pub last_seen: Option<String>,
    /// Images held at the last report, `repo:ref@digest`.
    pub images: Vec<String>,
    /// Last transfer or refusal.
    pub last_sync: Option<LastSyncView>,
}

/// The fleet: every configured device (also those never seen) and every
/// device with a record, sorted by id; and, per held image, who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// Devices.
    pub devices: Vec<FleetDevice>,
    /// `repo:ref@digest` → device ids holding it (last report).
    pub images: BTreeMap<String, Vec<String>>,
}

/// Build the fleet view from the records and the configured ids.
pub fn fleet(db: &redb::Database, configured: &[&str]) -> Result<Fleet, SyncError> {
    let mut devices: BTreeMap<String, FleetDevice> = BTreeMap::new();
    let blank = |id: &str| FleetDevice {
        id: id.to_owned(),
        configured: false,
        never_seen: true,
        last_seen: None,
        images: Vec::new(),
        last_sync: None,
    };
    for s in device_summaries(db)? {
        let d = devices.entry(s.id.clone()).or_insert_with(|| blank(&s.id));
        d.never_seen = s.last_sync.is_none();
        d.last_seen = s.last_sync;
        d.images = s.images;
    }
    {
        let txn = db.begin_read().map_err(SyncError::internal)?;
        if let Some(t) = open_read(&txn, LAST_SYNC).map_err(SyncError::internal)? {
            for item in t.iter().map_err(SyncError::internal)? {
                let (k, v) = item.map_err(SyncError::internal)?;
                let id = k.value().to_owned();
                if let Ok(r) = postcard::from_bytes::<LastSync>(v.value()) {
                    let d = devices.entry(id.clone()).or_insert_with(|| blank(&id));
                    d.last_sync = Some(LastSyncView {
                        at: rfc3339(r.at),
                        image: r.image,
                        request: r.request,
                        outcome: r.outcome,
                        bytes: r.bytes,
                    });
                }
            }
        }
    }
    for id in configured {
        devices
            .entry((*id).to_owned())
            .or_insert_with(|| blank(id))
            .configured = true;
    }
    let mut images: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in devices.values() {
        for i in &d.images {
            images.entry(i.clone()).or_default().push(d.id.clone());
        }
    }
    Ok(Fleet {
        devices: devices.into_values().collect(),
        images,
    })
}

/// The fleet as text: a device table, then who holds which image.
pub fn format_fleet(f: &Fleet) -> String {
    let header = [
        "DEVICE",
        "CONFIGURED",
        "LAST SEEN",
        "LAST SYNC",
        "OUTCOME",
        "IMAGES",
    ];
    let mut rows = Vec::new();
    for d in &f.devices {
        rows.push([
            d.id.clone(),
            if d.configured { "yes" } else { "no" }.to_owned(),
            d.last_seen.clone().unwrap_or_else(|| "never".into()),
            d.last_sync
                .as_ref()
                .map_or_else(|| "-".into(), |s| format!("{} {}", s.at, s.image)),
            d.last_sync.as_ref().map_or_else(
                || "-".into(),
                |s| format!("{} ({} bytes)", s.outcome, s.bytes),
            ),
            if d.images.is_empty() {
                "-".into()
            } else {
                d.images.join(", ")
            },
        ]);
    }
    let mut out = aligned(header, &rows);
    if !f.images.is_empty() {
        out.push_str("\nIMAGE  HELD BY\n");
        for (i, ids) in &f.images {
            out.push_str(&format!("{i}  {}\n", ids.join(", ")));
        }
    }
    out
}

/// The images a device last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesRecord {
    /// When (Unix seconds).
    pub reported_at: u64,
    /// The images.
    pub images: Vec<HeldImage>,
}

/// Check a reported set against the limits.
pub fn check_limits(set: &HeldSet) -> Result<(), SyncError> {
    if set.layers.len() > MAX_HELD_LAYERS {
        return Err(SyncError::new(
            ErrorCode::TooLarge,
            format!(
                "{} held layers reported; at most {MAX_HELD_LAYERS}",
                set.layers.len()
            ),
        ));
    }
    if set.objects.len() > MAX_LOOSE_OBJECTS {
        return Err(SyncError::new(
            ErrorCode::TooLarge,
            format!(
                "{} loose objects reported; at most {MAX_LOOSE_OBJECTS}",
                set.objects.len()
            ),
        ));
    }
    Ok(())
}

/// The set a request's holdings stand for, and its hash. `Full` sets are
/// recorded for `device`; `Hash` must match the recorded set or the answer
/// is [`ErrorCode::UnknownHoldingsSet`]. Either way the device's last-seen
/// time is updated.
pub fn resolve_holdings(
    db: &redb::Database,
    device: &str,
    holdings: &Holdings,
) -> Result<(HeldSet, Digest), SyncError> {
    let (set, hash, write_set) = match holdings {
        Holdings::Full(set) => {
            check_limits(set)?;
            let mut set = set.clone();
            set.canonicalize();
            let hash = set.hash();
            let unchanged = recorded_hash(db, device)? == Some(hash);
            (set, hash, !unchanged)
        }
        Holdings::Hash(h) => match recorded(db, device)? {
            Some((rh, set)) if rh == *h => (set, rh, false),
            _ => {
                return Err(SyncError::new(
                    ErrorCode::UnknownHoldingsSet,
                    format!("holdings hash {h} is not the set recorded for device {device}; send the full set"),
                ))
            }
        },
    };
    if write_set {
        let txn = db.begin_write().map_err(SyncError::internal)?;
        {
            let bytes = postcard::to_allocvec(&(hash, &set)).map_err(SyncError::internal)?;
            let mut t = txn.open_table(HOLDINGS).map_err(SyncError::internal)?;
            t.insert(device, bytes.as_slice())
                .map_err(SyncError::internal)?;
            let mut t = txn.open_table(SEEN).map_err(SyncError::internal)?;
            t.insert(device, now_secs()).map_err(SyncError::internal)?;
        }
        txn.commit().map_err(SyncError::internal)?;
    } else {
        // The path most requests take (holdings unchanged): no write
        // transaction, whose fsync would serialise every device's check.
        note_seen(db, device);
    }
    Ok((set, hash))
}

/// Last-seen times not yet written to [`SEEN`]: per database (by its
/// address: a registry process has one; unit tests have several at once),
/// device → Unix seconds.
static PENDING_SEEN: std::sync::Mutex<BTreeMap<usize, BTreeMap<String, u64>>> =
    std::sync::Mutex::new(BTreeMap::new());

fn db_key(db: &redb::Database) -> usize {
    std::ptr::from_ref(db) as usize
}

/// Record that `device` was seen now; [`flush_seen`] writes it.
fn note_seen(db: &redb::Database, device: &str) {
    let mut p = PENDING_SEEN.lock().unwrap_or_else(|e| e.into_inner());
    p.entry(db_key(db))
        .or_default()
        .insert(device.to_owned(), now_secs());
}

/// Write the pending last-seen times in one transaction. `serve` calls it
/// every few seconds and when it stops; readers of [`SEEN`] in the same
/// process call it first. A process killed between flushes loses at most
/// those seconds of last-seen times (nothing else).
pub fn flush_seen(db: &redb::Database) -> Result<usize, SyncError> {
    let pending = (PENDING_SEEN.lock().unwrap_or_else(|e| e.into_inner()))
        .remove(&db_key(db))
        .unwrap_or_default();
    if pending.is_empty() {
        return Ok(0);
    }
    let txn = db.begin_write().map_err(SyncError::internal)?;
    {
        let mut t = txn.open_table(SEEN).map_err(SyncError::internal)?;
        for (device, at) in &pending {
            let newer = t
                .get(device.as_str())
                .map_err(SyncError::internal)?
                .is_none_or(|v| v.value() < *at);
            if newer {
                t.insert(device.as_str(), *at)
                    .map_err(SyncError::internal)?;
            }
        }
    }
    txn.commit().map_err(SyncError::internal)?;
    Ok(pending.len())
}

fn recorded_hash(db: &redb::Database, device: &str) -> Result<Option<Digest>, SyncError> {
    let txn = db.begin_read().map_err(SyncError::internal)?;
    let Some(t) = open_read(&txn, HOLDINGS).map_err(SyncError::internal)? else {
        return Ok(None);
    };
    let Some(v) = t.get(device).map_err(SyncError::internal)? else {
        return Ok(None);
    };
    // The hash is the first field: decode only it.
    Ok(postcard::take_from_bytes::<Digest>(v.value())
        .ok()
        .map(|(d, _)| d))
}

/// The recorded `(hash, set)` of a device.
pub fn recorded(db: &redb::Database, device: &str) -> Result<Option<(Digest, HeldSet)>, SyncError> {
    let txn = db.begin_read().map_err(SyncError::internal)?;
    let Some(t) = open_read(&txn, HOLDINGS).map_err(SyncError::internal)? else {
        return Ok(None);
    };
    let Some(v) = t.get(device).map_err(SyncError::internal)? else {
        return Ok(None);
    };
    postcard::from_bytes(v.value())
        .map(Some)
        .map_err(|e| SyncError::internal(format!("holdings record of device {device}: {e}")))
}

/// Record the images a device reports holding.
pub fn record_images(
    db: &redb::Database,
    device: &str,
    images: &[HeldImage],
) -> Result<(), SyncError> {
    let rec = ImagesRecord {
        reported_at: now_secs(),
        images: images.to_vec(),
    };
    let bytes = postcard::to_allocvec(&rec).map_err(SyncError::internal)?;
    let txn = db.begin_write().map_err(SyncError::internal)?;
    {
        let mut t = txn.open_table(IMAGES).map_err(SyncError::internal)?;
        t.insert(device, bytes.as_slice())
            .map_err(SyncError::internal)?;
    }
    txn.commit().map_err(SyncError::internal)
}

/// One device as `layerlink-registry devices` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    /// Device id.
    pub id: String,
    /// Last request, RFC 3339 UTC.
    pub last_sync: Option<String>,
    /// Images held, `repo:ref@digest`.
    pub images: Vec<String>,
    /// Committed layers held.
    pub layers: usize,
    /// Loose objects held.
    pub loose_objects: usize,
    /// Hash of the recorded holdings set.
    pub holdings_hash: Option<String>,
}

/// Every device with a record, sorted by id.
pub fn device_summaries(db: &redb::Database) -> Result<Vec<DeviceSummary>, SyncError> {
    flush_seen(db)?;
    let txn = db.begin_read().map_err(SyncError::internal)?;
    let mut map: BTreeMap<String, DeviceSummary> = BTreeMap::new();
    let blank = |id: &str| DeviceSummary {
        id: id.to_owned(),
        last_sync: None,
        images: Vec::new(),
        layers: 0,
        loose_objects: 0,
        holdings_hash: None,
    };
    if let Some(t) = open_read(&txn, SEEN).map_err(SyncError::internal)? {
        for item in t.iter().map_err(SyncError::internal)? {
            let (k, v) = item.map_err(SyncError::internal)?;
            let id = k.value().to_owned();
            let s = map.entry(id.clone()).or_insert_with(|| blank(&id));
            s.last_sync = Some(rfc3339(v.value()));
        }
    }
    if let Some(t) = open_read(&txn, HOLDINGS).map_err(SyncError::internal)? {
        for item in t.iter().map_err(SyncError::internal)? {
            let (k, v) = item.map_err(SyncError::internal)?;
            let id = k.value().to_owned();
            let s = map.entry(id.clone()).or_insert_with(|| blank(&id));
            if let Ok((h, set)) = postcard::from_bytes::<(Digest, HeldSet)>(v.value()) {
                s.layers = set.layers.len();
                s.loose_objects = set.objects.len();
                s.holdings_hash = Some(h.to_string());
            }
        }
    }
    if let Some(t) = open_read(&txn, IMAGES).map_err(SyncError::internal)? {
        for item in t.iter().map_err(SyncError::internal)? {
            let (k, v) = item.map_err(SyncError::internal)?;
            let id = k.value().to_owned();
            let s = map.entry(id.clone()).or_insert_with(|| blank(&id));
            if let Ok(rec) = postcard::from_bytes::<ImagesRecord>(v.value()) {
                s.images = rec
                    .images
                    .iter()
                    .map(|i| {
                        format!(
                            "{}:{}@{}",
                            i.image.repository, i.image.reference, i.manifest_digest
                        )
                    })
                    .collect();
            }
        }
    }
    Ok(map.into_values().collect())
}

/// The `devices` table as text: one row per device, columns aligned.
pub fn format_table(devices: &[DeviceSummary]) -> String {
    let header = ["DEVICE", "LAST SYNC", "LAYERS", "LOOSE", "IMAGES"];
    let rows: Vec<[String; 5]> = devices
        .iter()
        .map(|d| {
            [
                d.id.clone(),
                d.last_sync.clone().unwrap_or_else(|| "-".into()),
                d.layers.to_string(),
                d.loose_objects.to_string(),
                if d.images.is_empty() {
                    "-".into()
                } else {
                    d.images.join(", ")
                },
            ]
        })
        .collect();
    aligned(header, &rows)
}

/// A text table: `header`, then `rows`, columns padded to their widest
/// cell and two spaces apart (the last column unpadded).
fn aligned<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// Print every device's record (`layerlink-registry devices`).
pub fn print_devices(storage: &Storage, json: bool) -> anyhow::Result<()> {
    let devices = device_summaries(storage.db()).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
    } else if devices.is_empty() {
        println!("no device has synced yet");
    } else {
        print!("{}", format_table(&devices));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testutil::TestStore;
    use layerlink_proto::msg::ImageRef;

    fn set(l: &[u8], o: &[u8]) -> HeldSet {
        HeldSet {
            layers: l.iter().map(|&b| Digest([b; 32])).collect(),
            objects: o.iter().map(|&b| Digest([b; 32])).collect(),
        }
    }

    #[test]
    fn full_then_hash_then_unknown_hash() {
        let ts = TestStore::new();
        // Unsorted, duplicated: recorded canonical.
        let (s, h) =
            resolve_holdings(&ts.db, "gw-1", &Holdings::Full(set(&[3, 1, 3], &[9]))).unwrap();
        assert_eq!(s, set(&[1, 3], &[9]));
        assert_eq!(h, set(&[1, 3], &[9]).hash());
        let (s2, h2) = resolve_holdings(&ts.db, "gw-1", &Holdings::Hash(h)).unwrap();
        assert_eq!((s2, h2), (s, h));
        // Another device cannot use gw-1's hash.
        let e = resolve_holdings(&ts.db, "gw-2", &Holdings::Hash(h)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownHoldingsSet);
        assert_eq!(e.code.http_status(), 409);
        // A stale hash after the set changed.
        resolve_holdings(&ts.db, "gw-1", &Holdings::Full(set(&[1], &[]))).unwrap();
        let e = resolve_holdings(&ts.db, "gw-1", &Holdings::Hash(h)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownHoldingsSet);
        assert!(e.message.contains("gw-1"));
    }

    #[test]
    fn limits_are_enforced() {
        let ts = TestStore::new();
        let big = HeldSet {
            layers: (0..=MAX_HELD_LAYERS as u32)
                .map(|i| {
                    let mut d = [0u8; 32];
                    d[..4].copy_from_slice(&i.to_be_bytes());
                    Digest(d)
                })
                .collect(),
            objects: vec![],
        };
        let e = resolve_holdings(&ts.db, "gw", &Holdings::Full(big)).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn unchanged_holdings_note_last_seen_without_a_write_until_flushed() {
        let ts = TestStore::new();
        let (_, h) = resolve_holdings(&ts.db, "gw-1", &Holdings::Full(set(&[1], &[]))).unwrap();
        let seen = |db: &redb::Database| {
            let txn = db.begin_read().unwrap();
            open_read(&txn, SEEN)
                .unwrap()
                .and_then(|t| t.get("gw-1").unwrap().map(|v| v.value()))
        };
        let first = seen(&ts.db).expect("a new holdings set is written with its time");
        // Make the recorded time old, then check with the hash: no write yet.
        let txn = ts.db.begin_write().unwrap();
        txn.open_table(SEEN).unwrap().insert("gw-1", 1).unwrap();
        txn.commit().unwrap();
        resolve_holdings(&ts.db, "gw-1", &Holdings::Hash(h)).unwrap();
        assert_eq!(seen(&ts.db), Some(1), "the up-to-date path wrote");
        let other = TestStore::new();
        assert_eq!(
            flush_seen(&other.db).unwrap(),
            0,
            "another database's times"
        );
        assert_eq!(flush_seen(&ts.db).unwrap(), 1);
        assert!(seen(&ts.db).unwrap() >= first);
        assert_eq!(flush_seen(&ts.db).unwrap(), 0);
    }

    #[test]
    fn summaries_and_table() {
        let ts = TestStore::new();
        resolve_holdings(&ts.db, "gw-b", &Holdings::Full(set(&[1, 2], &[5]))).unwrap();
        resolve_holdings(&ts.db, "gw-a", &Holdings::Full(set(&[], &[]))).unwrap();
        let img = HeldImage {
            image: ImageRef {
                repository: "edge/app".into(),
                reference: "v1".into(),
            },
            manifest_digest: Digest([7; 32]),
        };
        record_images(&ts.db, "gw-b", &[img]).unwrap();
        let s = device_summaries(&ts.db).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].id, "gw-a");
        assert_eq!((s[1].layers, s[1].loose_objects), (2, 1));
        assert_eq!(
            s[1].images,
            vec![format!("edge/app:v1@{}", Digest([7; 32]))]
        );
        assert!(s[1]
            .last_sync
            .as_deref()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20));
        let table = format_table(&s);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("DEVICE"));
        let col = lines[0].find("LAST SYNC").unwrap();
        assert_eq!(lines[1].find("20").unwrap(), col, "aligned: {table}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json[1]["layers"], 2);

        record_last_sync(&ts.db, "gw-b", "edge/app@x", "archive", "complete", 42).unwrap();
        let f = fleet(&ts.db, &["gw-b", "gw-never"]).unwrap();
        let ids: Vec<&str> = f.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["gw-a", "gw-b", "gw-never"]);
        assert!(!f.devices[0].configured && f.devices[1].configured);
        assert!(f.devices[2].never_seen && f.devices[2].configured);
        assert!(!f.devices[1].never_seen);
        let last = f.devices[1].last_sync.as_ref().unwrap();
        assert_eq!((last.outcome.as_str(), last.bytes), ("complete", 42));
        assert_eq!(
            f.images[&format!("edge/app:v1@{}", Digest([7; 32]))],
            vec!["gw-b".to_owned()]
        );
        let text = format_fleet(&f);
        assert!(
            text.contains("gw-never") && text.contains("never"),
            "{text}"
        );
        assert!(text.contains("complete (42 bytes)"), "{text}");
    }
}
