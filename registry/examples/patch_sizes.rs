//! What the registry's deltas cost per kind of file, for one image pair.
//!
//! ```text
//! cargo run --release -p layerlink-registry --example patch_sizes -- OCI_LAYOUT OLD_TAG NEW_TAG
//! ```
//!
//! Reads both images' layers from an OCI layout, keeps the regular files of
//! NEW whose content OLD does not hold (each content once) and pairs each
//! with an old version the way the registry looks for one when it has no
//! layer-base (same path, else the same name with its version digits
//! masked, [`delta::stem_key`]). For every pair it runs the registry's own
//! code: [`delta::diff`] (bidiff's controls, in patch format 2 — or 1 with
//! `PATCH_FORMAT=1`), the cached patch frame at the content
//! frames' level ([`frame::frame_level`], window `ZSTD_MAX_WINDOW_LOG`),
//! and [`delta::worth_it`]; the whole file is the frame the registry would
//! splice instead. Printed per kind — ELF, `.pyc`, text (valid UTF-8),
//! other data; files under [`delta::MIN_DELTA_SIZE`] and compressed ones
//! ([`delta::is_compressed_name`], the registry's own list) always go
//! whole and are listed apart — the whole bytes, the patch
//! bytes, and what is sent (patch + [`delta::ENTRY_OVERHEAD`] when worth
//! it, else whole), with the ratio sent / whole.

use flate2::read::GzDecoder;
use layerlink_registry::sync::{delta, frame};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

type Files = HashMap<String, Vec<u8>>;

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    layout.join("blobs/sha256").join(hex)
}

fn image_files(layout: &Path, tag: &str) -> Files {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let manifest = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in the layout"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(layout, manifest["digest"].as_str().expect("digest")))
            .expect("manifest blob"),
    )
    .expect("manifest JSON");
    let mut out = Files::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let f = std::fs::File::open(blob(layout, layer["digest"].as_str().expect("digest")))
            .expect("layer blob");
        let mut ar = tar::Archive::new(GzDecoder::new(f));
        for e in ar.entries().expect("tar") {
            let mut e = e.expect("tar entry");
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = e.path().expect("path").to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("content");
            out.insert(path, data);
        }
    }
    out
}

fn kind(path: &str, data: &[u8]) -> &'static str {
    if delta::is_compressed_name(path.as_bytes()) {
        "compressed (whole)"
    } else if (data.len() as u64) < delta::MIN_DELTA_SIZE {
        "small (whole)"
    } else if data.starts_with(b"\x7fELF") {
        "ELF"
    } else if path.ends_with(".pyc") {
        ".pyc"
    } else if std::str::from_utf8(data).is_ok() {
        "text"
    } else {
        "data"
    }
}

fn frame_len(data: &[u8]) -> u64 {
    let mut c = frame::bulk_compressor(frame::frame_level()).expect("compressor");
    c.compress(data).expect("compress").len() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layout, old_tag, new_tag] = &args[..] else {
        eprintln!("usage: patch_sizes OCI_LAYOUT OLD_TAG NEW_TAG");
        std::process::exit(2);
    };
    let layout = Path::new(layout);
    let format = match std::env::var("PATCH_FORMAT").as_deref() {
        Ok("1") => delta::PatchFormat::Bidiff,
        _ => delta::PatchFormat::Blocks,
    };
    let old = image_files(layout, old_tag);
    let new = image_files(layout, new_tag);
    let held: HashSet<[u8; 32]> = old.values().map(|d| Sha256::digest(d).into()).collect();
    let by_stem: HashMap<Vec<u8>, &String> = old
        .keys()
        .map(|p| (delta::stem_key(p.as_bytes()), p))
        .collect();
    // kind -> (files, whole, patched files, patch bytes, sent)
    let mut rows: BTreeMap<&str, (u64, u64, u64, u64, u64)> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut paths: Vec<&String> = new.keys().collect();
    paths.sort();
    for path in paths {
        let data = &new[path];
        let d: [u8; 32] = Sha256::digest(data).into();
        if held.contains(&d) || !seen.insert(d) {
            continue;
        }
        let k = kind(path, data);
        let whole = frame_len(data);
        let base = old.get(path).or_else(|| {
            by_stem
                .get(&delta::stem_key(path.as_bytes()))
                .map(|p| &old[*p])
        });
        let mut sent = whole;
        let mut patch_bytes = 0;
        let mut patched = 0;
        if let (Some(base), "ELF" | ".pyc" | "text" | "data") = (base, k) {
            let raw = delta::diff(base, data, format).expect("diff");
            let p = frame_len(&raw);
            let whole3 = zstd::bulk::compress(data, 3).expect("zstd").len() as u64;
            if delta::worth_it(p, whole3) {
                sent = p + delta::ENTRY_OVERHEAD;
                patch_bytes = p;
                patched = 1;
            }
        }
        let r = rows.entry(k).or_default();
        r.0 += 1;
        r.1 += whole;
        r.2 += patched;
        r.3 += patch_bytes;
        r.4 += sent;
    }
    println!(
        "{new_tag} over {old_tag}: contents the device lacks, by kind (patch format {}, zstd level {}, window 2^{})",
        format.version(),
        frame::frame_level(),
        layerlink_proto::archive::ZSTD_MAX_WINDOW_LOG
    );
    println!(
        "{:20} {:>6} {:>12} {:>8} {:>12} {:>12} {:>7}",
        "kind", "files", "whole B", "patched", "patch B", "sent B", "sent/whole"
    );
    let (mut w, mut s) = (0, 0);
    for (k, (n, whole, patched, patch, sent)) in &rows {
        println!(
            "{k:20} {n:6} {whole:12} {patched:8} {patch:12} {sent:12} {:7.3}",
            *sent as f64 / (*whole).max(1) as f64
        );
        if !k.ends_with("(whole)") {
            w += whole;
            s += sent;
        }
    }
    println!(
        "{:20} {:>6} {w:12} {:>8} {:>12} {s:12} {:7.3}",
        "patchable kinds",
        "",
        "",
        "",
        s as f64 / w.max(1) as f64
    );
}
