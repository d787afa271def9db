//! Garbage collection: free what no tag (and no recently seen device)
//! needs any more.
//!
//! **What is live.** Starting from every tag of every repository, and from
//! every manifest pushed within the grace period (a multi-arch push stores
//! its children by digest before the index that names them), a manifest is
//! reachable, and so are the child manifests of a reachable index and the
//! referrers (signatures, SBOMs) whose subject is reachable. A reachable
//! manifest keeps its blobs (config, layers, artifact blobs) linked in its
//! repository; a reachable container image keeps its layers in the entry
//! index, and those layers keep their file objects. Layers that a device
//! reported holding and that device was seen within `device_grace` keep
//! their index rows and objects too (not their original blobs): the
//! registry needs them to send that device only what it lacks, and to diff
//! its files against new versions.
//!
//! **What is freed.** Unreachable manifests (and their tags and referrer
//! rows), blob links nothing reachable names, blob files no link keeps,
//! index rows of layers nothing keeps, object rows and files no kept layer
//! uses, and the caches made from them: content frames, binary deltas, cold
//! archives of images that are gone, and caches of an older format.
//!
//! **Racing a push.** The collector holds [`Storage::gc_exclusive`] from
//! start to end; a manifest PUT holds [`Storage::push_guard`] while it
//! checks its blobs, ingests its layers and commits, so the collector never
//! sees half an ingest. Blobs uploaded (or pushed again, or mounted) but not
//! yet named by a manifest are kept while their file is younger than the
//! grace period (`Blobs::commit` and mounts touch the blob); so are object
//! and cache files. A manifest PUT that names a blob the collector removed
//! (a client that checked the blob before the collection and pushed the
//! manifest long after) gets `MANIFEST_BLOB_UNKNOWN` and pushes the blob
//! again: nothing is stored that names a missing file.
//!
//! **Order.** Metadata rows go first (one transaction for the index), files
//! after; a crash in between leaves files no row names, and the next
//! collection removes them (they are unreachable and old).
//!
//! A sync in flight for an image whose last tag was deleted may fail when
//! its objects go; the device retries and is told the image is gone.

use crate::oci::{self, ParsedManifest};
use crate::store::index;
use crate::store::objects::ObjectStore;
use crate::store::storage::Storage;
use crate::sync::archive::{cold, Metadata};
use crate::sync::delta;
use anyhow::Context;
use layerlink_proto::archive::ZSTD_MAX_WINDOW_LOG;
use layerlink_proto::Digest;
use redb::ReadableDatabase as _;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How a collection runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Manifests pushed, and blob, object and cache files written, within
    /// this long are kept even when nothing names them yet.
    pub grace: Duration,
    /// Layers held by a device seen within this long keep their index rows
    /// and objects; `None`: device holdings protect nothing.
    pub device_grace: Option<Duration>,
    /// Only count what would be freed.
    pub dry_run: bool,
    /// No registry serves the data directory (the `gc` command): the
    /// archives a registry kept for resumption (`DATA/resume/`) are dead —
    /// the next start clears them — and are deleted too. A serving
    /// registry's own collection leaves them to its eviction.
    pub offline: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            grace: Duration::from_secs(3600),
            device_grace: Some(Duration::from_secs(30 * 86400)),
            dry_run: false,
            offline: false,
        }
    }
}

/// What a collection freed (or, dry, would free).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Manifests kept (reachable, or young).
    pub manifests_kept: u64,
    /// Unreachable manifests deleted (with their tags and referrer rows).
    pub manifests_deleted: u64,
    /// (repository, blob) links removed.
    pub blob_links_removed: u64,
    /// Blob files deleted.
    pub blobs_deleted: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Layers whose index rows were deleted.
    pub layers_forgotten: u64,
    /// Layers kept only because a recently seen device holds them.
    pub layers_kept_for_devices: u64,
    /// Object rows and files deleted (files without a row included).
    pub objects_deleted: u64,
    /// Their bytes on disk.
    pub object_bytes: u64,
    /// Cache files deleted: content frames, binary deltas, cold archives,
    /// and (offline) archives kept for resumption.
    pub cache_files_deleted: u64,
    /// Their bytes.
    pub cache_bytes: u64,
    /// Published layers forgotten in the replicas' shared index
    /// (PostgreSQL + bucket; `store::storage::shared_layers`).
    pub shared_layers_forgotten: u64,
    /// Objects deleted from the shared bucket.
    pub shared_objects_deleted: u64,
    /// Their bytes, as stored.
    pub shared_object_bytes: u64,
    /// Everything above, in bytes of files (and of bucket objects).
    pub bytes_freed: u64,
}

