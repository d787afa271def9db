//! The upstream OCI distribution-spec conformance suite (v1.0.1, all four
//! workflows: pull, push, content discovery, content management, with a
//! cross-repository mount) against a real `layerlink-registry serve`
//! process, anonymous and with publisher basic auth. Any failed spec fails
//! the test.
//!
//! The suite is a prebuilt third-party binary at
//! `../shared/tools/oci-conformance/oci-conformance-v1.0.1` beside the
//! repository (CI has `../shared` too), or `LAYERLINK_OCI_CONFORMANCE`.
//! It is never skipped: a missing binary is a failure.

mod serve;

use serve::Served;
use std::path::PathBuf;
use std::process::Command;

fn suite() -> PathBuf {
    if let Some(p) = std::env::var_os("LAYERLINK_OCI_CONFORMANCE") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/tools/oci-conformance/oci-conformance-v1.0.1");
    assert!(
        p.exists(),
        "the OCI conformance suite is not at {} (set LAYERLINK_OCI_CONFORMANCE)",
        p.display()
    );
    p
}

/// Run the whole suite; returns (passed, failed) and panics with the
/// suite's output when any spec failed.
fn run_suite(reg: &Served, auth: Option<(&str, &str)>) -> (u32, u32) {
    let report = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(suite());
    cmd.current_dir(report.path())
        .env("OCI_ROOT_URL", &reg.base)
        .env("OCI_NAMESPACE", "conformance/repo1")
        .env("OCI_CROSSMOUNT_NAMESPACE", "conformance/other")
        .env("OCI_TEST_PULL", "1")
        .env("OCI_TEST_PUSH", "1")
        .env("OCI_TEST_CONTENT_DISCOVERY", "1")
        .env("OCI_TEST_CONTENT_MANAGEMENT", "1")
        .env("OCI_HIDE_SKIPPED_WORKFLOWS", "0")
        .env("OCI_REPORT_DIR", report.path())
        .arg("-ginkgo.noColor");
    if let Some((u, p)) = auth {
        cmd.env("OCI_USERNAME", u).env("OCI_PASSWORD", p);
    }
    let out = cmd.output().expect("running the conformance suite");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "41 Passed | 18 Failed | 0 Pending | 3 Skipped"
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(" Passed") && l.contains(" Failed"))
        .unwrap_or_else(|| panic!("no summary line in the suite's output:\n{text}"));
    let count = |word: &str| -> u32 {
        let i = line.find(word).unwrap();
        line[..i]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (passed, failed) = (count(" Passed"), count(" Failed"));
    assert!(
        out.status.success() && failed == 0,
        "conformance: {passed} passed, {failed} failed:\n{text}"
    );
    (passed, failed)
}

#[test]
fn conformance_anonymous_push() {
    let reg = Served::start(Some(""), None);
    let (passed, _) = run_suite(&reg, None);
    // All four workflows ran (59 specs in v1.0.1 with a mount namespace).
    assert!(passed >= 59, "only {passed} specs passed");
}

#[test]
fn conformance_with_publisher_auth() {
    let reg = Served::start(
        Some(
            r#"
[[publishers]]
user = "ci"
password = "conformance-pw"
"#,
        ),
        None,
    );
    let (passed, _) = run_suite(&reg, Some(("ci", "conformance-pw")));
    assert!(passed >= 59, "only {passed} specs passed");
}

// ---- OCI 1.1 referrers and artifacts, unsyncable images -------------------
// (the v1.0.1 suite predates the referrers API)

