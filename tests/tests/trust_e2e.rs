//! The trust policy (issue 13 point 8, signatures), end to end: the real
//! registry (with publisher auth, so the agent reads signatures with its
//! device token), skopeo pushes, the real agent with `--trust-key`, and
//! cosign key-pair signatures made by an independent implementation
//! (tests/sign/cosign_sign.py: Python `cryptography`, in the venv
//! scripts/install-deps.sh makes), pushed as cosign does: an OCI artifact
//! tagged `sha256-<hex>.sig`, or with a `subject` for the referrers API.
//!
//! Every refusal exits 11 and leaves the store as it was (same layers,
//! objects and records, `verify` clean, the held image still checks out
//! equal to `umoci unpack`).

use layerlink_tests::fixture::{self, registry_with_test_images, test_repo, TOKEN};
use layerlink_tests::http::request;
use layerlink_tests::images::cache_dir;
use layerlink_tests::{run_ok, sha256_hex, test_images, Agent, Registry};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONFIG: &str = r#"
[[publishers]]
user = "ci"
password = "pw-ci"

[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["test/*"]
"#;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const UNTRUSTED: i32 = 11;

fn sign_python() -> PathBuf {
    let p = std::env::var_os("LAYERLINK_SIGN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("sign-venv/bin/python"));
    assert!(
        p.is_file(),
        "the Python `cryptography` venv is missing ({}): run scripts/install-deps.sh",
        p.display()
    );
    p
}

fn signer() -> Command {
    let mut c = Command::new(sign_python());
    c.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sign/cosign_sign.py"));
    c
}

/// A key pair in `dir` (cosign.key, cosign.pub).
fn keygen(dir: &Path) -> PathBuf {
    run_ok(signer().arg("keygen").arg(dir));
    dir.join("cosign.key")
}

/// A signed cosign payload: (payload bytes, base64 signature).
fn sign(key: &Path, reference: &str, digest: &str, annotations: &[&str]) -> (Vec<u8>, String) {
    let out = run_ok(
        signer()
            .arg("sign")
            .arg(key)
            .arg(reference)
            .arg(digest)
            .args(annotations),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("signer JSON");
    (
        v["payload"].as_str().unwrap().as_bytes().to_vec(),
        v["signature"].as_str().unwrap().to_string(),
    )
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let n = q.iter().enumerate().fold(0u32, |n, (i, &c)| {
            if c == b'=' {
                n
            } else {
                n | u32::from(val(c)) << (18 - 6 * i)
            }
        });
        let pad = q.iter().filter(|&&c| c == b'=').count();
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

/// The OCI API as the publisher (Basic auth).
struct Publisher<'a> {
    reg: &'a Registry,
    auth: String,
}

impl Publisher<'_> {
    fn new(reg: &Registry) -> Publisher<'_> {
        Publisher {
            reg,
            auth: format!("Basic {}", b64(reg.creds().expect("publisher").as_bytes())),
        }
    }

    /// Push a blob (monolithic POST); its digest.
    fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let r = request(
            self.reg.addr(),
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[
                ("Authorization", &self.auth),
                ("Content-Type", "application/octet-stream"),
            ],
            bytes,
        );
        assert_eq!(r.status, 201, "blob push: {}", r.text());
        digest
    }

    fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let r = request(
            self.reg.addr(),
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Authorization", &self.auth), ("Content-Type", media_type)],
            bytes,
        );
        assert_eq!(
            r.status,
            201,
            "manifest push {repo}:{reference}: {}",
            r.text()
        );
    }

    /// The manifest `repo:reference` (bytes, media type).
    fn manifest(&self, repo: &str, reference: &str) -> (Vec<u8>, String) {
        let r = request(
            self.reg.addr(),
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[
                ("Authorization", &self.auth),
                (
                    "Accept",
                    &format!(
                        "{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"
                    ),
                ),
            ],
            b"",
        );
        assert_eq!(r.status, 200, "manifest {repo}:{reference}: {}", r.text());
        let mt = r.header("content-type").unwrap_or_default().to_string();
        assert!(
            !mt.contains("index") && !mt.contains("list"),
            "{repo}:{reference} is an index: {mt}"
        );
        (r.body, mt)
    }

    /// Push a cosign signature artifact for `digest` in `repo` holding
    /// `payload` signed `sig`: tagged `sha256-<hex>.sig` (cosign's default)
    /// or, with `referrer`, by digest with a `subject` (cosign's OCI 1.1
    /// mode, found through the referrers API).
    fn signature(&self, repo: &str, digest: &str, payload: &[u8], sig: &str, referrer: bool) {
        let p = self.blob(repo, payload);
        let layer = serde_json::json!({
            "mediaType": SIMPLESIGNING,
            "size": payload.len(),
            "digest": p,
            "annotations": {"dev.cosignproject.cosign/signature": sig},
        });
        let manifest = if referrer {
            let empty = self.blob(repo, b"{}");
            let (subject, mt) = self.manifest(repo, digest);
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": empty},
                "layers": [layer],
                "subject": {"mediaType": mt, "size": subject.len(), "digest": digest},
            })
        } else {
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": "", "os": "", "config": {},
                "rootfs": {"type": "layers", "diff_ids": [p]},
            }))
            .unwrap();
            let c = self.blob(repo, &config);
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": c},
                "layers": [layer],
            })
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let reference = if referrer {
            format!("sha256:{}", sha256_hex(&bytes))
        } else {
            format!("{}.sig", digest.replace(':', "-"))
        };
        self.put_manifest(repo, &reference, OCI_MANIFEST, &bytes);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Names under the store's layers/, images/ and objects/ (what a refused
