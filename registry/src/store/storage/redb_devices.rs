//! [`DeviceStore`] in the embedded database (the default).
//!
//! | table | key | value |
//! |---|---|---|
//! | `device_holdings` | device id | postcard `(hash, HeldSet)` |
//! | `device_seen` | device id | last request time, Unix seconds |
//! | `device_images` | device id | postcard [`ImagesRecord`] |
//! | `device_last_sync` | device id | postcard [`LastSync`] |

use super::devices::{
    DeviceRecord, DeviceStore, HoldingsSummary, ImagesRecord, LastSync, SeenBuffer,
};
use layerlink_proto::msg::HeldSet;
use layerlink_proto::Digest;
use redb::{ReadableDatabase as _, ReadableTable as _};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Device id → postcard `(Digest, HeldSet)`.
const HOLDINGS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("device_holdings");
/// Device id → last request time (Unix seconds).
const SEEN: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("device_seen");
/// Device id → postcard [`ImagesRecord`].
const IMAGES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("device_images");
/// Device id → postcard [`LastSync`].
const LAST_SYNC: redb::TableDefinition<&str, &[u8]> =
    redb::TableDefinition::new("device_last_sync");

/// Device records in the registry's embedded database.
pub struct RedbDevices {
    db: Arc<redb::Database>,
    seen: SeenBuffer,
}

impl RedbDevices {
    /// The device records in `db`.
    pub fn new(db: Arc<redb::Database>) -> RedbDevices {
        RedbDevices {
            db,
            seen: SeenBuffer::default(),
        }
    }

    fn put(
        &self,
        table: redb::TableDefinition<&str, &[u8]>,
        device: &str,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(table)?.insert(device, bytes)?;
        txn.commit()?;
        Ok(())
    }
}

/// A table that was never written reads as empty.
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: redb::TableDefinition<K, V>,
) -> anyhow::Result<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Write `at` for `device` unless a later time is recorded.
fn keep_later(
    t: &mut redb::Table<'_, &'static str, u64>,
    device: &str,
    at: u64,
) -> anyhow::Result<()> {
    let newer = t.get(device)?.is_none_or(|v| v.value() < at);
    if newer {
        t.insert(device, at)?;
    }
    Ok(())
}

impl DeviceStore for RedbDevices {
    fn holdings_hash(&self, device: &str) -> anyhow::Result<Option<Digest>> {
        let txn = self.db.begin_read()?;
        let Some(t) = open_read(&txn, HOLDINGS)? else {
            return Ok(None);
        };
        let Some(v) = t.get(device)? else {
            return Ok(None);
        };
        // The hash is the first field: decode only it.
        Ok(postcard::take_from_bytes::<Digest>(v.value())
            .ok()
            .map(|(d, _)| d))
    }

    fn holdings(&self, device: &str) -> anyhow::Result<Option<(Digest, HeldSet)>> {
        let txn = self.db.begin_read()?;
        let Some(t) = open_read(&txn, HOLDINGS)? else {
            return Ok(None);
        };
        let Some(v) = t.get(device)? else {
            return Ok(None);
        };
        postcard::from_bytes(v.value())
            .map(Some)
            .map_err(|e| anyhow::anyhow!("holdings record of device {device}: {e}"))
    }

    fn record_holdings(
        &self,
        device: &str,
        hash: &Digest,
        set: &HeldSet,
        at: u64,
    ) -> anyhow::Result<()> {
        let bytes = postcard::to_allocvec(&(hash, set))?;
        let txn = self.db.begin_write()?;
        txn.open_table(HOLDINGS)?.insert(device, bytes.as_slice())?;
        keep_later(&mut txn.open_table(SEEN)?, device, at)?;
        txn.commit()?;
        Ok(())
    }

    fn note_seen(&self, device: &str, at: u64) {
        self.seen.note(device, at);
    }

    fn flush_seen(&self) -> anyhow::Result<usize> {
        self.seen.flush(|pending| {
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(SEEN)?;
                for (device, at) in pending {
                    keep_later(&mut t, device, *at)?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    fn record_images(&self, device: &str, record: &ImagesRecord) -> anyhow::Result<()> {
        self.put(IMAGES, device, &postcard::to_allocvec(record)?)
    }

    fn record_last_sync(&self, device: &str, last: &LastSync) -> anyhow::Result<()> {
        self.put(LAST_SYNC, device, &postcard::to_allocvec(last)?)
    }

    fn records(&self) -> anyhow::Result<Vec<DeviceRecord>> {
        self.flush_seen()?;
        let txn = self.db.begin_read()?;
        let mut map: BTreeMap<String, DeviceRecord> = BTreeMap::new();
        fn entry<'a>(
            map: &'a mut BTreeMap<String, DeviceRecord>,
            id: &str,
        ) -> &'a mut DeviceRecord {
            map.entry(id.to_owned()).or_insert_with(|| DeviceRecord {
                id: id.to_owned(),
                seen: None,
                holdings: None,
                images: None,
                last_sync: None,
            })
        }
        if let Some(t) = open_read(&txn, SEEN)? {
            for item in t.iter()? {
                let (k, v) = item?;
                entry(&mut map, k.value()).seen = Some(v.value());
            }
        }
        if let Some(t) = open_read(&txn, HOLDINGS)? {
            for item in t.iter()? {
                let (k, v) = item?;
                let r = entry(&mut map, k.value());
                if let Ok((hash, set)) = postcard::from_bytes::<(Digest, HeldSet)>(v.value()) {
                    r.holdings = Some(HoldingsSummary {
                        hash,
                        layers: set.layers.len(),
                        loose_objects: set.objects.len(),
                    });
                }
            }
        }
        if let Some(t) = open_read(&txn, IMAGES)? {
            for item in t.iter()? {
                let (k, v) = item?;
                entry(&mut map, k.value()).images = postcard::from_bytes(v.value()).ok();
            }
        }
        if let Some(t) = open_read(&txn, LAST_SYNC)? {
            for item in t.iter()? {
                let (k, v) = item?;
                entry(&mut map, k.value()).last_sync = postcard::from_bytes(v.value()).ok();
            }
        }
        Ok(map.into_values().collect())
    }

    fn layers_held_since(&self, seen_after: u64) -> anyhow::Result<HashSet<Digest>> {
        self.flush_seen()?;
        let txn = self.db.begin_read()?;
        let mut out = HashSet::new();
        let (Some(seen), Some(holdings)) = (open_read(&txn, SEEN)?, open_read(&txn, HOLDINGS)?)
        else {
            return Ok(out);
        };
        for item in holdings.iter()? {
            let (k, v) = item?;
            let at = seen.get(k.value())?.map_or(0, |v| v.value());
            if at <= seen_after {
                continue;
            }
            if let Ok((_, set)) = postcard::from_bytes::<(Digest, HeldSet)>(v.value()) {
                out.extend(set.layers);
            }
        }
        Ok(out)
    }
}
