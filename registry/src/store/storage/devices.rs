//! The device-records interface: what each device holds (its holdings set
//! and hash), when it was last seen, the images it last reported and how
//! its last transfer ended. The sync endpoints, the fleet view, `devices`
//! and the garbage collector only see [`DeviceStore`]; the embedded
//! implementation is [`super::RedbDevices`], the shared one
//! [`super::PgDevices`] (with `[storage] metadata = "postgres://…"`, so a
//! device may sync through any replica).
//!
//! **The cheap path.** Most requests come from devices whose holdings did
//! not change: they cost one read of the recorded hash
//! ([`DeviceStore::holdings_hash`]) and a last-seen time noted in memory
//! ([`DeviceStore::note_seen`]), written in batches by
//! [`DeviceStore::flush_seen`] (every few seconds by `serve`, and before
//! every reader of the times). A process killed between flushes loses at
//! most those seconds of last-seen times, nothing else.

use layerlink_proto::msg::{HeldImage, HeldSet};
use layerlink_proto::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// How a device's last transfer (archive or objects response) or refused
/// request ended. Up-to-date plans do not write it (they only move the
/// last-seen time), so the cheap path stays one read.
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

/// The images a device last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesRecord {
    /// When (Unix seconds).
    pub reported_at: u64,
    /// The images.
    pub images: Vec<HeldImage>,
}

/// A recorded holdings set, as listings show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldingsSummary {
    /// The set's hash.
    pub hash: Digest,
    /// Committed layers held.
    pub layers: usize,
    /// Loose objects held.
    pub loose_objects: usize,
}

/// Everything recorded about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// Last request of any kind, Unix seconds.
    pub seen: Option<u64>,
    /// The recorded holdings (`None` also for a record that no longer
    /// decodes: the device simply sends its full set again).
    pub holdings: Option<HoldingsSummary>,
    /// The images of its last report.
    pub images: Option<ImagesRecord>,
    /// Its last transfer or refusal.
    pub last_sync: Option<LastSync>,
}

/// Where the device records live. Every method is blocking (call it from
/// `spawn_blocking`); each write is atomic. A device id is a string the
/// registry config defines; records of devices removed from the config
/// stay until an operator clears them.
pub trait DeviceStore: Send + Sync {
    /// The hash of the holdings set recorded for `device` (the up-to-date
    /// check: it must stay one cheap read).
    fn holdings_hash(&self, device: &str) -> anyhow::Result<Option<Digest>>;

    /// The holdings set recorded for `device`, with its hash.
    fn holdings(&self, device: &str) -> anyhow::Result<Option<(Digest, HeldSet)>>;

    /// Record `set` (canonical, hash `hash`) as what `device` holds and
    /// that it was seen at `at` — one transaction. A later last-seen time
    /// already recorded (by another replica) is kept.
    fn record_holdings(
        &self,
        device: &str,
        hash: &Digest,
        set: &HeldSet,
        at: u64,
    ) -> anyhow::Result<()>;

    /// Note that `device` was seen at `at`, in memory; [`Self::flush_seen`]
    /// writes it.
    fn note_seen(&self, device: &str, at: u64);

    /// Write the noted last-seen times in one transaction, keeping any
    /// later time already recorded. Returns how many devices it wrote.
    fn flush_seen(&self) -> anyhow::Result<usize>;

    /// Record the images `device` reports holding.
    fn record_images(&self, device: &str, record: &ImagesRecord) -> anyhow::Result<()>;

    /// Record how `device`'s last transfer or refused request ended.
    fn record_last_sync(&self, device: &str, last: &LastSync) -> anyhow::Result<()>;

    /// Every device with any record, sorted by id (flushes noted times
    /// first).
    fn records(&self) -> anyhow::Result<Vec<DeviceRecord>>;

    /// The layers held by devices last seen after `seen_after` (Unix
    /// seconds): what the garbage collector keeps for devices (flushes
    /// noted times first). A holdings record that does not decode counts
    /// as holding nothing.
    fn layers_held_since(&self, seen_after: u64) -> anyhow::Result<HashSet<Digest>>;
}

/// Last-seen times noted and not yet written: device → Unix seconds.
#[derive(Debug, Default)]
pub struct SeenBuffer(Mutex<BTreeMap<String, u64>>);

impl SeenBuffer {
    /// Note `device` seen at `at` (a later time wins).
    pub fn note(&self, device: &str, at: u64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let t = m.entry(device.to_owned()).or_insert(at);
        *t = (*t).max(at);
    }

    /// Hand every noted time to `write` (which stores them, keeping any
    /// later recorded time); if it fails, the times are noted again for the
    /// next flush (a later time noted meanwhile wins). Returns how many
    /// devices were written; `write` is not called when nothing is noted.
    pub fn flush(
        &self,
        write: impl FnOnce(&BTreeMap<String, u64>) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let pending = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return Ok(0);
        }
        match write(&pending) {
            Ok(()) => Ok(pending.len()),
            Err(e) => {
                for (d, at) in pending {
                    self.note(&d, at);
                }
                Err(e)
            }
        }
    }
}