impl Report {
    /// One line for logs and the command.
    pub fn summary(&self) -> String {
        let shared = if self.shared_layers_forgotten + self.shared_objects_deleted > 0 {
            format!(
                ", shared index: {} layer(s), {} object(s) ({} B)",
                self.shared_layers_forgotten, self.shared_objects_deleted, self.shared_object_bytes
            )
        } else {
            String::new()
        };
        format!(
            "{}{} manifest(s), {} blob link(s), {} blob(s) ({} B), {} layer(s) ({} kept for devices), \
             {} object(s) ({} B), {} cache file(s) ({} B){}: {} B freed",
            if self.dry_run { "would delete " } else { "deleted " },
            self.manifests_deleted,
            self.blob_links_removed,
            self.blobs_deleted,
            self.blob_bytes,
            self.layers_forgotten,
            self.layers_kept_for_devices,
            self.objects_deleted,
            self.object_bytes,
            self.cache_files_deleted,
            self.cache_bytes,
            shared,
            self.bytes_freed,
        )
    }
}

/// The digests of the blobs a manifest names (config, layers, and an
/// artifact's `blobs`); foreign layers have no blob here and are skipped.
fn named_blobs(json: &serde_json::Value) -> Vec<Digest> {
    let mut out = Vec::new();
    let mut take = |d: &serde_json::Value| {
        let foreign = d
            .get("urls")
            .and_then(|u| u.as_array())
            .is_some_and(|u| !u.is_empty());
        if let Some(s) = d.get("digest").and_then(|s| s.as_str()) {
            if let (Ok(d), false) = (Digest::parse(s), foreign) {
                out.push(d);
            }
        }
    };
    if let Some(c) = json.get("config") {
        take(c);
    }
    for key in ["layers", "blobs"] {
        if let Some(list) = json.get(key).and_then(|l| l.as_array()) {
            list.iter().for_each(&mut take);
        }
    }
    out
}

/// Every repository name.
fn repositories(storage: &Storage) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = storage
            .meta()
            .repositories(out.last().map(String::as_str), 1000)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// What the mark phase found live.
#[derive(Default)]
struct Live {
    /// repository → reachable manifests.
    manifests: HashMap<String, HashSet<Digest>>,
    /// repository → blobs its reachable manifests name.
    links: HashMap<String, HashSet<Digest>>,
    /// Layers (diff_ids) of reachable container images.
    layers: HashSet<Digest>,
    /// Cold-archive keys of reachable images.
    cold_keys: HashSet<Digest>,
}

