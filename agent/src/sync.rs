//! One sync run: plan, fetch and apply what is missing, report.
//!
//! ```text
//! held set ──► POST /plan (Holdings::Hash when the registry acknowledged
//!              this exact set, else Full; 409 → resend Full)
//! for each image whose manifest differs from the local record:
//!     POST /archive (missing layers; manifest+config unless a record of
//!                    this manifest exists) ─► apply, commit layer by layer
//!     POST /objects (references the store could not resolve) ─► repair
//!     write the image record (after all its layers are committed)
//! POST /report (skipped when nothing changed since the last one)
//! ```
//!
//! A transient failure (connect error, 5xx, cut stream) restarts the run
//! after an exponential backoff (1 s, 2 s, 4 s … capped at 60 s) until the
//! retry window closes. Nothing already stored is downloaded again:
//! committed layers are held, and objects written before a cut are loose
//! objects of the next holdings set.

use crate::apply::{Applier, ApplyOptions};
use crate::client::{is_unknown_holdings, Remote};
use crate::error::{exit, Error, Result};
use crate::fsops;
use crate::json;
use crate::progress::human;
use crate::store::record::{show_image_ref, ImageRecord, FORMAT_VERSION};
use crate::store::{now, Store};
use layerlink_proto::limits::MAX_REPAIR_OBJECTS;
use layerlink_proto::msg::{
    ArchiveRequest, HeldImage, HeldSet, Holdings, ImagePlan, ImageRef, LayerState, ObjectsRequest,
    PlanRequest, Platform, Report,
};
use layerlink_proto::{Digest, ErrorCode};
use std::time::{Duration, Instant};

/// What to sync and how.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The device's platform.
    pub platform: Platform,
    /// Images wanted.
    pub images: Vec<ImageRef>,
    /// How long to keep retrying transient failures.
    pub retry_for: Duration,
    /// First backoff delay (doubles, capped at 60 s).
    pub first_backoff: Duration,
    /// Print progress lines on stderr.
    pub progress: bool,
    /// Accept device nodes in layers.
    pub allow_devices: bool,
    /// Sync an image whose config names another platform.
    pub force_platform: bool,
    /// Verify each new layer against its diff_id ([`crate::tarsplit`]).
    pub verify_layers: crate::tarsplit::VerifyLayers,
    /// Apply only images signed with this key ([`crate::trust`]).
    pub trust: Option<crate::trust::Policy>,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Images whose record was (re)written.
    pub updated: Vec<ImageRef>,
    /// Images already up to date.
    pub up_to_date: Vec<ImageRef>,
    /// Layers committed.
    pub layers: u64,
    /// New file bytes received.
    pub new_bytes: u64,
    /// Whether a report was sent.
    pub reported: bool,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    /// Images that failed (each image succeeds or fails on its own).
    pub failed: Vec<ImageFailure>,
}

/// One image that could not be synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFailure {
    /// The image as asked.
    pub image: ImageRef,
    /// The exit code of its error ([`exit::NOT_FOUND`] when the registry
    /// has no such repository, tag or platform).
    pub exit_code: i32,
    /// The error, for a human.
    pub message: String,
    /// Whether retrying may help (network); such failures restart the run.
    pub transient: bool,
}

impl SyncSummary {
    /// The exit code of the whole run: 0 when every image is synced or up
    /// to date; [`exit::NOT_FOUND`] when every failure is "not found";
    /// [`exit::PARTIAL`] when some images failed and others did not; else
    /// the first failure's code (e.g. 3 offline, 6 disk full).
    pub fn exit_code(&self) -> i32 {
        let Some(first) = self.failed.first() else {
            return exit::OK;
        };
        if self.failed.iter().all(|f| f.exit_code == exit::NOT_FOUND) {
            exit::NOT_FOUND
        } else if !self.updated.is_empty() || !self.up_to_date.is_empty() {
            exit::PARTIAL
        } else {
            first.exit_code
        }
    }
}

/// Whether a plan error says the image (repository, tag or platform) does
/// not exist.
fn is_not_found(e: &Error) -> bool {
    matches!(
        e,
        Error::Server { status: 404, .. }
            | Error::Server {
                code: Some(ErrorCode::NotFound | ErrorCode::PlatformNotFound),
                ..
            }
    )
}

