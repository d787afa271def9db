//! Binary deltas end to end (issue 12, archive features `file-delta` and
//! `file-delta2`, the agent asking for the latter): a
//! device holding base-a:v1 syncs the rebuilt base-a:v2 (the dpkg database
//! and log change a little) through the real registry and agent. The oracle
//! for the checkout is `umoci unpack`; for bytes, the same archive request
//! asked with and without the feature.

use layerlink_proto::msg::{
    ArchiveRequest, HeldSet, Holdings, ImageRef, PlanRequest, PlanResponse, Platform, CONTENT_TYPE,
};
use layerlink_tests::fixture::{self, registry_with_test_images, test_repo};
use layerlink_tests::http::request;
use layerlink_tests::{test_images, Agent, CountingProxy, Registry};
use std::io::{Seek, SeekFrom, Write};

const TOKEN: &str = "tok-dev1";
const DEVICE_CONFIG: &str = r#"
[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["*"]
"#;
const OLD: &str = "base-a:v1";
const NEW: &str = "base-a:v2";

fn platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: None,
    }
}

fn post(reg: &Registry, path: &str, features: &str, body: &[u8]) -> Vec<u8> {
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        reg.addr(),
        "POST",
        &format!("/layerlink/v1/{path}"),
        &[
            ("authorization", auth.as_str()),
            ("content-type", CONTENT_TYPE),
            ("layerlink-features", features),
        ],
        body,
    );
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.body
}

/// Bytes of base-a:v2's archive for a device holding base-a:v1's layer,
/// asked with `features`.
fn archive_bytes(reg: &Registry, features: &str) -> usize {
    archive_body(reg, OLD, NEW, features).len()
}

/// `new`'s archive for a device holding `old`'s layers, asked with
/// `features`.
fn archive_body(reg: &Registry, old: &str, new: &str, features: &str) -> Vec<u8> {
    let plan = PlanRequest {
        platform: platform(),
        images: [old, new]
            .iter()
            .map(|t| {
                let (repository, reference) = test_repo(t)
                    .rsplit_once(':')
                    .map(|(r, t)| (r.to_string(), t.to_string()))
                    .unwrap();
                ImageRef {
                    repository,
                    reference,
                }
            })
            .collect(),
        holdings: Holdings::Full(HeldSet::default()),
    };
    let body = post(
        reg,
        "plan",
        features,
        &postcard::to_allocvec(&plan).unwrap(),
    );
    let plan: PlanResponse = postcard::from_bytes(&body).unwrap();
    let (old, new) = (&plan.images[0], &plan.images[1]);
    let req = ArchiveRequest {
        repository: new.image.repository.clone(),
        manifest_digest: new.manifest_digest,
        layers: new.layers.iter().map(|l| l.diff_id).collect(),
        metadata: true,
        holdings: Holdings::Full(HeldSet {
            layers: old.layers.iter().map(|l| l.diff_id).collect(),
            objects: vec![],
        }),
    };
    post(
        reg,
        "archive",
        features,
        &postcard::to_allocvec(&req).unwrap(),
    )
}