fn mark(storage: &Storage, repos: &[String], young_after: u64) -> anyhow::Result<Live> {
    let mut live = Live::default();
    for repo in repos {
        let all = storage.meta().manifests_of(repo)?;
        let mut todo: Vec<Digest> = storage
            .meta()
            .tagged(repo)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        todo.extend(
            all.iter()
                .filter(|(_, at)| *at > young_after)
                .map(|(d, _)| *d),
        );
        let reached = live.manifests.entry(repo.clone()).or_default();
        let links = live.links.entry(repo.clone()).or_default();
        while let Some(d) = todo.pop() {
            if !reached.insert(d) {
                continue;
            }
            let Some(m) = storage.meta().manifest(repo, &d)? else {
                reached.remove(&d); // a tag naming a missing manifest
                continue;
            };
            for r in storage.meta().referrers(repo, &d)? {
                let v: serde_json::Value = serde_json::from_slice(&r).unwrap_or_default();
                if let Some(Ok(rd)) = v.get("digest").and_then(|s| s.as_str()).map(Digest::parse) {
                    todo.push(rd);
                }
            }
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(&m.bytes) else {
                continue;
            };
            links.extend(named_blobs(&json));
            match oci::parse_manifest(&m.bytes, &m.media_type) {
                Ok(ParsedManifest::Index(ix)) => todo.extend(ix.manifests.iter().map(|c| c.digest)),
                Ok(ParsedManifest::Image(im)) if im.is_container_image() => {
                    let Ok(Some(mut f)) = storage.open_blob(&im.config.digest) else {
                        continue;
                    };
                    let mut config = Vec::new();
                    io::Read::read_to_end(&mut f, &mut config)
                        .with_context(|| format!("reading config {}", im.config.digest))?;
                    if let Ok(ids) = oci::config_diff_ids(&config) {
                        live.cold_keys.insert(cold::key(
                            Some(&Metadata {
                                manifest: &m.bytes,
                                config: &config,
                            }),
                            &ids,
                        ));
                        live.cold_keys.insert(cold::key(None, &ids));
                        live.layers.extend(ids);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(live)
}

fn older_than(m: &fs::Metadata, cutoff: SystemTime) -> bool {
    m.modified().map(|t| t < cutoff).unwrap_or(true)
}

/// Delete (or count) one file; adds to `files`/`bytes`.
fn free_file(path: &Path, dry: bool, files: &mut u64, bytes: &mut u64) -> io::Result<()> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !dry {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    *files += 1;
    *bytes += m.len();
    Ok(())
}

/// Every file under `dir` (recursively), with its metadata.
fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, fs::Metadata)>) -> io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            walk(&e.path(), out)?;
        } else {
            out.push((e.path(), m));
        }
    }
    Ok(())
}

/// The digest a cache or object file name starts with (`<64 hex>…`).
fn leading_digest(name: &str) -> Option<Digest> {
    Digest::parse(&format!("sha256:{}", name.get(..64)?)).ok()
}