use layerlink_proto::msg::{HeldSet, Holdings, ImageRef, PlanRequest, Platform, CONTENT_TYPE};
use layerlink_proto::{Digest, ErrorBody};

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// (status, headers, body) of a request.
fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::Read as _;
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = http().run(b.body(body.to_vec()).unwrap()).unwrap();
    let status = resp.status().as_u16();
    let hs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut out = Vec::new();
    resp.into_body()
        .into_reader()
        .read_to_end(&mut out)
        .unwrap();
    (status, hs, out)
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn push_blob(reg: &Served, repo: &str, blob: &[u8]) -> Digest {
    let d = Digest::of(blob);
    let (s, _, b) = call(
        "POST",
        &format!("{}/v2/{repo}/blobs/uploads/?digest={d}", reg.base),
        &[("Content-Type", "application/octet-stream")],
        blob,
    );
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
    d
}

fn push_manifest(
    reg: &Served,
    repo: &str,
    reference: &str,
    m: &serde_json::Value,
) -> (u16, Vec<(String, String)>, Vec<u8>, Digest) {
    let bytes = serde_json::to_vec(m).unwrap();
    let (s, h, b) = call(
        "PUT",
        &format!("{}/v2/{repo}/manifests/{reference}", reg.base),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &bytes,
    );
    (s, h, b, Digest::of(&bytes))
}

/// An image whose only "tar" layer is random bytes (what the conformance
/// suite pushes), as `repo:tag`.
fn push_unsplittable_image(reg: &Served, repo: &str, tag: &str) -> (u16, Vec<u8>, Digest, Digest) {
    let layer: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let layer_d = push_blob(reg, repo, &layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_d.to_string()]},
    }))
    .unwrap();
    let config_d = push_blob(reg, repo, &config);
    let (s, _, b, d) = push_manifest(
        reg,
        repo,
        tag,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_d.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_d.to_string(), "size": layer.len()}],
        }),
    );
    (s, b, d, layer_d)
}

#[test]
fn referrers_list_artifacts_by_subject_and_type() {
    let reg = Served::start(Some(""), None);
    let repo = "apps/signed";
    let (s, b, image, _) = push_unsplittable_image(&reg, repo, "v1");
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
    let empty = push_blob(&reg, repo, b"{}");
    let sig_payload = push_blob(&reg, repo, b"{\"critical\":{}}");
    let artifact = |kind: &str, ann: &str| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": kind,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": empty.to_string(), "size": 2},
            "layers": [{"mediaType": "application/octet-stream",
                        "digest": sig_payload.to_string(), "size": 15}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": image.to_string(), "size": 1},
            "annotations": {"note": ann},
        })
    };
    let sig = artifact("application/vnd.dev.cosign.artifact.sig.v1+json", "sig");
    let sbom = artifact("application/spdx+json", "sbom");
    let (s, h, _, sig_d) = push_manifest(&reg, repo, &format!("sha256-{}.sig", image.hex()), &sig);
    assert_eq!(s, 201);
    assert_eq!(header(&h, "OCI-Subject"), Some(image.to_string().as_str()));
    let (s, _, _, sbom_d) = push_manifest(&reg, repo, "sbom", &sbom);
    assert_eq!(s, 201);

    let list = |q: &str| {
        let (s, h, b) = call(
            "GET",
            &format!("{}/v2/{repo}/referrers/{image}{q}", reg.base),
            &[],
            b"",
        );
        assert_eq!(s, 200);
        assert_eq!(
            header(&h, "Content-Type"),
            Some("application/vnd.oci.image.index.v1+json")
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let mut got: Vec<(String, String)> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["digest"].as_str().unwrap().to_owned(),
                    m["artifactType"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        got.sort();
        (h, got)
    };
    let (_, all) = list("");
    let mut want = vec![
        (
            sig_d.to_string(),
            "application/vnd.dev.cosign.artifact.sig.v1+json".to_owned(),
        ),
        (sbom_d.to_string(), "application/spdx+json".to_owned()),
    ];
    want.sort();
    assert_eq!(all, want);
    let (h, only) = list("?artifactType=application%2Fspdx%2Bjson");
    assert_eq!(
        only,
        vec![(sbom_d.to_string(), "application/spdx+json".to_owned())]
    );
    assert_eq!(header(&h, "OCI-Filters-Applied"), Some("artifactType"));
    // A subject nobody refers to: an empty index, not a 404.
    let (s, _, b) = call(
        "GET",
        &format!("{}/v2/{repo}/referrers/{}", reg.base, Digest::of(b"x")),
        &[],
        b"",
    );
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["manifests"],
        serde_json::json!([])
    );
    // Artifacts round-trip byte for byte, by tag and digest.
    let (s, _, b) = call(
        "GET",
        &format!("{}/v2/{repo}/manifests/{sig_d}", reg.base),
        &[],
        b"",
    );
    assert_eq!((s, Digest::of(&b)), (200, sig_d));
    let (s, _, b) = call(
        "GET",
        &format!(
            "{}/v2/{repo}/manifests/sha256-{}.sig",
            reg.base,
            image.hex()
        ),
        &[],
        b"",
    );
    assert_eq!((s, Digest::of(&b)), (200, sig_d));
    // Deleting a referrer removes it from the list.
    let (s, _, _) = call(
        "DELETE",
        &format!("{}/v2/{repo}/manifests/{sbom_d}", reg.base),
        &[],
        b"",
    );
    assert_eq!(s, 202);
    let (_, after) = list("");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, sig_d.to_string());
    // Another repository sees none of them.
    let (s, _, b) = call(
        "GET",
        &format!("{}/v2/other/repo/referrers/{image}", reg.base),
        &[],
        b"",
    );
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["manifests"],
        serde_json::json!([])
    );
}