fn sync(agent: &Agent, proxy: &CountingProxy, tag: &str) -> (u64, String) {
    proxy.reset();
    let out = agent.sync(&proxy.url(), &[&test_repo(tag)]);
    (
        proxy.bytes_total(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_checkout_matches_umoci(agent: &Agent, tag: &str) {
    fixture::assert_checkout_matches_umoci(agent, &test_repo(tag), &test_images().oci_dir, tag);
}

/// `layerlink-agent verify` of `agent`'s store is clean.
fn assert_verifies(agent: &Agent) {
    let v = agent.verify();
    assert!(
        v.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&v.stderr)
    );
}

/// The committed layer directories of the agent's store.
fn committed_layers(agent: &Agent) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(agent.store.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect()
}

#[test]
fn a_rebuilt_image_syncs_as_deltas_exactly_and_a_damaged_base_still_ends_right() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &[OLD, NEW]);
    let proxy = CountingProxy::start(reg.addr());

    // The same request with and without the feature.
    let without = archive_bytes(&reg, "layer-base");
    let with = archive_bytes(&reg, "layer-base,file-delta");
    let with2 = archive_bytes(&reg, "layer-base,file-delta2");
    eprintln!(
        "{OLD} -> {NEW} archive: {with} B with file-delta, {with2} B with file-delta2, \
         {without} B without"
    );
    for (f, b) in [("file-delta", with), ("file-delta2", with2)] {
        assert!(
            b + 20 * 1024 < without,
            "{f}: deltas should save the modified dpkg files' ~50 kB gzip'd: {b} vs {without} B"
        );
    }

    // A device syncs the update with deltas: exact checkout.
    let agent = Agent::new(TOKEN);
    sync(&agent, &proxy, OLD);
    let (cost, log) = sync(&agent, &proxy, NEW);
    eprintln!("{OLD} -> {NEW}: {cost} B on the wire with deltas");
    assert!(!log.contains("delta not applied"), "{log}");
    assert_checkout_matches_umoci(&agent, NEW);
    assert_verifies(&agent);
    let rerun = reg.deltas_sent();
    assert!(
        rerun > 0,
        "the registry logged no delta entries:\n{}",
        reg.log()
    );

    // A device that opts out (`--no-deltas`) gets the modified files whole:
    // no delta entry, more bytes, the same exact checkout.
    let mut whole = Agent::new(TOKEN);
    whole.sync_args.push("--no-deltas".into());
    sync(&whole, &proxy, OLD);
    let (cost_whole, _) = sync(&whole, &proxy, NEW);
    eprintln!("{OLD} -> {NEW}: {cost_whole} B on the wire with --no-deltas");
    assert_eq!(
        reg.deltas_sent(),
        rerun,
        "--no-deltas still got delta entries"
    );
    assert!(
        cost + 20 * 1024 < cost_whole,
        "whole files should cost more than deltas: {cost_whole} vs {cost} B"
    );
    assert_checkout_matches_umoci(&whole, NEW);

    // A device whose copy of the base object is damaged (same size,
    // different bytes) still ends with the exact files. Since the agent
    // checks its store before every sync (issue 13: objects changed since
    // the last run are re-hashed), the damage is found before any delta is
    // applied: the damaged object and the layer using it are dropped and
    // the update arrives without that base. (A delta whose result fails
    // its digest — damage the check cannot see, bit rot — makes the agent
    // fetch the object whole; that path is in `agent/src/apply/entry.rs`, fuzzed by
    // `delta_apply`, and no longer reachable through file-system damage.)
    let damaged = Agent::new(TOKEN);
    sync(&damaged, &proxy, OLD);
    let layers = committed_layers(&damaged);
    assert_eq!(layers.len(), 1);
    let status = layers[0].join("var/log/dpkg.log");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&status)
            .unwrap();
        f.seek(SeekFrom::Start(1000)).unwrap();
        f.write_all(b"DAMAGED").unwrap();
    }
    let (cost2, log2) = sync(&damaged, &proxy, NEW);
    eprintln!("with a damaged base: {cost2} B on the wire");
    assert!(
        log2.contains("1 damaged removed") && log2.contains("var/log/dpkg.log"),
        "the agent's store check should find the damaged var/log/dpkg.log:\n{log2}"
    );
    assert!(!log2.contains("delta not applied"), "{log2}");
    assert!(cost2 > cost, "the damaged object comes again");
    assert_checkout_matches_umoci(&damaged, NEW);
    // The dropped base layer belongs to base-a:v1, which this sync did not
    // ask for: its next sync brings it back, and the store verifies clean.
    sync(&damaged, &proxy, OLD);
    assert_checkout_matches_umoci(&damaged, OLD);
    assert_verifies(&damaged);
    assert_checkout_matches_umoci(&damaged, NEW);
}