/// Run a sync with retries.
pub fn sync(store: &Store, remote: &mut dyn Remote, opts: &SyncOptions) -> Result<SyncSummary> {
    let start = Instant::now();
    let mut delay = opts.first_backoff;
    let mut summary = SyncSummary::default();
    loop {
        summary.attempts += 1;
        let result = attempt(store, remote, opts, &mut summary).and_then(|()| {
            // An image that failed on the network makes the run retry (the
            // others are up to date by then, so a retry costs little).
            match summary.failed.iter().find(|f| f.transient) {
                Some(f) if start.elapsed() + delay < opts.retry_for => {
                    Err(Error::Transient(f.message.clone()))
                }
                _ => Ok(()),
            }
        });
        match result {
            Ok(()) => return Ok(summary),
            Err(e) if e.is_transient() && start.elapsed() + delay < opts.retry_for => {
                if opts.progress {
                    eprintln!("{e}; retrying in {} ms", delay.as_millis());
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The holdings to send: the hash when the registry acknowledged this
/// exact set, else the set.
fn holdings(store: &Store, held: &HeldSet) -> Holdings {
    let h = held.hash();
    if store.state().acked_holdings == Some(h) {
        Holdings::Hash(h)
    } else {
        Holdings::Full(held.clone())
    }
}

fn remember_ack(store: &Store, acked: Digest) -> Result<()> {
    let mut st = store.state();
    if st.acked_holdings != Some(acked) {
        st.acked_holdings = Some(acked);
        store.save_state(&st)?;
    }
    Ok(())
}

fn attempt(
    store: &Store,
    remote: &mut dyn Remote,
    opts: &SyncOptions,
    summary: &mut SyncSummary,
) -> Result<()> {
    summary.failed.clear();
    let held = store.held_set()?;
    // One plan for all images; when it fails for a reason other than the
    // network (an unknown image makes the registry refuse the whole plan),
    // ask image by image so that each succeeds or fails on its own.
    let planned: Vec<(ImageRef, Result<ImagePlan>)> =
        match plan(store, remote, opts, &opts.images, &held) {
            Ok(plans) => opts
                .images
                .iter()
                .cloned()
                .zip(plans.into_iter().map(Ok))
                .collect(),
            Err(e) if e.is_transient() || opts.images.len() == 1 => {
                if e.is_transient() {
                    return Err(e);
                }
                vec![(opts.images[0].clone(), Err(e))]
            }
            Err(_) => {
                let mut out = Vec::new();
                for img in &opts.images {
                    let one = std::slice::from_ref(img);
                    match plan(store, remote, opts, one, &held) {
                        Ok(mut p) => out.push((img.clone(), Ok(p.remove(0)))),
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => out.push((img.clone(), Err(e))),
                    }
                }
                out
            }
        };
    for (want, ip) in &planned {
        let res = match ip {
            Err(e) => Err((
                if is_not_found(e) {
                    exit::NOT_FOUND
                } else {
                    e.exit_code()
                },
                e.to_string(),
                false,
            )),
            Ok(ip) => sync_image(store, remote, opts, want, ip, summary)
                .map_err(|e| (e.exit_code(), e.to_string(), e.is_transient())),
        };
        if let Err((exit_code, message, transient)) = res {
            eprintln!("image {}: {message}", show_image_ref(want));
            summary.up_to_date.retain(|i| i != want);
            summary.updated.retain(|i| i != want);
            summary.failed.push(ImageFailure {
                image: want.clone(),
                exit_code,
                message,
                transient,
            });
        }
    }
    if summary.failed.iter().any(|f| f.transient) {
        // The retry reports (with what this attempt stored).
        return Ok(());
    }
    match report(store, remote, summary) {
        // An image's own error is what the operator needs; a failed report
        // (often the same full disk) must not hide it.
        Err(r) if !summary.failed.is_empty() => {
            eprintln!("reporting holdings: {r}");
            Ok(())
        }
        r => r,
    }
}

/// `POST /plan` for `images`; one [`ImagePlan`] per image, in order.
fn plan(
    store: &Store,
    remote: &mut dyn Remote,
    opts: &SyncOptions,
    images: &[ImageRef],
    held: &HeldSet,
) -> Result<Vec<ImagePlan>> {
    let mut req = PlanRequest {
        platform: opts.platform.clone(),
        images: images.to_vec(),
        holdings: holdings(store, held),
    };
    let plan = match remote.plan(&req) {
        Err(e) if is_unknown_holdings(&e) && matches!(req.holdings, Holdings::Hash(_)) => {
            req.holdings = Holdings::Full(held.clone());
            remote.plan(&req)?
        }
        r => r?,
    };
    if plan.holdings_hash == held.hash() {
        remember_ack(store, plan.holdings_hash)?;
    }
    if plan.images.len() != images.len() {
        return Err(Error::Server {
            status: 200,
            code: None,
            message: format!(
                "plan answers {} images for {} asked",
                plan.images.len(),
                images.len()
            ),
        });
    }
    Ok(plan.images)
}

fn bad_answer(msg: String) -> Error {
    Error::Server {
        status: 200,
        code: None,
        message: msg,
    }
}

fn sync_image(
    store: &Store,
    remote: &mut dyn Remote,
    opts: &SyncOptions,
    want: &ImageRef,
    ip: &ImagePlan,
    summary: &mut SyncSummary,
) -> Result<()> {
    let name = show_image_ref(want);
    // With a trust key: the signature, manifest, config and diff_ids are
    // checked before anything is fetched or committed (for an image up to
    // date too: its signature must still be there).
    let verified = match &opts.trust {
        Some(policy) => {
            let held = store
                .records()?
                .into_iter()
                .find(|r| r.manifest_digest == ip.manifest_digest)
                .map(|r| (r.manifest, r.config));
            let v = crate::trust::verify_image(policy, remote, want, ip, held)?;
            if opts.progress {
                eprintln!("image {name}: signature verified ({})", ip.manifest_digest);
            }
            Some(v)
        }
        None => None,
    };
    // The layers to apply: the signed config's diff_ids when verified
    // (equal to the plan's, checked), else the plan's.
    let diff_ids: Vec<Digest> = match verified {
        Some(v) => v.diff_ids,
        None => ip.layers.iter().map(|l| l.diff_id).collect(),
    };
    let mut missing: Vec<Digest> = Vec::new();
    for d in &diff_ids {
        if !store.has_layer(d)? && !missing.contains(d) {
            missing.push(*d);
        }
    }
    let current = store.record(want)?;
    if missing.is_empty()
        && current
            .as_ref()
            .is_some_and(|r| r.manifest_digest == ip.manifest_digest && r.layers == diff_ids)
    {
        if !summary.up_to_date.contains(want) && !summary.updated.contains(want) {
            summary.up_to_date.push(want.clone());
        }
        if opts.progress {
            eprintln!("image {name}: up to date ({})", ip.manifest_digest);
        }
        return Ok(());
    }
    // Manifest and config: from any record of this manifest, else the archive.
    let known = store
        .records()?
        .into_iter()
        .find(|r| r.manifest_digest == ip.manifest_digest);
    let need_meta = known.is_none();
    let (mut manifest, mut config) = match known {
        Some(r) => (r.manifest, r.config),
        None => (Vec::new(), Vec::new()),
    };

    if !missing.is_empty() || need_meta {
        let mut new_files = 0u64;
        let mut new_bytes = 0u64;
        let mut entries = 0u64;
        let mut refs = 0u64;
        let mut known_cost = true;
        for d in &missing {
            match ip.layers.iter().find(|l| l.diff_id == *d).map(|l| l.state) {
                Some(LayerState::Needed(c)) => {
                    new_files += c.new_files as u64;
                    new_bytes += c.new_bytes;
                    entries += c.entries as u64;
                    refs += c.referenced_files as u64;
                }
                _ => known_cost = false,
            }
        }
        if opts.progress {
            eprintln!(
                "image {name}: {} of {} layers to fetch ({new_files} new files, {}; {refs} referenced)",
                missing.len(),
                diff_ids.len(),
                human(new_bytes)
            );
        }
        // Layer framings first, so no layer is committed unverified.
        let layer_check = crate::tarsplit::fetch(
            store,
            remote,
            opts.verify_layers,
            &want.repository,
            ip.manifest_digest,
            &missing,
        )?;
        let held = store.held_set()?;
        let req = ArchiveRequest {
            repository: want.repository.clone(),
            manifest_digest: ip.manifest_digest,
            layers: missing.clone(),
            metadata: need_meta,
            holdings: holdings(store, &held),
        };
        // The rest of an archive a cut left half-received (crate::resume),
        // when it carries everything still missing.
        let kept = crate::resume::find(store, &ip.manifest_digest).filter(|(k, _, _)| {
            k.metadata == need_meta && missing.iter().all(|d| k.layers.contains(d))
        });
        let dl = match &kept {
            Some((_, _, header)) => remote.archive_resume(&req, header)?,
            None => remote.archive(&req)?,
        };
        let resumed = kept.filter(|(k, len, _)| {
            dl.offset == Some(*len) && dl.id.as_deref() == Some(k.id.as_str())
        });
        if let Some(n) = dl.new_bytes {
            // Content, plus room for directories, metadata and sync slack.
            let needed = n.saturating_add(n / 32).saturating_add(16 << 20);
            let free = fsops::free_bytes(store.root_fd())
                .map_err(|e| Error::io("checking free space", e))?;
            if free < needed {
                return Err(Error::DiskFull {
                    needed: Some(needed),
                    available: Some(free),
                    context: format!("syncing {name} into {}", store.root().display()),
                });
            }
        }
        // The stream: the kept bytes, then the network's, or a fresh archive
        // kept as it arrives (when the disk has room for a second copy).
        let (stream_layers, body) = match resumed {
            Some((k, len, _)) => {
                let Some((prefix, append)) = crate::resume::reopen(store) else {
                    crate::resume::clear(store);
                    return Err(Error::Transient("the kept archive went away".into()));
                };
                if opts.progress {
                    eprintln!("image {name}: resuming the archive at byte {len}");
                }
                let body = crate::resume::Stream {
                    prefix: Some(prefix),
                    inner: dl.body,
                    out: Some(append),
                };
                (k.layers, body)
            }
            None => {
                let room = fsops::free_bytes(store.root_fd()).unwrap_or(0) / 2
                    > dl.new_bytes.unwrap_or(0).saturating_add(64 << 20);
                let out = match dl.id {
                    Some(id) if room => crate::resume::start(
                        store,
                        &crate::resume::Kept {
                            id,
                            manifest: ip.manifest_digest,
                            metadata: need_meta,
                            layers: missing.clone(),
                        },
                    ),
                    _ => {
                        crate::resume::clear(store);
                        None
                    }
                };
                let body = crate::resume::Stream {
                    prefix: None,
                    inner: dl.body,
                    out,
                };
                (missing.clone(), body)
            }
        };
        let mut aopts = ApplyOptions::new(stream_layers);
        aopts.image_layers = diff_ids.clone();
        aopts.metadata = need_meta;
        aopts.allow_devices = opts.allow_devices;
        aopts.platform = (!opts.force_platform).then(|| (opts.platform.clone(), ip.config_digest));
        aopts.progress = opts.progress;
        aopts.layer_check = layer_check;
        aopts.expected_new_bytes = dl.new_bytes.or(known_cost.then_some(new_bytes));
        if known_cost {
            let bound = new_bytes.max(dl.new_bytes.unwrap_or(0));
            aopts.max_new_bytes = bound + bound / 64 + (1 << 20);
            aopts.max_stream_bytes = aopts
                .max_new_bytes
                .saturating_add(entries.saturating_add(16).saturating_mul(8 * 1024))
                .saturating_add(2 * layerlink_proto::limits::MAX_METADATA_BYTES)
                .saturating_add(64 << 20);
        }
        let mut applier = Applier::new(store, aopts)?;
        let announced = dl.new_bytes.unwrap_or(new_bytes);
        let applied = applier.apply_encoded(body, dl.encoding);
        if applied.as_ref().is_err_and(|e| !e.is_transient()) {
            // Only a cut is resumed: bad data or a refusal is never replayed.
            crate::resume::clear(store);
        }
        applier.finish_progress();
        let stored = applier.stored_new_bytes();
        applied.map_err(|e| match e {
            // Name what is still needed when the disk filled up mid-way: the
            // announced content not stored yet, plus the local copy that
            // failed (objects already stored stay for the retry).
            Error::DiskFull {
                needed,
                available,
                context,
            } => Error::DiskFull {
                needed: Some(
                    announced
                        .saturating_sub(stored)
                        .saturating_add(needed.unwrap_or(0)),
                ),
                available: available.or_else(|| fsops::free_bytes(store.root_fd()).ok()),
                context,
            },
            e => e,
        })?;
        let pending = applier.pending_digests();
        if !pending.is_empty() {
            if opts.progress {
                eprintln!(
                    "image {name}: fetching {} objects the store lacks",
                    pending.len()
                );
            }
            for chunk in pending.chunks(MAX_REPAIR_OBJECTS) {
                let dl = remote.objects(&ObjectsRequest {
                    repository: want.repository.clone(),
                    digests: chunk.to_vec(),
                })?;
                applier.store_objects_encoded(dl.body, chunk, dl.encoding)?;
            }
        }
        // Link the repaired (or later-arrived) objects, commit what waited.
        applier.resolve_pending()?;
        for (_, s) in applier.committed() {
            summary.layers += 1;
            summary.new_bytes += s.new_bytes;
        }
        if need_meta {
            manifest = applier.manifest.take().unwrap_or_default();
            config = applier.config.take().unwrap_or_default();
        }
    }

    if Digest::of(&manifest) != ip.manifest_digest {
        return Err(Error::integrity(format!(
            "image {name}: manifest does not match {}",
            ip.manifest_digest
        )));
    }
    if Digest::of(&config) != ip.config_digest {
        return Err(Error::integrity(format!(
            "image {name}: config does not match {}",
            ip.config_digest
        )));
    }
    check_config_layers(&config, &diff_ids)
        .map_err(|m| bad_answer(format!("image {name}: {m}")))?;
    for d in &diff_ids {
        if !store.has_layer(d)? {
            return Err(bad_answer(format!("image {name}: layer {d} was not sent")));
        }
    }
    crate::resume::clear(store);
    store.write_record(&ImageRecord {
        version: FORMAT_VERSION,
        image: want.clone(),
        manifest_digest: ip.manifest_digest,
        config_digest: ip.config_digest,
        manifest,
        config,
        layers: diff_ids,
        synced_at: now(),
    })?;
    summary.up_to_date.retain(|i| i != want);
    if !summary.updated.contains(want) {
        summary.updated.push(want.clone());
    }
    if opts.progress {
        eprintln!("image {name}: synced {}", ip.manifest_digest);
    }
    Ok(())
}

/// The config's `rootfs.diff_ids` must be the plan's layers.
fn check_config_layers(config: &[u8], diff_ids: &[Digest]) -> std::result::Result<(), String> {
    let v = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
    let ids = v
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .map(json::Value::str_list)
        .unwrap_or_default();
    let ids: Vec<Digest> = ids.iter().filter_map(|s| Digest::parse(s).ok()).collect();
    if ids != diff_ids {
        return Err("the plan's layers differ from the config's rootfs.diff_ids".into());
    }
    Ok(())
}

/// Send the report unless the registry already has exactly this one.
fn report(store: &Store, remote: &mut dyn Remote, summary: &mut SyncSummary) -> Result<()> {
    let held = store.held_set()?;
    let h = held.hash();
    let images: Vec<HeldImage> = store
        .records()?
        .into_iter()
        .map(|r| HeldImage {
            image: r.image,
            manifest_digest: r.manifest_digest,
        })
        .collect();
    let mut fp = postcard::to_allocvec(&images).unwrap_or_default();
    fp.extend_from_slice(&h.0);
    let fingerprint = Digest::of(&fp);
    let st = store.state();
    if st.reported == Some(fingerprint) && st.acked_holdings == Some(h) {
        return Ok(());
    }
    let mut req = Report {
        holdings: holdings(store, &held),
        images,
    };
    let ack = match remote.report(&req) {
        Err(e) if is_unknown_holdings(&e) && matches!(req.holdings, Holdings::Hash(_)) => {
            req.holdings = Holdings::Full(held);
            remote.report(&req)?
        }
        r => r?,
    };
    let mut st = store.state();
    if ack.holdings_hash == h {
        st.acked_holdings = Some(h);
        st.reported = Some(fingerprint);
    }
    store.save_state(&st)?;
    summary.reported = true;
    Ok(())
}
