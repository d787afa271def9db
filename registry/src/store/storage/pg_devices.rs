//! [`DeviceStore`] in PostgreSQL (with `[storage] metadata =
//! "postgres://…"`): every replica sees every device's records, so a device
//! may plan through one replica and fetch its archive through another, and
//! its holdings hash is accepted by both.
//!
//! | table | primary key | other columns |
//! |---|---|---|
//! | `devices_holdings` | device | hash, held (postcard `HeldSet`), layers, objects |
//! | `devices_seen` | device | at (Unix s) |
//! | `devices_images` | device | record (postcard [`ImagesRecord`]) |
//! | `devices_last_sync` | device | at, image, request, outcome, bytes |
//!
//! The up-to-date check is one primary-key read of `hash`; noted last-seen
//! times are flushed as one multi-row upsert that keeps the later time
//! (`GREATEST`), so two replicas flushing the same device in any order
//! leave the later one. Nothing is cached between calls: the only state a
//! replica keeps is the few seconds of noted times ([`SeenBuffer`]).
//! Schema component `devices` of [`Pg::migrate`].

use super::devices::{
    DeviceRecord, DeviceStore, HoldingsSummary, ImagesRecord, LastSync, SeenBuffer,
};
use super::pg::{digest_of, to_i64, to_u64, Pg};
use layerlink_proto::msg::HeldSet;
use layerlink_proto::Digest;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Schema migrations of the `devices` component (append only).
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the module doc.
    r#"
    CREATE TABLE devices_holdings (
        device text COLLATE "C" PRIMARY KEY,
        hash bytea NOT NULL,
        held bytea NOT NULL,
        layers integer NOT NULL,
        objects integer NOT NULL
    );
    CREATE TABLE devices_seen (
        device text COLLATE "C" PRIMARY KEY,
        at bigint NOT NULL
    );
    CREATE TABLE devices_images (
        device text COLLATE "C" PRIMARY KEY,
        record bytea NOT NULL
    );
    CREATE TABLE devices_last_sync (
        device text COLLATE "C" PRIMARY KEY,
        at bigint NOT NULL,
        image text NOT NULL,
        request text NOT NULL,
        outcome text NOT NULL,
        bytes bigint NOT NULL
    );
    "#,
];

/// Keep the later of the recorded and the new last-seen time.
const UPSERT_SEEN: &str = "INSERT INTO devices_seen (device, at)
     SELECT d, t FROM UNNEST($1::text[], $2::int8[]) AS u (d, t)
     ON CONFLICT (device) DO UPDATE SET at = GREATEST(devices_seen.at, EXCLUDED.at)";

/// Device records in a PostgreSQL database.
pub struct PgDevices {
    pg: Arc<Pg>,
    seen: SeenBuffer,
}

impl PgDevices {
    /// The device records in the database `pg` is connected to (schema
    /// created or migrated now).
    pub fn open(pg: Arc<Pg>) -> anyhow::Result<PgDevices> {
        pg.migrate("devices", MIGRATIONS)?;
        Ok(PgDevices {
            pg,
            seen: SeenBuffer::default(),
        })
    }

    /// Upsert one row: `sql` with `(device, a, b)` parameters.
    fn upsert_bytes(&self, sql: &'static str, device: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.pg
            .write((device.to_owned(), bytes), move |tx, (device, bytes)| {
                Box::pin(async move {
                    let s = tx.prepare_cached(sql).await?;
                    tx.execute(&s, &[device, bytes]).await?;
                    Ok(())
                })
            })
    }
}

fn count(n: usize) -> anyhow::Result<i32> {
    i32::try_from(n).map_err(|_| anyhow::anyhow!("{n} does not fit in a PostgreSQL integer"))
}

impl DeviceStore for PgDevices {
    fn holdings_hash(&self, device: &str) -> anyhow::Result<Option<Digest>> {
        self.pg.read(
            "SELECT hash FROM devices_holdings WHERE device = $1",
            (device.to_owned(),),
            |rows| {
                rows.into_iter()
                    .next()
                    .map(|r| digest_of(r.get(0)))
                    .transpose()
            },
        )
    }

    fn holdings(&self, device: &str) -> anyhow::Result<Option<(Digest, HeldSet)>> {
        let id = device.to_owned();
        self.pg.read(
            "SELECT hash, held FROM devices_holdings WHERE device = $1",
            (device.to_owned(),),
            move |rows| {
                let Some(r) = rows.into_iter().next() else {
                    return Ok(None);
                };
                let hash = digest_of(r.get(0))?;
                let held: Vec<u8> = r.get(1);
                let set = postcard::from_bytes(&held)
                    .map_err(|e| anyhow::anyhow!("holdings record of device {id}: {e}"))?;
                Ok(Some((hash, set)))
            },
        )
    }