/// One tar entry with PAX records (`LAYERLINK.*` and the like).
fn pax_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, pax: &[(&str, &[u8])], data: &[u8]) {
    b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v)))
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A gzip'd dedup archive of one layer section holding one file entry.
fn one_file_archive(layer_seed: u8, path: &str, pax: &[(&str, &[u8])], data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let diff_id = format!("sha256:{}", layerlink_tests::sha256_hex(&[layer_seed]));
    let mut b = tar::Builder::new(Vec::new());
    let id = diff_id.as_bytes();
    pax_entry(
        &mut b,
        ".layerlink/layer",
        &[("LAYERLINK.marker", b"layer"), ("LAYERLINK.diff_id", id)],
        b"",
    );
    pax_entry(&mut b, path, pax, data);
    pax_entry(
        &mut b,
        ".layerlink/layer-end",
        &[
            ("LAYERLINK.marker", b"layer-end"),
            ("LAYERLINK.diff_id", id),
            ("LAYERLINK.entries", b"1"),
        ],
        b"",
    );
    pax_entry(
        &mut b,
        ".layerlink/end",
        &[("LAYERLINK.marker", b"end")],
        b"",
    );
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// `layerlink-agent apply-archive` of `archive` into `store` under
/// `/usr/bin/time`: (success, peak RSS in KiB, stderr).
fn apply_measured(store: &std::path::Path, archive: &[u8], name: &str) -> (bool, u64, String) {
    let file = store.with_extension(name);
    std::fs::write(&file, archive).unwrap();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak-rss-kib=%M"])
        .arg(layerlink_tests::bins::agent_bin())
        .arg("apply-archive")
        .arg("--store")
        .arg(store)
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let kib = err
        .lines()
        .filter_map(|l| l.strip_prefix("peak-rss-kib="))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(u64::MAX);
    (out.status.success(), kib, err)
}

#[test]
fn patching_the_largest_file_of_the_test_images_stays_within_4_mib() {
    layerlink_tests::bins::ensure_built();
    let largest = layerlink_tests::layers::largest_file(&test_images().layout(), OLD);
    let (path, old) = (largest.path, largest.data);
    // A "rebuilt" version: a changed byte every 4 KiB, a block inserted in
    // the middle, a tail appended.
    let mut new = old.clone();
    for i in (0..new.len()).step_by(4096) {
        new[i] = new[i].wrapping_add(1);
    }
    new.splice(new.len() / 2..new.len() / 2, b"inserted block ".repeat(100));
    new.extend_from_slice(b"appended tail");
    // bidiff's controls in patch format 2 (what the registry sends).
    let mut enc = layerlink_proto::patch::Encoder::new();
    let mut tr = bidiff::Translator::new(&old, &new, |c: &bidiff::Control| {
        enc.push(c.add, c.copy, c.seek);
        Ok::<(), std::io::Error>(())
    });
    bidiff::diff(&old, &new, &Default::default(), |m| tr.translate(m)).unwrap();
    tr.close().unwrap();
    let patch = enc.finish();
    let (old_hex, new_hex) = (
        layerlink_tests::sha256_hex(&old),
        layerlink_tests::sha256_hex(&new),
    );
    let size = new.len().to_string();
    let whole = one_file_archive(1, &path, &[("LAYERLINK.digest", old_hex.as_bytes())], &old);
    let delta = one_file_archive(
        2,
        &path,
        &[
            ("LAYERLINK.digest", new_hex.as_bytes()),
            ("LAYERLINK.delta-base", old_hex.as_bytes()),
            ("LAYERLINK.delta-size", size.as_bytes()),
        ],
        &patch,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (ok, whole_kib, err) = apply_measured(&store, &whole, "whole");
    assert!(ok, "{err}");
    let (ok, delta_kib, err) = apply_measured(&store, &delta, "delta");
    assert!(ok, "{err}");
    assert!(!err.contains("delta not applied"), "{err}");
    eprintln!(
        "largest file of {OLD}: {path} ({} B), patch {} B raw; agent peak RSS: whole file {whole_kib} KiB, \
         delta {delta_kib} KiB",
        old.len(),
        patch.len()
    );
    assert!(
        delta_kib <= 4096,
        "peak RSS {delta_kib} KiB while patching {path}"
    );
    // The result is the new file, stored as an object.
    let stored = walk_find(&store.join("objects"), &new_hex).expect("the new object is stored");
    assert_eq!(std::fs::read(stored).unwrap(), new);
}

fn walk_find(dir: &std::path::Path, hex: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = walk_find(&p, hex) {
                return Some(f);
            }
        } else if p.file_name()?.to_string_lossy().starts_with(hex) {
            return Some(p);
        }
    }
    None
}

/// The uncompressed tar of an archive body (gzip or zstd).
fn untar(body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if body.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap();
    } else {
        out = zstd::stream::decode_all(body).unwrap();
    }
    out
}

