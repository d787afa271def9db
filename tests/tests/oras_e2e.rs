//! Interoperability with an independent OCI artifact client: the ORAS
//! Python SDK (`oras` on PyPI, pinned in tests/oras/requirements.txt,
//! installed by scripts/install-deps.sh into
//! `$LAYERLINK_CACHE/oras-venv`) pushes and pulls artifacts against a real
//! `layerlink-registry serve`, next to an image pushed with skopeo.
//!
//! Checked: artifacts (non-image `artifactType`, several blobs) round-trip
//! byte for byte; an artifact whose `subject` is the skopeo-pushed image is
//! listed by the referrers API (and by its `artifactType` filter); artifacts
//! are never ingested (the registry's file figures do not move) and never
//! offered to devices (a device sync of the image still matches `umoci
//! unpack`; asking for the artifact fails naming it an artifact).
//!
//! Never skipped: a missing SDK venv is a failure naming the install script.

use layerlink_tests::fixture::{assert_checkout_matches_umoci, registry_with_test_images};
use layerlink_tests::http::request;
use layerlink_tests::images::cache_dir;
use layerlink_tests::{sha256_hex, test_images, Agent, Registry};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "tok-oras-dev";
const DEVICE_CONFIG: &str = r#"
[[devices]]
id = "gw-oras"
token = "tok-oras-dev"
repositories = ["*"]
"#;

const BUNDLE_TYPE: &str = "application/vnd.example.bundle.v1";
const SBOM_TYPE: &str = "application/spdx+json";
const SIG_TYPE: &str = "application/vnd.example.signature.v1";

/// The venv python with the ORAS SDK (`LAYERLINK_ORAS_PYTHON` overrides).
fn oras_python() -> PathBuf {
    let p = std::env::var_os("LAYERLINK_ORAS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("oras-venv/bin/python"));
    assert!(
        p.is_file(),
        "the ORAS Python SDK venv is missing ({}): run scripts/install-deps.sh",
        p.display()
    );
    p
}

fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oras/oras_client.py")
}

