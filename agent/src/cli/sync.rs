//! `sync` and `verify --repair`: flags and the config file become a
//! [`SyncSetup`]; the store check runs before the sync, the outcome is
//! recorded for `status`, retention (`--keep`) runs after it.

use super::args::Args;
use super::config::{parse_config, ConfigFile};
use super::{image_arg, usage};
use crate::client::{Client, ClientConfig};
use crate::error::{exit, Result};
use crate::platform::{default_platform, parse_platform};
use crate::progress::human;
use crate::store::record::{show_image_ref, ImageOutcome, SyncResult};
use crate::store::{now, Access, Store};
use crate::sync::{sync, SyncOptions, SyncSummary};
use layerlink_proto::msg::ImageRef;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn read_token(path: &str) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("reading token file {path}: {e}")))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(usage(format!("token file {path} is empty")));
    }
    Ok(t)
}

/// The flags of `sync` (and of `verify --repair`, which syncs).
pub(super) const SYNC_FLAGS: &[&str] = &[
    "--server",
    "--store",
    "--token",
    "--token-file",
    "--ca-file",
    "--platform",
    "--config",
    "--retry-for",
    "--keep",
    "--quiet",
    "-q",
    "--no-devices",
    "--no-zstd",
    "--no-deltas",
    "--force-platform",
    "--verify-layers",
    "--trust-key",
];

/// Everything a sync run needs, from flags and the config file.
struct SyncSetup {
    store: Store,
    client: Client,
    opts: SyncOptions,
    quiet: bool,
    /// Retention: previous images kept per repository (None: keep all).
    keep: Option<u64>,
}

pub(super) fn cmd_sync(a: &Args) -> Result<i32> {
    a.only("sync", SYNC_FLAGS)?;
    let mut s = sync_setup(a, false)?;
    heal_before_sync(&s.store, false, s.quiet)?;
    let result = sync(&s.store, &mut s.client, &s.opts);
    let code = finish_sync(&s.store, result, s.quiet)?;
    retain(&s, code)?;
    mark_checked(&s.store);
    Ok(code)
}

/// Move the self-check watermark. A failure (e.g. a full disk) only costs
/// the next sync some re-hashing, so it must not change the exit code.
fn mark_checked(store: &Store) {
    if let Err(e) = store.mark_checked() {
        eprintln!("warning: the store check watermark was not moved: {e}");
    }
}

/// The check that starts every sync (see `store::heal`): drop damaged
/// objects and the layers using them, which the sync then fetches again.
fn heal_before_sync(store: &Store, full: bool, quiet: bool) -> Result<()> {
    let h = store.heal(full, |p| eprintln!("damaged: {p}"))?;
    if !quiet && (h.rehashed > 0 || h.layers_removed > 0 || full) {
        eprintln!(
            "store check: {} object(s), {} re-hashed, {} damaged removed, {} layer(s) to rebuild",
            h.objects, h.rehashed, h.damaged, h.layers_removed
        );
    }
    Ok(())
}

/// Retention after a sync that ended 0 (or 8: only images not found
/// failed): for each repository whose images of this run all succeeded,
/// keep those images and the `keep` most recently synced
/// others; remove the rest, then gc.
fn retain(s: &SyncSetup, code: i32) -> Result<()> {
    let Some(keep) = s.keep else {
        return Ok(());
    };
    // Not after a failed image: gc would drop the loose objects its retry
    // resumes from (an image that is not found left none).
    if code != exit::OK && code != exit::NOT_FOUND {
        return Ok(());
    }
    let failed: Vec<ImageRef> = s
        .store
        .state()
        .last_sync
        .map(|r| {
            r.images
                .into_iter()
                .filter(|o| o.exit_code != 0)
                .map(|o| o.image)
                .collect()
        })
        .unwrap_or_default();
    let mut repos: Vec<&str> = s
        .opts
        .images
        .iter()
        .filter(|i| !failed.iter().any(|f| f.repository == i.repository))
        .map(|i| i.repository.as_str())
        .collect();
    repos.sort_unstable();
    repos.dedup();
    let mut removed = 0;
    for repo in repos {
        let mut others: Vec<_> = s
            .store
            .records()?
            .into_iter()
            .filter(|r| r.image.repository == repo && !s.opts.images.contains(&r.image))
            .collect();
        others.sort_by_key(|r| std::cmp::Reverse(r.synced_at));
        for r in others.iter().skip(keep as usize) {
            s.store.remove_record(&r.image)?;
            removed += 1;
            if !s.quiet {
                eprintln!("retention: removed {}", show_image_ref(&r.image));
            }
        }
    }
    let g = s.store.gc()?;
    if !s.quiet && (removed > 0 || g.bytes_freed > 0) {
        eprintln!(
            "gc: removed {} layer(s) and {} object(s), freed {}",
            g.layers_removed,
            g.objects_removed,
            human(g.bytes_freed)
        );
    }
    Ok(())
}