/// (records, record bytes) of the base markers of an uncompressed archive,
/// and the records' bytes gzip'd alone.
fn compact_records(tar_bytes: &[u8]) -> (u64, u64, u64) {
    use std::io::{Read, Write};
    let mut a = tar::Archive::new(tar_bytes);
    let (mut n, mut size) = (0u64, 0u64);
    let mut blocks = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let pax: Vec<(String, String)> = match e.pax_extensions().unwrap() {
            Some(x) => x
                .map(|r| r.unwrap())
                .map(|r| (r.key().unwrap().to_string(), r.value().unwrap().to_string()))
                .collect(),
            None => continue,
        };
        let get = |k: &str| pax.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        if get("LAYERLINK.marker").as_deref() != Some("base") {
            continue;
        }
        if let (Some(c), Some(s)) = (get("LAYERLINK.meta"), get("LAYERLINK.meta-size")) {
            let s: u64 = s.parse().unwrap();
            n += c.parse::<u64>().unwrap();
            size += s;
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            blocks.extend_from_slice(&data[..s as usize]);
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&blocks).unwrap();
    let gz = gz.finish().unwrap().len() as u64;
    (n, size, gz)
}

/// Issue 11 point 3: entries of the rebuilt base that differ from the held
/// one only in mtime (or mode, owner) cost a few bytes each with
/// `compact-meta`, instead of a tar header; the device still checks out
/// exactly what `umoci unpack` does.
/// `new`'s archive for a device holding `old`, asked with `plain` and with
/// `compact` features, and the compact records of the latter (printed).
struct CompactComparison {
    before: Vec<u8>,
    after: Vec<u8>,
    tar_before: Vec<u8>,
    tar_after: Vec<u8>,
    /// Compact records and their raw bytes.
    records: u64,
    raw: u64,
}

fn compare_compact(
    reg: &Registry,
    old: &str,
    new: &str,
    plain: &str,
    compact: &str,
) -> CompactComparison {
    let (before, after) = (
        archive_body(reg, old, new, plain),
        archive_body(reg, old, new, compact),
    );
    let (tar_before, tar_after) = (untar(&before), untar(&after));
    let (n, raw, gz) = compact_records(&tar_after);
    eprintln!(
        "{old} -> {new} ({plain}): archive {} B without compact-meta, {} B with \
         ({} B / {} B uncompressed); {n} compact records, {raw} B ({:.2} B/record), \
         {gz} B gzip'd alone ({:.2} B/record)",
        before.len(),
        after.len(),
        tar_before.len(),
        tar_after.len(),
        raw as f64 / n.max(1) as f64,
        gz as f64 / n.max(1) as f64,
    );
    CompactComparison {
        before,
        after,
        tar_before,
        tar_after,
        records: n,
        raw,
    }
}

#[test]
fn compact_metadata_makes_the_rebuilt_base_cheaper_and_stays_exact() {
    let reg = registry_with_test_images(DEVICE_CONFIG, &[OLD, NEW]);
    let proxy = CountingProxy::start(reg.addr());
    for enc in ["", ",zstd"] {
        let plain = format!("layer-base,file-delta2{enc}");
        let compact = format!("layer-base,file-delta2,compact-meta{enc}");
        let CompactComparison {
            before,
            after,
            tar_before,
            tar_after,
            records: n,
            raw,
        } = compare_compact(&reg, OLD, NEW, &plain, &compact);
        assert_eq!(compact_records(&tar_before).0, 0);
        assert!(n >= 50, "only {n} entries went compact");
        assert!(raw <= 8 * n, "{raw} B for {n} records: more than 8 B each");
        assert!(
            after.len() < before.len(),
            "compact-meta did not make the archive smaller: {} vs {} B",
            after.len(),
            before.len()
        );
        assert!(
            tar_after.len() + 512 * n as usize <= tar_before.len() + 1024,
            "each compact entry should spare a tar header (less a block or two for the records)"
        );
    }

    // The agent asks for compact-meta: its update uses records and checks
    // out exactly.
    let agent = Agent::new(TOKEN);
    sync(&agent, &proxy, OLD);
    let (cost, log) = sync(&agent, &proxy, NEW);
    eprintln!("{OLD} -> {NEW}: {cost} B on the wire with compact-meta");
    let with_meta = log
        .lines()
        .filter_map(|l| l.split(" kept from a held layer (").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(
        with_meta >= 50,
        "the agent applied {with_meta} records:\n{log}"
    );
    assert_checkout_matches_umoci(&agent, NEW);
    assert_verifies(&agent);
}

/// The bench's update pair (upd:v1 → upd:v2: two independent debootstrap
/// runs, security updates, thousands of entries that differ only in
/// mtime): with `compact-meta` they cost a few bytes each, and the device's
/// checkout is still exact.
#[test]
fn compact_metadata_on_the_upd_pair() {
    let (old, new) = ("upd:v1", "upd:v2");
    let reg = registry_with_test_images(DEVICE_CONFIG, &[old, new]);
    let proxy = CountingProxy::start(reg.addr());
    let plain = "layer-base,file-delta2,zstd";
    let compact = "layer-base,file-delta2,compact-meta,zstd";
    let CompactComparison {
        before,
        after,
        records: n,
        raw,
        ..
    } = compare_compact(&reg, old, new, plain, compact);
    assert!(n >= 1000, "only {n} entries went compact");
    assert!(raw <= 8 * n, "{raw} B for {n} records: more than 8 B each");
    assert!(after.len() < before.len());

    let agent = Agent::new(TOKEN);
    sync(&agent, &proxy, old);
    let (cost, log) = sync(&agent, &proxy, new);
    eprintln!("{old} -> {new}: {cost} B on the wire with compact-meta");
    assert!(log.contains("with new metadata"), "{log}");
    assert_checkout_matches_umoci(&agent, new);
    assert_verifies(&agent);
}

/// Files under `dir`, recursively (0 when it does not exist).
fn count_files(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { count_files(&p) } else { 1 })
        .sum()
}