/// Run tests/oras/oras_client.py in `dir`; its JSON output.
fn oras(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(oras_python())
        .arg(client_script())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running the ORAS client");
    assert!(
        out.status.success(),
        "oras_client.py {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("oras_client.py {args:?} printed no JSON:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}

/// Push with ORAS; asserts 201 and returns (manifest digest, client output).
fn oras_push(
    reg: &Registry,
    dir: &Path,
    target: &str,
    kind: &str,
    rest: &[&str],
) -> (String, Value) {
    let mut args = vec!["push", &reg.host, target, kind];
    args.extend_from_slice(rest);
    let out = oras(dir, &args);
    assert_eq!(out["status"], 201, "ORAS push of {target}: {out}");
    let digest = out["digest"].as_str().unwrap().to_owned();
    (digest, out)
}

fn get(reg: &Registry, path: &str, accept: &str) -> layerlink_tests::http::Response {
    request(reg.addr(), "GET", path, &[("Accept", accept)], b"")
}

/// The manifest as the registry serves it: its bytes hash to `digest` and
/// parse to what the client sent.
fn assert_manifest_served(reg: &Registry, repo: &str, reference: &str, digest: &str, sent: &Value) {
    let r = get(
        reg,
        &format!("/v2/{repo}/manifests/{reference}"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert_eq!(r.status, 200, "GET {repo}:{reference}: {}", r.text());
    assert_eq!(
        format!("sha256:{}", sha256_hex(&r.body)),
        digest,
        "{repo}:{reference} bytes"
    );
    assert_eq!(r.header("docker-content-digest"), Some(digest));
    assert_eq!(&r.json(), sent, "{repo}:{reference} as served");
}

/// Distinct bytes of a given size: binary, not UTF-8, not a tar.
fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// The registry's file-level figures (what ingest adds to).
fn file_figures(reg: &Registry) -> Value {
    let s = reg.stats();
    json!({
        "layers": s["layers"], "file_entries": s["file_entries"],
        "regular_files": s["regular_files"], "distinct_objects": s["distinct_objects"],
        "logical_bytes": s["logical_bytes"], "stored_bytes": s["stored_bytes"],
        "unsyncable": s["unsyncable"],
    })
}

#[test]
fn oras_artifacts_round_trip_are_found_by_referrers_and_never_reach_devices() {
    let tag = "tiny:v1";
    let reg = registry_with_test_images(DEVICE_CONFIG, &[tag]);
    let image_repo = "test/tiny";
    let before = file_figures(&reg);

    // The skopeo-pushed image the artifacts will refer to.
    let r = get(
        &reg,
        &format!("/v2/{image_repo}/manifests/v1"),
        "application/vnd.oci.image.manifest.v1+json",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let image_digest = format!("sha256:{}", sha256_hex(&r.body));
    assert_eq!(
        image_digest,
        test_images().info(tag).digest,
        "skopeo kept the manifest"
    );
    let image_media_type = r.header("content-type").unwrap().to_owned();
    let subject = format!("{image_media_type},{image_digest},{}", r.body.len());

    // Files: an SBOM, a signature-like blob, a 1 MiB binary payload.
    let work = tempfile::tempdir().unwrap();
    let sbom = serde_json::to_vec_pretty(&json!({
        "spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "tiny",
        "packages": (0..40).map(|i| json!({"name": format!("pkg-{i}"), "versionInfo": format!("1.{i}")})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let sig = pseudo_random(512, 7);
    let payload = pseudo_random(1 << 20, 11);
    let files: [(&str, &[u8], &str); 3] = [
        ("sbom.spdx.json", &sbom, SBOM_TYPE),
        ("image.sig", &sig, SIG_TYPE),
        ("payload.bin", &payload, "application/octet-stream"),
    ];
    for (name, bytes, _) in &files {
        std::fs::write(work.path().join(name), bytes).unwrap();
    }

    // 1. A stand-alone artifact with three blobs round-trips byte for byte.
    let specs: Vec<String> = files.iter().map(|(n, _, t)| format!("{n}:{t}")).collect();
    let mut rest: Vec<&str> = specs.iter().map(String::as_str).collect();
    rest.extend(["--annotation", "org.example.purpose=interop"]);
    let (bundle, out) = oras_push(&reg, work.path(), "artifacts/bundle:v1", BUNDLE_TYPE, &rest);
    let sent = &out["manifest"];
    assert_eq!(sent["artifactType"], BUNDLE_TYPE);
    let layers = sent["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for ((_, bytes, media_type), layer) in files.iter().zip(layers) {
        assert_eq!(layer["digest"], format!("sha256:{}", sha256_hex(bytes)));
        assert_eq!(layer["mediaType"], *media_type);
    }
    assert_manifest_served(&reg, "artifacts/bundle", "v1", &bundle, sent);
    assert_manifest_served(&reg, "artifacts/bundle", &bundle, &bundle, sent);
    let pulled = work.path().join("pulled");
    let out = oras(
        work.path(),
        &[
            "pull",
            &reg.host,
            "artifacts/bundle:v1",
            pulled.to_str().unwrap(),
        ],
    );
    assert_eq!(&out["manifest"], sent, "the manifest ORAS pulled");
    assert_eq!(out["files"].as_array().unwrap().len(), 3, "{out}");
    for (name, bytes, _) in &files {
        let got = std::fs::read(pulled.join(name)).unwrap();
        assert!(
            got == *bytes,
            "{name} pulled back differs ({} B vs {} B)",
            got.len(),
            bytes.len()
        );
    }

    // 2. Artifacts referring to the image (subject), in the image's repo.
    let sig_tag = format!("{image_repo}:sha256-{}.sig", &image_digest[7..]);
    let (sbom_d, out) = oras_push(
        &reg,
        work.path(),
        &format!("{image_repo}:sbom-v1"),
        SBOM_TYPE,
        &[
            "sbom.spdx.json:application/spdx+json",
            "--subject",
            &subject,
        ],
    );
    assert_eq!(
        out["oci_subject"],
        image_digest.as_str(),
        "OCI-Subject header"
    );
    assert_eq!(out["manifest"]["subject"]["digest"], image_digest.as_str());
    // The size of the bytes the SDK sent (its own JSON spacing), as served.
    let sbom_size = get(
        &reg,
        &format!("/v2/{image_repo}/manifests/{sbom_d}"),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .body
    .len();
    assert_manifest_served(&reg, image_repo, "sbom-v1", &sbom_d, &out["manifest"]);
    let (sig_d, out) = oras_push(
        &reg,
        work.path(),
        &sig_tag,
        SIG_TYPE,
        &[
            "image.sig:application/vnd.example.signature.v1",
            "--subject",
            &subject,
        ],
    );
    assert_eq!(out["oci_subject"], image_digest.as_str());
    let sig_pulled = work.path().join("sig-pulled");
    oras(
        work.path(),
        &["pull", &reg.host, &sig_tag, sig_pulled.to_str().unwrap()],
    );
    assert!(std::fs::read(sig_pulled.join("image.sig")).unwrap() == sig);

    let referrers = |query: &str| {
        let r = get(
            &reg,
            &format!("/v2/{image_repo}/referrers/{image_digest}{query}"),
            "application/vnd.oci.image.index.v1+json",
        );
        assert_eq!(r.status, 200, "referrers{query}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.oci.image.index.v1+json")
        );
        let v = r.json();
        let mut list: Vec<(String, String)> = v["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("referrers{query}: {v}"))
            .iter()
            .map(|m| {
                (
                    m["digest"].as_str().unwrap().to_owned(),
                    m["artifactType"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        list.sort();
        (r, v, list)
    };
    let (_, index, all) = referrers("");
    let mut want = vec![
        (sbom_d.clone(), SBOM_TYPE.to_owned()),
        (sig_d.clone(), SIG_TYPE.to_owned()),
    ];
    want.sort();
    assert_eq!(all, want, "referrers of the image: {index}");
    let sbom_entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == sbom_d.as_str())
        .unwrap();
    assert_eq!(sbom_entry["size"], sbom_size, "{sbom_entry}");
    assert_eq!(
        sbom_entry["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let (r, _, only) = referrers("?artifactType=application%2Fspdx%2Bjson");
    assert_eq!(only, vec![(sbom_d.clone(), SBOM_TYPE.to_owned())]);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let (_, _, none) = referrers("?artifactType=application%2Fvnd.example.nothing");
    assert!(none.is_empty(), "{none:?}");
    // Another repository sees none of them.
    let r = get(
        &reg,
        &format!("/v2/artifacts/bundle/referrers/{image_digest}"),
        "application/vnd.oci.image.index.v1+json",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["manifests"], json!([]), "{}", r.text());

    // 3. Never ingested: the file-level figures did not move, and no
    // artifact is listed as a broken image.
    assert_eq!(
        file_figures(&reg),
        before,
        "artifacts changed the file store"
    );

    // 4. Never offered to devices: the image syncs and checks out exactly;
    // each artifact is refused, named as an artifact.
    let agent = Agent::new(TOKEN);
    agent.sync(&reg.url, &[&format!("{image_repo}:v1")]);
    assert_checkout_matches_umoci(
        &agent,
        &format!("{image_repo}:v1"),
        &test_images().oci_dir,
        tag,
    );
    for (image, kind) in [
        (format!("{image_repo}:sbom-v1"), SBOM_TYPE),
        (sig_tag.clone(), SIG_TYPE),
        ("artifacts/bundle:v1".to_owned(), BUNDLE_TYPE),
        (format!("artifacts/bundle@{bundle}"), BUNDLE_TYPE),
    ] {
        let out = agent.try_sync(&reg.url, &[&image]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "syncing artifact {image} succeeded");
        assert!(
            stderr.contains("is an OCI artifact") && stderr.contains(kind),
            "syncing artifact {image}: the error does not name it an artifact of type {kind}:\n{stderr}"
        );
    }
    // The refused requests left the device's image intact.
    assert_checkout_matches_umoci(
        &agent,
        &format!("{image_repo}:v1"),
        &test_images().oci_dir,
        tag,
    );
    assert_eq!(
        file_figures(&reg),
        before,
        "device syncs changed the file store"
    );
}