fn sync_setup(a: &Args, repair: bool) -> Result<SyncSetup> {
    let cfg = match a.value("--config") {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("reading config {p}: {e}")))?;
            parse_config(&text).map_err(|e| usage(format!("config {p}: {e}")))?
        }
        None => ConfigFile::default(),
    };
    let server = a
        .value("--server")
        .map(str::to_string)
        .or(cfg.server)
        .ok_or_else(|| usage("--server URL is required"))?;
    let store_path = a
        .value("--store")
        .map(str::to_string)
        .or(cfg.store)
        .ok_or_else(|| usage("--store DIR is required"))?;
    let token = match (
        a.value("--token"),
        a.value("--token-file"),
        cfg.token_file.as_deref(),
    ) {
        (Some(t), _, _) => Some(t.to_string()),
        (None, Some(f), _) | (None, None, Some(f)) => Some(read_token(f)?),
        _ => None,
    };
    let trust = match a.value("--trust-key").or(cfg.trust_key.as_deref()) {
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| usage(format!("reading trust key {p}: {e}")))?;
            Some(
                crate::trust::Policy::from_pem(&pem)
                    .map_err(|e| usage(format!("trust key {p}: {e}")))?,
            )
        }
        None => None,
    };
    let cfg_force_platform = cfg.force_platform.unwrap_or(false);
    let cfg_deltas = cfg.deltas.unwrap_or(true);
    let platform = match a.value("--platform").map(str::to_string).or(cfg.platform) {
        Some(p) => parse_platform(&p)
            .ok_or_else(|| usage(format!("bad platform {p:?} (os/arch[/variant])")))?,
        None => default_platform(),
    };
    let image_args: Vec<String> = if !a.positional.is_empty() {
        a.positional.clone()
    } else if repair {
        // verify --repair: what the store holds.
        let store = Store::open(Path::new(&store_path), Access::ReadOnly)?;
        store
            .records()?
            .iter()
            .map(|r| show_image_ref(&r.image))
            .collect()
    } else {
        cfg.images.unwrap_or_default()
    };
    if image_args.is_empty() && !repair {
        return Err(usage("no IMAGE to sync"));
    }
    if image_args.len() > layerlink_proto::limits::MAX_IMAGES_PER_PLAN {
        return Err(usage("too many images for one sync"));
    }
    let images = image_args
        .iter()
        .map(|s| image_arg(s))
        .collect::<Result<Vec<_>>>()?;
    let retry_for = match a.value("--retry-for") {
        Some(s) => s
            .parse()
            .map_err(|_| usage(format!("--retry-for {s:?} is not a number of seconds")))?,
        None => cfg.retry_for.unwrap_or(300),
    };
    let client_cfg = ClientConfig {
        server,
        token,
        ca_file: a
            .value("--ca-file")
            .map(PathBuf::from)
            .or(cfg.ca_file.map(PathBuf::from)),
        no_zstd: a.has(&["--no-zstd"]),
        no_deltas: a.has(&["--no-deltas"]) || !cfg_deltas,
    };
    let verify_layers = match a
        .value("--verify-layers")
        .map(str::to_string)
        .or(cfg.verify_layers)
    {
        Some(v) => crate::tarsplit::VerifyLayers::parse(&v)
            .ok_or_else(|| usage(format!("verify_layers {v:?}: expected on, off or require")))?,
        // With a trust policy the signed config's diff_ids are what the
        // layers must hash to: every layer is checked.
        None if trust.is_some() => crate::tarsplit::VerifyLayers::Require,
        None => Default::default(),
    };
    let client = Client::new(&client_cfg)?;
    let store = Store::open(Path::new(&store_path), Access::Exclusive)?;
    let quiet = a.has(&["--quiet", "-q"]);
    let opts = SyncOptions {
        platform,
        images,
        retry_for: Duration::from_secs(retry_for),
        first_backoff: Duration::from_secs(1),
        progress: !quiet,
        allow_devices: !a.has(&["--no-devices"]),
        force_platform: a.has(&["--force-platform"]) || cfg_force_platform,
        verify_layers,
        trust,
    };
    let keep = match a.value("--keep") {
        Some(s) => Some(
            s.parse()
                .map_err(|_| usage(format!("--keep {s:?} is not a number of images")))?,
        ),
        None => cfg.keep,
    };
    Ok(SyncSetup {
        store,
        client,
        opts,
        quiet,
        keep,
    })
}