/// `name=<n>` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

#[test]
fn pushed_images_are_prepared_in_the_background_so_syncs_compute_nothing() {
    // `precompute = true` is the registry's default; the test harness turns
    // it off for the other tests (CPU), so this test names it. Level 3
    // instead of 19 keeps the test's CPU low (level 19 took 11 min of a
    // busy 2-core machine); what is made and used does not depend on it.
    let config = format!("precompute = true\nzstd_level = 3\n{DEVICE_CONFIG}");
    let reg = registry_with_test_images(&config, &[OLD, NEW]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    let done = |log: &str| log.lines().filter(|l| l.contains("precomputed")).count();
    while done(&reg.log()) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the registry did not finish preparing both pushes:\n{}",
            reg.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let log = reg.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("precomputed")).collect();
    eprintln!("{}", lines.join("\n"));
    // The first push made frames, the second (the rebuild) made deltas
    // against the first, which is the same repository's other tag.
    let frames_made = |l: &str| {
        l.split("precomputed ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deltas_made = |l: &str| {
        l.split("zstd frames, ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(frames_made(lines[0]) > 0, "{}", lines[0]);
    assert!(deltas_made(lines[1]) > 0, "{}", lines[1]);
    let frames_dir = reg.data_dir().join("objects").join(".frames-w18");
    let frames = count_files(&frames_dir);
    let deltas = count_files(&reg.data_dir().join("deltas"));
    assert!(frames > 0 && deltas > 0, "{frames} frames, {deltas} deltas");

    // A device syncs v1 then v2 with every feature (zstd, deltas): the
    // registry makes no frame and computes no delta for either request.
    let proxy = CountingProxy::start(reg.addr());
    let agent = Agent::new(TOKEN);
    let (cold, _) = sync(&agent, &proxy, OLD);
    assert!(
        reg.log()
            .contains("archive served from the cold archive cache"),
        "the cold sync did not get the cached cold archive:\n{}",
        reg.log()
    );
    eprintln!("cold sync of {OLD} from the cold archive cache: {cold} B on the wire");
    assert_checkout_matches_umoci(&agent, OLD);
    let (cost, _) = sync(&agent, &proxy, NEW);
    assert_eq!(
        count_files(&frames_dir),
        frames,
        "a sync made frames the push should have made"
    );
    let archive_lines: Vec<String> = reg
        .log()
        .lines()
        .filter(|l| l.contains("archive deltas"))
        .map(str::to_owned)
        .collect();
    assert!(!archive_lines.is_empty(), "{}", reg.log());
    for l in &archive_lines {
        assert_eq!(field(l, "computed"), Some(0), "{l}");
    }
    assert!(
        archive_lines
            .iter()
            .any(|l| field(l, "sent").unwrap_or(0) > 0),
        "{archive_lines:?}"
    );
    eprintln!("{OLD} -> {NEW} with precomputed caches: {cost} B on the wire");
    assert_checkout_matches_umoci(&agent, NEW);
}