#[test]
fn an_unsplittable_image_is_stored_but_a_device_gets_a_clear_error() {
    let token = "tok-unsync-0123456789";
    let reg = Served::start(
        Some(&format!(
            "[[devices]]\nid = \"gw\"\ntoken = \"{token}\"\nrepositories = [\"*\"]\n"
        )),
        None,
    );
    let (s, b, image, layer) = push_unsplittable_image(&reg, "apps/blob", "v1");
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = call(
        "GET",
        &format!("{}/v2/apps/blob/manifests/v1", reg.base),
        &[],
        b"",
    );
    assert_eq!((s, Digest::of(&b)), (200, image));
    // Invalid references on GET/HEAD are 404 MANIFEST_UNKNOWN.
    for m in ["GET", "HEAD"] {
        let (s, _, b) = call(
            m,
            &format!("{}/v2/apps/blob/manifests/.INVALID_MANIFEST_NAME", reg.base),
            &[],
            b"",
        );
        assert_eq!(s, 404, "{m}");
        if m == "GET" {
            assert!(String::from_utf8_lossy(&b).contains("MANIFEST_UNKNOWN"));
        }
    }
    // A device asking for it is told which layer and why.
    let plan = postcard::to_allocvec(&PlanRequest {
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        images: vec![ImageRef {
            repository: "apps/blob".into(),
            reference: "v1".into(),
        }],
        holdings: Holdings::Full(HeldSet::default()),
    })
    .unwrap();
    let (s, _, b) = call(
        "POST",
        &format!("{}/layerlink/v1/plan", reg.base),
        &[
            ("Content-Type", CONTENT_TYPE),
            ("Authorization", &format!("Bearer {token}")),
        ],
        &plan,
    );
    assert_eq!(s, 400);
    let e: ErrorBody = postcard::from_bytes(&b).unwrap();
    assert!(
        e.message.contains("cannot be synced") && e.message.contains(&layer.to_string()),
        "{}",
        e.message
    );
    // `stats` shows it.
    let out = Command::new(serve::bin())
        .args(["stats", "--data"])
        .arg(&reg.data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not syncable") && text.contains(&image.to_string()),
        "{text}"
    );

    // Strict mode refuses it at push time instead.
    let strict = Served::start(Some("reject_unsyncable = true\n"), None);
    let (s, b, _, _) = push_unsplittable_image(&strict, "apps/blob", "v1");
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("MANIFEST_INVALID"));
}