/// Collect garbage in `storage` (blocking; holds the store's GC lock
/// throughout).
pub fn run(storage: &Storage, opts: &Options) -> anyhow::Result<Report> {
    let _exclusive = storage.gc_exclusive();
    let now = SystemTime::now();
    let cutoff = now
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let now_secs = crate::clock::now_secs();
    let young_after = now_secs.saturating_sub(opts.grace.as_secs());
    let dry = opts.dry_run;
    let mut report = Report {
        dry_run: dry,
        ..Report::default()
    };

    // --- mark ---------------------------------------------------------
    let repos = repositories(storage)?;
    let live = mark(storage, &repos, young_after)?;
    report.manifests_kept = live.manifests.values().map(|s| s.len() as u64).sum();

    let blob_files = storage.blobs().list().context("listing blobs")?;
    let young_blobs: HashSet<Digest> = blob_files
        .iter()
        .filter(|(_, _, t)| *t >= cutoff)
        .map(|(d, _, _)| *d)
        .collect();

    let mut doomed_manifests = Vec::new();
    let mut doomed_links = Vec::new();
    let mut kept_blobs: HashSet<Digest> = HashSet::new();
    for repo in &repos {
        let reached = live.manifests.get(repo);
        for (d, _) in storage.meta().manifests_of(repo)? {
            if !reached.is_some_and(|r| r.contains(&d)) {
                doomed_manifests.push((repo.clone(), d));
            }
        }
        let named = live.links.get(repo);
        for b in storage.meta().repository_blobs(repo)? {
            if named.is_some_and(|n| n.contains(&b)) || young_blobs.contains(&b) {
                kept_blobs.insert(b);
            } else {
                doomed_links.push((repo.clone(), b));
            }
        }
    }
    report.manifests_deleted = doomed_manifests.len() as u64;
    report.blob_links_removed = doomed_links.len() as u64;

    let db = storage.db();
    let (all_layers, blob_rows) = index::all_layers(db)?;
    let mut kept_layers = live.layers.clone();
    for (blob, diff_id) in &blob_rows {
        if kept_blobs.contains(blob) {
            kept_layers.insert(*diff_id);
        }
    }
    let mut held = HashSet::new();
    if let Some(g) = opts.device_grace {
        held = storage
            .devices()
            .layers_held_since(now_secs.saturating_sub(g.as_secs()))
            .context("reading the layers devices hold")?;
        for l in &held {
            if all_layers.binary_search(l).is_ok() && kept_layers.insert(*l) {
                report.layers_kept_for_devices += 1;
            }
        }
    }
    let doomed_layers: Vec<Digest> = all_layers
        .iter()
        .filter(|l| !kept_layers.contains(l))
        .copied()
        .collect();
    let doomed_blob_rows: Vec<Digest> = blob_rows
        .iter()
        .filter(|(b, l)| !kept_blobs.contains(b) || !kept_layers.contains(l))
        .map(|(b, _)| *b)
        .collect();
    report.layers_forgotten = doomed_layers.len() as u64;

    let mut kept_objects: HashSet<Digest> = HashSet::new();
    {
        let txn = db.begin_read()?;
        for l in &kept_layers {
            kept_objects.extend(index::layer_objects(&txn, l)?);
        }
    }
    let doomed_objects: Vec<Digest> = index::all_objects(db)?
        .into_iter()
        .map(|(d, _)| d)
        .filter(|d| !kept_objects.contains(d))
        .collect();

    // --- sweep: metadata first ------------------------------------------
    if !dry {
        for (repo, d) in &doomed_manifests {
            storage.meta().delete_manifest(repo, d)?;
        }
        for (repo, b) in &doomed_links {
            storage.meta().unlink_blob(repo, b)?;
        }
        index::forget(db, &doomed_layers, &doomed_blob_rows, &doomed_objects)?;
        forget_unsyncable(db, &live)?;
    }

    // --- then files -------------------------------------------------------
    for (d, size, t) in &blob_files {
        if !kept_blobs.contains(d) && *t < cutoff {
            if !dry {
                storage
                    .blobs()
                    .remove(d)
                    .with_context(|| format!("removing blob {d}"))?;
            }
            report.blobs_deleted += 1;
            report.blob_bytes += size;
        }
    }

    let objects = index::object_store(storage);
    let doomed_set: HashSet<Digest> = doomed_objects.iter().copied().collect();
    sweep_objects(
        &objects,
        &kept_objects,
        &doomed_set,
        cutoff,
        dry,
        &mut report,
    )?;
    sweep_caches(
        &objects,
        &kept_objects,
        &live.cold_keys,
        cutoff,
        dry,
        &mut report,
    )?;
    if opts.offline {
        let mut files = Vec::new();
        walk(&storage.resume_dir(), &mut files)?;
        for (path, _) in files {
            free_file(
                &path,
                dry,
                &mut report.cache_files_deleted,
                &mut report.cache_bytes,
            )?;
        }
    }

    if let Some(shared) = storage.shared_layers() {
        // The layers other replicas published: the same rule (reachable,
        // held by a recently seen device, or young), decided here once for
        // every replica; each replica's own data directory is collected by
        // its own collection, above.
        let mut keep = kept_layers.clone();
        keep.extend(held);
        let swept = shared
            .collect(&keep, &kept_blobs, cutoff, dry)
            .context("collecting the shared layer index")?;
        report.shared_layers_forgotten = swept.layers;
        report.shared_objects_deleted = swept.objects;
        report.shared_object_bytes = swept.object_bytes;
    }

    report.bytes_freed =
        report.blob_bytes + report.object_bytes + report.cache_bytes + report.shared_object_bytes;
    Ok(report)
}

/// Unsyncable marks of manifests no repository keeps.
fn forget_unsyncable(db: &redb::Database, live: &Live) -> anyhow::Result<()> {
    let kept: HashSet<&Digest> = live.manifests.values().flatten().collect();
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(crate::ingest::UNSYNCABLE)?;
        t.retain(|k, _| kept.contains(&Digest(*k)))?;
    }
    txn.commit()?;
    Ok(())
}