    fn record_holdings(
        &self,
        device: &str,
        hash: &Digest,
        set: &HeldSet,
        at: u64,
    ) -> anyhow::Result<()> {
        let data = (
            device.to_owned(),
            hash.0.to_vec(),
            postcard::to_allocvec(set)?,
            count(set.layers.len())?,
            count(set.objects.len())?,
            to_i64(at)?,
        );
        self.pg.write(data, |tx, data| {
            let (device, hash, held, layers, objects, at) = data;
            Box::pin(async move {
                let s = tx
                    .prepare_cached(
                        "INSERT INTO devices_holdings (device, hash, held, layers, objects)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (device) DO UPDATE SET hash = EXCLUDED.hash,
                           held = EXCLUDED.held, layers = EXCLUDED.layers,
                           objects = EXCLUDED.objects",
                    )
                    .await?;
                tx.execute(&s, &[device, hash, held, layers, objects])
                    .await?;
                let s = tx.prepare_cached(UPSERT_SEEN).await?;
                tx.execute(&s, &[&vec![device.clone()], &vec![*at]]).await?;
                Ok(())
            })
        })
    }

    fn note_seen(&self, device: &str, at: u64) {
        self.seen.note(device, at);
    }

    fn flush_seen(&self) -> anyhow::Result<usize> {
        // On failure (the database unreachable) the times stay noted for
        // the next flush.
        self.seen.flush(|pending| {
            let devices: Vec<String> = pending.keys().cloned().collect();
            let times = pending
                .values()
                .map(|t| to_i64(*t))
                .collect::<anyhow::Result<Vec<i64>>>()?;
            self.pg.write((devices, times), |tx, (devices, times)| {
                Box::pin(async move {
                    let s = tx.prepare_cached(UPSERT_SEEN).await?;
                    tx.execute(&s, &[devices, times]).await?;
                    Ok(())
                })
            })
        })
    }

    fn record_images(&self, device: &str, record: &ImagesRecord) -> anyhow::Result<()> {
        self.upsert_bytes(
            "INSERT INTO devices_images (device, record) VALUES ($1, $2)
             ON CONFLICT (device) DO UPDATE SET record = EXCLUDED.record",
            device,
            postcard::to_allocvec(record)?,
        )
    }

    fn record_last_sync(&self, device: &str, last: &LastSync) -> anyhow::Result<()> {
        let data = (
            device.to_owned(),
            to_i64(last.at)?,
            last.image.clone(),
            last.request.clone(),
            last.outcome.clone(),
            to_i64(last.bytes)?,
        );
        self.pg.write(data, |tx, data| {
            let (device, at, image, request, outcome, bytes) = data;
            Box::pin(async move {
                let s = tx
                    .prepare_cached(
                        "INSERT INTO devices_last_sync (device, at, image, request, outcome, bytes)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (device) DO UPDATE SET at = EXCLUDED.at,
                           image = EXCLUDED.image, request = EXCLUDED.request,
                           outcome = EXCLUDED.outcome, bytes = EXCLUDED.bytes",
                    )
                    .await?;
                tx.execute(&s, &[device, at, image, request, outcome, bytes])
                    .await?;
                Ok(())
            })
        })
    }

    fn records(&self) -> anyhow::Result<Vec<DeviceRecord>> {
        self.flush_seen()?;
        // One statement, so the listing is one snapshot.
        self.pg.read(
            "SELECT d.device, s.at, h.hash, h.layers, h.objects, i.record,
                    l.at, l.image, l.request, l.outcome, l.bytes
             FROM (SELECT device FROM devices_seen UNION SELECT device FROM devices_holdings
                   UNION SELECT device FROM devices_images
                   UNION SELECT device FROM devices_last_sync) AS d
             LEFT JOIN devices_seen s USING (device)
             LEFT JOIN devices_holdings h USING (device)
             LEFT JOIN devices_images i USING (device)
             LEFT JOIN devices_last_sync l USING (device)
             ORDER BY d.device",
            (),
            |rows| {
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let hash: Option<Vec<u8>> = r.get(2);
                    let holdings = match hash {
                        Some(h) => Some(HoldingsSummary {
                            hash: digest_of(h)?,
                            layers: usize::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                            loose_objects: usize::try_from(r.get::<_, i32>(4)).unwrap_or(0),
                        }),
                        None => None,
                    };
                    let images: Option<Vec<u8>> = r.get(5);
                    let last_at: Option<i64> = r.get(6);
                    out.push(DeviceRecord {
                        id: r.get(0),
                        seen: r.get::<_, Option<i64>>(1).map(to_u64),
                        holdings,
                        images: images.and_then(|b| postcard::from_bytes(&b).ok()),
                        last_sync: last_at.map(|at| LastSync {
                            at: to_u64(at),
                            image: r.get(7),
                            request: r.get(8),
                            outcome: r.get(9),
                            bytes: to_u64(r.get(10)),
                        }),
                    });
                }
                Ok(out)
            },
        )
    }

    fn layers_held_since(&self, seen_after: u64) -> anyhow::Result<HashSet<Digest>> {
        self.flush_seen()?;
        self.pg.read(
            "SELECT h.device, h.held FROM devices_holdings h
             JOIN devices_seen s USING (device) WHERE s.at > $1",
            (to_i64(seen_after)?,),
            |rows| {
                let mut out = HashSet::new();
                let mut undecodable = BTreeMap::new();
                for r in rows {
                    let held: Vec<u8> = r.get(1);
                    match postcard::from_bytes::<HeldSet>(&held) {
                        Ok(set) => out.extend(set.layers),
                        Err(e) => {
                            undecodable.insert(r.get::<_, String>(0), e.to_string());
                        }
                    }
                }
                for (device, e) in undecodable {
                    tracing::warn!(device, error = %e, "a holdings record does not decode: counted as holding nothing");
                }
                Ok(out)
            },
        )
    }
}