/// Record a sync's outcome in the store's state (for `status`), print the
/// summary line, and return the exit code.
fn finish_sync(store: &Store, result: Result<SyncSummary>, quiet: bool) -> Result<i32> {
    let (code, message) = match &result {
        Ok(s) if !s.failed.is_empty() => {
            let failed: Vec<String> = s
                .failed
                .iter()
                .map(|f| {
                    let why = if f.exit_code == exit::NOT_FOUND {
                        "not found".to_string()
                    } else {
                        format!("exit {}", f.exit_code)
                    };
                    format!("{} ({why})", show_image_ref(&f.image))
                })
                .collect();
            (
                s.exit_code(),
                format!(
                    "{} of {} image(s) failed: {}; {} synced, {} up to date",
                    s.failed.len(),
                    s.failed.len() + s.updated.len() + s.up_to_date.len(),
                    failed.join(", "),
                    s.updated.len(),
                    s.up_to_date.len()
                ),
            )
        }
        Ok(s) if s.updated.is_empty() => (0, "already up to date".to_string()),
        Ok(s) => (
            0,
            format!(
                "synced {} image(s), {} layer(s), {} new",
                s.updated.len(),
                s.layers,
                human(s.new_bytes)
            ),
        ),
        Err(e) => (e.exit_code(), e.to_string()),
    };
    let images = match &result {
        Ok(s) => {
            let ok = |i: &ImageRef, m: &str| ImageOutcome {
                image: i.clone(),
                exit_code: 0,
                message: m.to_string(),
            };
            let mut v: Vec<ImageOutcome> = s
                .updated
                .iter()
                .map(|i| ok(i, "synced"))
                .chain(s.up_to_date.iter().map(|i| ok(i, "up to date")))
                .chain(s.failed.iter().map(|f| ImageOutcome {
                    image: f.image.clone(),
                    exit_code: f.exit_code as u8,
                    message: f.message.clone(),
                }))
                .collect();
            v.sort_by(|a, b| a.image.cmp(&b.image));
            v
        }
        Err(_) => Vec::new(),
    };
    let mut st = store.state();
    st.last_sync = Some(SyncResult {
        at: now(),
        exit_code: code as u8,
        message: message.clone(),
        images,
    });
    let _ = store.save_state(&st);
    let summary = result?;
    if !quiet || code != exit::OK {
        eprintln!(
            "{message}{}",
            if summary.attempts > 1 {
                format!(" after {} attempts", summary.attempts)
            } else {
                String::new()
            }
        );
    }
    Ok(code)
}

/// `verify --repair`: re-hash everything, drop what is damaged, sync the
/// held images (by the names they were synced as) to fetch it again, then
/// verify.
pub(super) fn cmd_repair(a: &Args) -> Result<i32> {
    let mut s = sync_setup(a, true)?;
    heal_before_sync(&s.store, true, false)?;
    let mut code = exit::OK;
    if !s.opts.images.is_empty() {
        let result = sync(&s.store, &mut s.client, &s.opts);
        code = finish_sync(&s.store, result, s.quiet)?;
    }
    mark_checked(&s.store);
    super::commands::verify_and_report(&s.store, " left", code)
}
