//! Device records as the sync endpoints, the fleet view and the `devices`
//! command use them, over the [`DeviceStore`] of the registry's storage
//! (embedded or PostgreSQL).
//!
//! Every plan, archive and report request with `Holdings::Full` records the
//! device's canonical [`HeldSet`] and its hash; a later request may send
//! just the hash. Reports also record the images the device holds. The
//! device id always comes from the bearer token, never from a body, so a
//! device can only change its own record.

use crate::clock::now_secs;
use crate::store::storage::devices::DeviceRecord;
pub use crate::store::storage::devices::{ImagesRecord, LastSync};
use crate::store::storage::{DeviceStore, Storage};
use crate::sync::SyncError;
use layerlink_proto::limits::{MAX_HELD_LAYERS, MAX_LOOSE_OBJECTS};
use layerlink_proto::msg::{HeldImage, HeldSet, Holdings};
use layerlink_proto::time::rfc3339;
use layerlink_proto::{Digest, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Record how a device's last transfer or refused request ended.
pub fn record_last_sync(
    devices: &dyn DeviceStore,
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
    devices
        .record_last_sync(device, &rec)
        .map_err(SyncError::internal)
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

/// `repo:ref@digest` of each image in a report record.
fn image_names(rec: Option<&ImagesRecord>) -> Vec<String> {
    rec.map(|r| {
        r.images
            .iter()
            .map(|i| {
                format!(
                    "{}:{}@{}",
                    i.image.repository, i.image.reference, i.manifest_digest
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Build the fleet view from the records and the configured ids.
pub fn fleet(devices: &dyn DeviceStore, configured: &[&str]) -> Result<Fleet, SyncError> {
    let mut out: BTreeMap<String, FleetDevice> = BTreeMap::new();
    let blank = |id: &str| FleetDevice {
        id: id.to_owned(),
        configured: false,
        never_seen: true,
        last_seen: None,
        images: Vec::new(),
        last_sync: None,
    };
    for r in devices.records().map_err(SyncError::internal)? {
        let d = out.entry(r.id.clone()).or_insert_with(|| blank(&r.id));
        d.never_seen = r.seen.is_none();
        d.last_seen = r.seen.map(rfc3339);
        d.images = image_names(r.images.as_ref());
        d.last_sync = r.last_sync.map(|l| LastSyncView {
            at: rfc3339(l.at),
            image: l.image,
            request: l.request,
            outcome: l.outcome,
            bytes: l.bytes,
        });
    }
    for id in configured {
        out.entry((*id).to_owned())
            .or_insert_with(|| blank(id))
            .configured = true;
    }
    let mut images: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in out.values() {
        for i in &d.images {
            images.entry(i.clone()).or_default().push(d.id.clone());
        }
    }
    Ok(Fleet {
        devices: out.into_values().collect(),
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
    devices: &dyn DeviceStore,
    device: &str,
    holdings: &Holdings,
) -> Result<(HeldSet, Digest), SyncError> {
    let (set, hash, write_set) = match holdings {
        Holdings::Full(set) => {
            check_limits(set)?;
            let mut set = set.clone();
            set.canonicalize();
            let hash = set.hash();
            let recorded = devices
                .holdings_hash(device)
                .map_err(SyncError::internal)?;
            let unchanged = recorded == Some(hash);
            (set, hash, !unchanged)
        }
        Holdings::Hash(h) => match devices.holdings(device).map_err(SyncError::internal)? {
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
        devices
            .record_holdings(device, &hash, &set, now_secs())
            .map_err(SyncError::internal)?;
    } else {
        // The path most requests take (holdings unchanged): no write
        // transaction, whose commit would serialise every device's check.
        devices.note_seen(device, now_secs());
    }
    Ok((set, hash))
}

/// Record the images a device reports holding.
pub fn record_images(
    devices: &dyn DeviceStore,
    device: &str,
    images: &[HeldImage],
) -> Result<(), SyncError> {
    let rec = ImagesRecord {
        reported_at: now_secs(),
        images: images.to_vec(),
    };
    devices
        .record_images(device, &rec)
        .map_err(SyncError::internal)
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

impl From<DeviceRecord> for DeviceSummary {
    fn from(r: DeviceRecord) -> DeviceSummary {
        DeviceSummary {
            images: image_names(r.images.as_ref()),
            last_sync: r.seen.map(rfc3339),
            layers: r.holdings.map_or(0, |h| h.layers),
            loose_objects: r.holdings.map_or(0, |h| h.loose_objects),
            holdings_hash: r.holdings.map(|h| h.hash.to_string()),
            id: r.id,
        }
    }
}

/// Every device with a record, sorted by id.
pub fn device_summaries(devices: &dyn DeviceStore) -> Result<Vec<DeviceSummary>, SyncError> {
    Ok(devices
        .records()
        .map_err(SyncError::internal)?
        .into_iter()
        .map(DeviceSummary::from)
        .collect())
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
    let devices =
        device_summaries(storage.devices()).map_err(|e| anyhow::anyhow!("{}", e.message))?;
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
            resolve_holdings(&ts.devices, "gw-1", &Holdings::Full(set(&[3, 1, 3], &[9]))).unwrap();
        assert_eq!(s, set(&[1, 3], &[9]));
        assert_eq!(h, set(&[1, 3], &[9]).hash());
        let (s2, h2) = resolve_holdings(&ts.devices, "gw-1", &Holdings::Hash(h)).unwrap();
        assert_eq!((s2, h2), (s, h));
        // Another device cannot use gw-1's hash.
        let e = resolve_holdings(&ts.devices, "gw-2", &Holdings::Hash(h)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownHoldingsSet);
        assert_eq!(e.code.http_status(), 409);
        // A stale hash after the set changed.
        resolve_holdings(&ts.devices, "gw-1", &Holdings::Full(set(&[1], &[]))).unwrap();
        let e = resolve_holdings(&ts.devices, "gw-1", &Holdings::Hash(h)).unwrap_err();
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
        let e = resolve_holdings(&ts.devices, "gw", &Holdings::Full(big)).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }

    #[test]
    fn summaries_and_table() {
        let ts = TestStore::new();
        resolve_holdings(&ts.devices, "gw-b", &Holdings::Full(set(&[1, 2], &[5]))).unwrap();
        resolve_holdings(&ts.devices, "gw-a", &Holdings::Full(set(&[], &[]))).unwrap();
        let img = HeldImage {
            image: ImageRef {
                repository: "edge/app".into(),
                reference: "v1".into(),
            },
            manifest_digest: Digest([7; 32]),
        };
        record_images(&ts.devices, "gw-b", &[img]).unwrap();
        let s = device_summaries(&ts.devices).unwrap();
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

        record_last_sync(&ts.devices, "gw-b", "edge/app@x", "archive", "complete", 42).unwrap();
        let f = fleet(&ts.devices, &["gw-b", "gw-never"]).unwrap();
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