/// Object files: doomed rows' files, and files no row names that no kept
/// layer uses and that are older than the grace period.
fn sweep_objects(
    objects: &ObjectStore,
    kept: &HashSet<Digest>,
    doomed: &HashSet<Digest>,
    cutoff: SystemTime,
    dry: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rd = match fs::read_dir(objects.root()) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Fan-out directories are two hex digits; `.staging`, `.frames-*`,
        // `.cold-*` are not objects.
        if name.len() != 2 || !e.file_type()?.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        walk(&e.path(), &mut files)?;
        for (path, m) in files {
            let fname = path.file_name().unwrap_or_default().to_string_lossy();
            let Some(d) = leading_digest(&fname) else {
                continue;
            };
            if kept.contains(&d) {
                continue;
            }
            if doomed.contains(&d) || older_than(&m, cutoff) {
                free_file(
                    &path,
                    dry,
                    &mut report.objects_deleted,
                    &mut report.object_bytes,
                )?;
            }
        }
    }
    Ok(())
}

/// Content frames, binary deltas and cold archives nothing kept uses, and
/// caches of another format or window.
fn sweep_caches(
    objects: &ObjectStore,
    kept: &HashSet<Digest>,
    cold_keys: &HashSet<Digest>,
    cutoff: SystemTime,
    dry: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let frames = format!(".frames-w{ZSTD_MAX_WINDOW_LOG}");
    let colds = format!(".cold-w{ZSTD_MAX_WINDOW_LOG}-v{}", cold::FORMAT);
    let (n, b) = (&mut report.cache_files_deleted, &mut report.cache_bytes);
    if let Ok(rd) = fs::read_dir(objects.root()) {
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let (is_frames, is_cold) = (name.starts_with(".frames-"), name.starts_with(".cold-"));
            if !is_frames && !is_cold {
                continue;
            }
            let current = name == frames || name == colds;
            let mut files = Vec::new();
            walk(&e.path(), &mut files)?;
            for (path, m) in files {
                let fname = path.file_name().unwrap_or_default().to_string_lossy();
                let unused = match leading_digest(&fname) {
                    // Temp files of a writer that died.
                    None => older_than(&m, cutoff),
                    Some(d) if is_frames => !kept.contains(&d),
                    Some(d) => !cold_keys.contains(&d) && older_than(&m, cutoff),
                };
                if !current || unused {
                    free_file(&path, dry, n, b)?;
                }
            }
        }
    }
    let suffixes = [delta::PatchFormat::Bidiff, delta::PatchFormat::Blocks]
        .map(|f| format!(".v{}-w{ZSTD_MAX_WINDOW_LOG}", f.version()));
    let mut files = Vec::new();
    walk(&delta::cache_dir(objects), &mut files)?;
    for (path, m) in files {
        let fname = path.file_name().unwrap_or_default().to_string_lossy();
        // `<old hex>-<new hex>.v<format>-w<window>`
        let old = leading_digest(&fname);
        let new = fname.get(65..).and_then(leading_digest);
        let live = match (old, new) {
            (Some(o), Some(d)) => {
                kept.contains(&o)
                    && kept.contains(&d)
                    && suffixes.iter().any(|s| fname.get(129..) == Some(&s[..]))
            }
            _ => !older_than(&m, cutoff),
        };
        if !live {
            free_file(&path, dry, n, b)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testutil::{MemBlobs, TarBuilder};
    use crate::oci::{OCI_INDEX, OCI_MANIFEST};

    fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = TarBuilder::new();
        for (p, c) in files {
            b.file(p, c);
        }
        b.finish()
    }

    /// Push an image of `tars` to `repo` (tagged `tag` if given) as a
    /// manifest PUT does: blobs, ingest, manifest. Returns its digest.
    fn push(s: &Storage, repo: &str, tag: Option<&str>, tars: &[Vec<u8>]) -> Digest {
        let mem = MemBlobs::default();
        let (manifest, _, _) = mem.image(tars);
        let mut links = Vec::new();
        for (d, bytes) in mem.0.lock().unwrap().iter() {
            links.push(s.put_blob(repo, &bytes[..], Some(d)).unwrap());
        }
        let _push = s.push_guard();
        crate::ingest::ingest_manifest(s, &manifest, OCI_MANIFEST).unwrap();
        s.put_manifest(repo, tag, OCI_MANIFEST, manifest, &links)
            .unwrap()
    }

    fn now_only() -> Options {
        Options {
            grace: Duration::ZERO,
            device_grace: None,
            dry_run: false,
            offline: false,
        }
    }

    fn distinct(files: &[(&str, &[u8])]) -> HashSet<Digest> {
        files.iter().map(|(_, c)| Digest::of(c)).collect()
    }

    const BASE: &[(&str, &[u8])] = &[("etc/os", b"debian 12\n"), ("bin/sh", b"\x7fELF shell")];
    const APP1: &[(&str, &[u8])] = &[("app/one", b"first app"), ("app/lib", b"shared lib")];
    const APP2: &[(&str, &[u8])] = &[("app/two", b"second app"), ("app/lib", b"shared lib")];

    #[test]
    fn an_untagged_image_goes_and_what_it_shares_stays() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let objects = index::object_store(&s);
        let a = push(&s, "r", Some("a"), &[tar(BASE), tar(APP1)]);
        let b = push(&s, "r", Some("b"), &[tar(BASE), tar(APP2)]);
        assert!(s.meta().delete_tag("r", "b").unwrap());

        let dry = run(
            &s,
            &Options {
                dry_run: true,
                ..now_only()
            },
        )
        .unwrap();
        assert!(
            s.meta().manifest("r", &b).unwrap().is_some(),
            "dry run deleted"
        );
        let r = run(&s, &now_only()).unwrap();
        assert_eq!(
            Report {
                dry_run: false,
                ..dry
            },
            r
        );
        assert_eq!(r.manifests_deleted, 1);
        assert_eq!(r.blob_links_removed, 2, "APP2's layer and b's config");
        assert_eq!(r.blobs_deleted, 2);
        assert_eq!(r.layers_forgotten, 1);
        let only_b: HashSet<Digest> = &distinct(APP2) - &(&distinct(APP1) | &distinct(BASE));
        assert_eq!(r.objects_deleted, only_b.len() as u64);
        for d in &only_b {
            assert!(!objects.exists(d), "{d} survived");
        }
        for d in distinct(BASE).iter().chain(&distinct(APP1)) {
            assert!(objects.exists(d), "live object {d} deleted");
        }
        assert!(s.meta().manifest("r", &b).unwrap().is_none());
        assert!(s.meta().manifest("r", &a).unwrap().is_some());
        let (layers, _) = index::all_layers(s.db()).unwrap();
        assert_eq!(layers.len(), 2, "BASE and APP1 stay indexed");
        // `shared lib` was used by two layers, now by one.
        let lib = Digest::of(b"shared lib");
        let meta = index::all_objects(s.db()).unwrap();
        let lib_meta = meta.iter().find(|(d, _)| *d == lib).unwrap().1;
        assert_eq!(lib_meta.layers, 1);
        assert_eq!(run(&s, &now_only()).unwrap().bytes_freed, 0, "idempotent");
    }

    #[test]
    fn only_an_offline_collection_deletes_kept_archives() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let kept = dir.path().join("resume/0123abcd");
        fs::create_dir_all(kept.parent().unwrap()).unwrap();
        fs::write(&kept, [7u8; 1000]).unwrap();
        // A serving registry's collection: its archives are its own.
        let r = run(&s, &now_only()).unwrap();
        assert_eq!((r.cache_files_deleted, r.bytes_freed), (0, 0));
        let offline = Options {
            offline: true,
            ..now_only()
        };
        let dry = run(
            &s,
            &Options {
                dry_run: true,
                ..offline.clone()
            },
        )
        .unwrap();
        assert_eq!((dry.cache_files_deleted, dry.bytes_freed), (1, 1000));
        assert!(kept.exists(), "dry run deleted");
        let r = run(&s, &offline).unwrap();
        assert_eq!((r.cache_files_deleted, r.bytes_freed), (1, 1000));
        assert!(!kept.exists());
    }

    #[test]
    fn young_blobs_and_manifests_are_spared() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let (blob, _) = s
            .put_blob("r", &b"uploaded, manifest not yet pushed"[..], None)
            .unwrap();
        let m = push(&s, "r", None, &[tar(BASE)]);
        let hour = Options {
            grace: Duration::from_secs(3600),
            ..now_only()
        };
        let r = run(&s, &hour).unwrap();
        assert_eq!(
            (r.manifests_deleted, r.blobs_deleted, r.bytes_freed),
            (0, 0, 0)
        );
        assert!(s.meta().manifest("r", &m).unwrap().is_some());
        let r = run(&s, &now_only()).unwrap();
        assert_eq!((r.manifests_deleted, r.blobs_deleted), (1, 3), "{r:?}");
        assert!(s.blob_size(&blob).unwrap().is_none());
        // A blob pushed again is young again (its file is touched).
        let (again, _) = s.put_blob("r", &b"pushed again"[..], None).unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        fs::File::options()
            .write(true)
            .open(s.blobs().local_path(&again).unwrap())
            .unwrap()
            .set_modified(old)
            .unwrap();
        s.put_blob("r", &b"pushed again"[..], None).unwrap();
        assert_eq!(run(&s, &hour).unwrap().blobs_deleted, 0);
    }

    #[test]
    fn index_children_and_referrers_live_as_long_as_their_parent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let child = push(&s, "r", None, &[tar(BASE)]);
        let child_len = s.meta().manifest("r", &child).unwrap().unwrap().bytes.len();
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child.to_string(), "size": child_len,
                           "platform": {"os": "linux", "architecture": "amd64"}}],
        });
        s.put_manifest(
            "r",
            Some("v1"),
            OCI_INDEX,
            serde_json::to_vec(&index).unwrap(),
            &[],
        )
        .unwrap();
        let (empty, _) = s.put_blob("r", &b"{}"[..], None).unwrap();
        let (sig, sig_len) = s.put_blob("r", &b"a signature"[..], None).unwrap();
        let referrer = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x-sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
            "layers": [{"mediaType": "application/x-sig", "digest": sig.to_string(), "size": sig_len}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": child.to_string(), "size": child_len},
        });
        let bytes = serde_json::to_vec(&referrer).unwrap();
        let rd = s
            .put_manifest(
                "r",
                None,
                OCI_MANIFEST,
                bytes.clone(),
                &[(empty, 2), (sig, sig_len)],
            )
            .unwrap();
        let desc = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": rd.to_string(), "size": bytes.len()});
        s.meta()
            .add_referrer("r", &child, &rd, &serde_json::to_vec(&desc).unwrap())
            .unwrap();

        let r = run(&s, &now_only()).unwrap();
        assert_eq!(r.manifests_kept, 3, "{r:?}");
        assert_eq!(
            (r.manifests_deleted, r.blobs_deleted, r.layers_forgotten),
            (0, 0, 0)
        );
        assert!(s.meta().delete_tag("r", "v1").unwrap());
        let r = run(&s, &now_only()).unwrap();
        assert_eq!(r.manifests_deleted, 3, "{r:?}");
        assert_eq!(
            r.blobs_deleted, 4,
            "layer, config, empty config, signature: {r:?}"
        );
        assert_eq!(r.layers_forgotten, 1);
    }

    #[test]
    fn a_collection_waits_for_a_push_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Storage::open(dir.path()).unwrap());
        let push = s.push_guard();
        let s2 = s.clone();
        let t = std::thread::spawn(move || run(&s2, &now_only()).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!t.is_finished(), "gc ran while a push held the store");
        drop(push);
        t.join().unwrap();
    }
}