/// sync must not change).
fn store_snapshot(agent: &Agent) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["layers", "images", "objects"] {
        let d = agent.store.join(dir);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            if dir == "objects" && e.path().is_dir() {
                for o in std::fs::read_dir(e.path()).unwrap() {
                    out.push(format!(
                        "{name}/{}",
                        o.unwrap().file_name().to_string_lossy()
                    ));
                }
            } else {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

fn assert_refused(agent: &Agent, reg: &Registry, image: &str, why: &str) {
    let before = store_snapshot(agent);
    let out = agent.try_sync(&reg.url, &[image]);
    assert_eq!(
        out.status.code(),
        Some(UNTRUSTED),
        "{image} ({why}) was not refused as untrusted:\n{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("not trusted") && stderr(&out).contains(why),
        "{image}: the error does not say {why:?}:\n{}",
        stderr(&out)
    );
    assert_eq!(
        store_snapshot(agent),
        before,
        "{image}: a refused sync changed the store"
    );
    let v = agent.verify();
    assert!(
        v.status.success(),
        "verify after refusing {image}: {}",
        stderr(&v)
    );
    let st = agent.status_json();
    let o = st["last_sync"]["images"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["image"] == image))
        .unwrap_or_else(|| panic!("status --json does not name {image}: {st}"));
    assert_eq!(o["exit_code"], UNTRUSTED, "{o}");
}

fn trusting_agent(key: &Path) -> Agent {
    let mut a = Agent::new(TOKEN);
    a.sync_args.push("--trust-key".into());
    a.sync_args
        .push(key.with_file_name("cosign.pub").display().to_string());
    a
}

fn checkout_matches(agent: &Agent, tag: &str) {
    fixture::assert_checkout_matches_umoci(agent, &test_repo(tag), &test_images().oci_dir, tag);
}

#[test]
fn only_images_signed_with_the_trusted_key_are_applied() {
    let reg = registry_with_test_images(CONFIG, &["tiny:v1", "tiny:v2"]);
    let publisher = Publisher::new(&reg);
    let keys = tempfile::tempdir().unwrap();
    let key = keygen(&keys.path().join("trusted"));
    let other_key = keygen(&keys.path().join("other"));
    let repo = "test/tiny";
    let docker_ref = format!("{}/{repo}", reg.host);
    let d1 = format!("sha256:{}", sha256_hex(&publisher.manifest(repo, "v1").0));
    let d2 = format!("sha256:{}", sha256_hex(&publisher.manifest(repo, "v2").0));
    let (v1, v2) = (test_repo("tiny:v1"), test_repo("tiny:v2"));

    // v1 signed (cosign -a tag=v1), found through the referrers API only:
    // there is no sha256-<hex>.sig tag for it.
    let (payload, sig) = sign(&key, &docker_ref, &d1, &["tag=v1"]);
    publisher.signature(repo, &d1, &payload, &sig, true);
    let agent = trusting_agent(&key);
    let out = agent.sync(&reg.url, &[&v1]);
    assert!(
        stderr(&out).contains("signature verified"),
        "{}",
        stderr(&out)
    );
    checkout_matches(&agent, "tiny:v1");

    // v2 unsigned.
    assert_refused(&agent, &reg, &v2, "no signature");
    // Signed with another key.
    let (payload, sig) = sign(&other_key, &docker_ref, &d2, &["tag=v2"]);
    publisher.signature(repo, &d2, &payload, &sig, false);
    assert_refused(&agent, &reg, &v2, "verifies with the trusted key");
    // Tampered payload (a byte of the signed text changed after signing;
    // the artifact names the tampered blob's digest).
    let (payload, sig) = sign(&key, &docker_ref, &d2, &["tag=v2"]);
    let mut tampered = payload.clone();
    let at = tampered.len() - 4;
    tampered[at] ^= 1;
    publisher.signature(repo, &d2, &tampered, &sig, false);
    assert_refused(&agent, &reg, &v2, "verifies with the trusted key");
    // Tampered signature.
    let mut raw = b64_decode(&sig);
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    publisher.signature(repo, &d2, &payload, &b64(&raw), false);
    assert_refused(&agent, &reg, &v2, "verifies with the trusted key");
    // A valid signature of another manifest (v1's) under v2's signature tag.
    let (payload1, sig1) = sign(&key, &docker_ref, &d1, &["tag=v2"]);
    publisher.signature(repo, &d2, &payload1, &sig1, false);
    assert_refused(&agent, &reg, &v2, "is for manifest");
    // Another repository.
    let (p, s) = sign(&key, &format!("{}/test/other", reg.host), &d2, &["tag=v2"]);
    publisher.signature(repo, &d2, &p, &s, false);
    assert_refused(&agent, &reg, &v2, "is for repository");
    // Signed without naming the tag: refused by tag, accepted by digest.
    let (p, s) = sign(&key, &docker_ref, &d2, &[]);
    publisher.signature(repo, &d2, &p, &s, false);
    assert_refused(&agent, &reg, &v2, "names no tag");
    checkout_matches(&agent, "tiny:v1");
    let by_digest = format!("{repo}@{d2}");
    agent.sync(&reg.url, &[&by_digest]);

    // An oversized signature artifact (over the agent's 256 KiB bound for
    // one): refused without reading it all.
    publisher.signature(repo, &d2, &p, &"A".repeat(300 * 1024), false);
    assert_refused(&agent, &reg, &v2, "larger than");

    // Properly signed (cosign's sha256-<hex>.sig tag, -a tag=v2): synced.
    let (payload, sig) = sign(&key, &docker_ref, &d2, &["tag=v2"]);
    publisher.signature(repo, &d2, &payload, &sig, false);
    let out = agent.sync(&reg.url, &[&v2, &v1]);
    assert!(
        stderr(&out).contains("signature verified"),
        "{}",
        stderr(&out)
    );
    checkout_matches(&agent, "tiny:v2");
    assert_eq!(agent.status_json()["last_sync"]["exit_code"], 0);

    // Replay: the registry serves v1's (validly signed, tag=v1) manifest as
    // v2. The agent holding v2 refuses it and keeps what it holds.
    let (m1, mt1) = publisher.manifest(repo, "v1");
    publisher.put_manifest(repo, "v2", &mt1, &m1);
    assert_refused(&agent, &reg, &v2, "is for tag \"v1\", not \"v2\"");
    checkout_matches(&agent, "tiny:v2");
    checkout_matches(&agent, "tiny:v1");
    // A fresh device refuses it too and stores nothing.
    let fresh = trusting_agent(&key);
    assert_refused(&fresh, &reg, &v2, "is for tag \"v1\", not \"v2\"");
    assert!(
        store_snapshot(&fresh)
            .iter()
            .all(|n| !n.starts_with("layers/")),
        "a refused image left layers: {:?}",
        store_snapshot(&fresh)
    );
    // Without a trust key nothing is checked (behaviour unchanged).
    let plain = Agent::new(TOKEN);
    plain.sync(&reg.url, &[&v2]);
    fixture::assert_checkout_matches_umoci(&plain, &v2, &test_images().oci_dir, "tiny:v1");

    // A bad key file is a usage error (2), not a refusal.
    let bad = keys.path().join("bad.pub");
    std::fs::write(
        &bad,
        "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let mut a = Agent::new(TOKEN);
    a.sync_args = vec!["--trust-key".into(), bad.display().to_string()];
    let out = a.try_sync(&reg.url, &[&v1]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("trust key"), "{}", stderr(&out));
}

/// Devices read manifests, blobs and referrers of their repositories with
/// their token, and nothing else of the OCI API.
#[test]
fn devices_read_signatures_with_their_token() {
    let reg = Registry::start(Some(CONFIG));
    let publisher = Publisher::new(&reg);
    let blob = publisher.blob("test/x", b"hello");
    let other = publisher.blob("other/x", b"hello");
    assert_eq!(blob, other);
    let get = |method: &str, path: &str, auth: &str| {
        request(reg.addr(), method, path, &[("Authorization", auth)], b"").status
    };
    let dev = format!("Bearer {TOKEN}");
    assert_eq!(get("GET", &format!("/v2/test/x/blobs/{blob}"), &dev), 200);
    assert_eq!(get("HEAD", &format!("/v2/test/x/blobs/{blob}"), &dev), 200);
    assert_eq!(
        get("GET", &format!("/v2/test/x/referrers/{blob}"), &dev),
        200
    );
    assert_eq!(get("GET", "/v2/test/x/manifests/nope", &dev), 404);
    // Not its repository, not a read, not a known token, not these routes.
    assert_eq!(get("GET", &format!("/v2/other/x/blobs/{blob}"), &dev), 401);
    assert_eq!(
        get("DELETE", &format!("/v2/test/x/blobs/{blob}"), &dev),
        401
    );
    assert_eq!(get("POST", "/v2/test/x/blobs/uploads/", &dev), 401);
    assert_eq!(
        get("GET", &format!("/v2/test/x/blobs/{blob}"), "Bearer nope"),
        401
    );
    assert_eq!(get("GET", "/v2/_catalog", &dev), 401);
    assert_eq!(get("GET", "/v2/test/x/tags/list", &dev), 401);
}
