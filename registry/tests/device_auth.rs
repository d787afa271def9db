//! Device token rules on the sync API, black-box against a real
//! `layerlink-registry serve` process (RUST_LOG=debug, stderr kept):
//!
//! * a missing, wrong or malformed token is 401 on every endpoint, before
//!   the body is even read;
//! * a repository the device is not granted is 401 whether or not it
//!   exists, with byte-identical answers (no existence oracle);
//! * a device's holdings record is chosen by its token alone: another
//!   device cannot read or overwrite it;
//! * neither tokens nor publisher passwords ever reach the log.

mod serve;

use layerlink_proto::msg::{
    ArchiveRequest, HeldSet, Holdings, ImageRef, LayerState, ObjectsRequest, PlanRequest,
    PlanResponse, Platform, Report, ReportAck, CONTENT_TYPE,
};
use layerlink_proto::{Digest, ErrorBody, ErrorCode};
use serve::Served;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;

const TOKEN_A: &str = "tokA-9f2c41d7e0b34a5c8d6e7f8091a2b3c4";
const TOKEN_B: &str = "tokB-1a2b3c4d5e6f708192a3b4c5d6e7f801";
const PUBLISHER_PASSWORD: &str = "pub-pw-5e1d0c9b8a7f";

fn config() -> String {
    format!(
        r#"
[[publishers]]
user = "ci"
password = "{PUBLISHER_PASSWORD}"

[[devices]]
id = "dev-a"
token = "{TOKEN_A}"
repositories = ["edge/*"]

[[devices]]
id = "dev-b"
token = "{TOKEN_B}"
repositories = ["edge/*", "secret/*"]
"#
    )
}

struct Registry {
    served: Served,
    base: String,
    data: PathBuf,
    http: ureq::Agent,
}

impl Registry {
    fn start() -> Registry {
        let served = Served::start(Some(&config()), Some("debug"));
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        Registry {
            base: served.base.clone(),
            data: served.data.clone(),
            served,
            http,
        }
    }

    fn log(&self) -> String {
        self.served.log()
    }

    /// POST `body` to `/layerlink/v1/<endpoint>` with this Authorization.
    fn post(&self, endpoint: &str, auth: Option<&str>, body: &[u8]) -> Resp {
        let mut b = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/layerlink/v1/{endpoint}", self.base))
            .header("Content-Type", CONTENT_TYPE);
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        let resp = self
            .http
            .run(b.body(body.to_vec()).unwrap())
            .unwrap_or_else(|e| {
                panic!(
                    "POST {endpoint} (auth {auth:?}, {} byte body): {e}",
                    body.len()
                )
            });
        let status = resp.status().as_u16();
        let mut headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        headers.sort();
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut body)
            .unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    fn device_post(&self, endpoint: &str, token: &str, body: &[u8]) -> Resp {
        self.post(endpoint, Some(&format!("Bearer {token}")), body)
    }

    fn publisher_put(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        let req = ureq::http::Request::builder()
            .method(if path.contains("/blobs/uploads/") {
                "POST"
            } else {
                "PUT"
            })
            .uri(format!("{}{path}", self.base))
            .header("Authorization", basic_auth())
            .header("Content-Type", content_type)
            .body(body.to_vec())
            .unwrap();
        let resp = self.http.run(req).unwrap();
        let status = resp.status().as_u16();
        (
            status,
            resp.into_body().read_to_string().unwrap_or_default(),
        )
    }

    /// Push a one-layer image as `repo:tag`; returns (manifest digest, diff_id).
    fn push_image(&self, repo: &str, tag: &str, content: &[u8]) -> (Digest, Digest) {
        let layer = layer_tar(&[("etc/app.conf", content), ("bin/tool", b"#!/bin/sh\n")]);
        self.push_layer(repo, tag, layer)
    }

    fn devices_json(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_layerlink-registry"))
            .args(["devices", "--json", "--data"])
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn error(&self) -> ErrorBody {
        postcard::from_bytes(&self.body)
            .unwrap_or_else(|e| panic!("{} answer is not an ErrorBody: {e}", self.status))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn assert_unauthorized(&self, what: &str) {
        assert_eq!(self.status, 401, "{what}");
        assert_eq!(
            self.header("www-authenticate"),
            Some("Bearer realm=\"layerlink\""),
            "{what}"
        );
        let e = self.error();
        assert!(
            matches!(e.code, ErrorCode::Unauthorized | ErrorCode::Forbidden),
            "{what}: {e:?}"
        );
    }
}

fn basic_auth() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ci:{PUBLISHER_PASSWORD}"))
    )
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn platform() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

fn plan_body(images: &[(&str, &str)], holdings: Holdings) -> Vec<u8> {
    postcard::to_allocvec(&PlanRequest {
        platform: platform(),
        images: images
            .iter()
            .map(|(r, t)| ImageRef {
                repository: (*r).into(),
                reference: (*t).into(),
            })
            .collect(),
        holdings,
    })
    .unwrap()
}

fn empty() -> Holdings {
    Holdings::Full(HeldSet::default())
}

fn archive_body(repo: &str, manifest: Digest, layers: Vec<Digest>) -> Vec<u8> {
    postcard::to_allocvec(&ArchiveRequest {
        repository: repo.into(),
        manifest_digest: manifest,
        layers,
        metadata: true,
        holdings: empty(),
    })
    .unwrap()
}

fn objects_body(repo: &str, digests: Vec<Digest>) -> Vec<u8> {
    postcard::to_allocvec(&ObjectsRequest {
        repository: repo.into(),
        digests,
    })
    .unwrap()
}

#[test]
fn missing_wrong_or_malformed_tokens_are_401_everywhere() {
    let r = Registry::start();
    let (manifest, diff_id) = r.push_image("edge/app", "v1", b"a=1\n");
    let bodies = [
        ("plan", plan_body(&[("edge/app", "v1")], empty())),
        ("archive", archive_body("edge/app", manifest, vec![diff_id])),
        (
            "objects",
            objects_body("edge/app", vec![Digest::of(b"a=1\n")]),
        ),
        (
            "report",
            postcard::to_allocvec(&Report {
                holdings: empty(),
                images: vec![],
            })
            .unwrap(),
        ),
    ];
    let wrong_auth = [
        None,
        Some("Bearer tokA-wrong".to_owned()),
        Some(format!("Bearer {}", &TOKEN_A[..TOKEN_A.len() - 1])),
        Some(format!("Bearer {TOKEN_A}x")),
        Some(format!("Basic {TOKEN_A}")),
        Some(TOKEN_A.to_owned()),
        Some("Bearer ".to_owned()),
        // Publisher credentials are not a device token.
        Some(basic_auth()),
    ];
    for (endpoint, body) in &bodies {
        // The good token works (so the 401s below are about the token).
        let ok = r.device_post(endpoint, TOKEN_A, body);
        assert_eq!(
            ok.status,
            200,
            "{endpoint} with a good token: {:?}",
            ok.error()
        );
        for auth in &wrong_auth {
            let what = format!("{endpoint} with Authorization {auth:?}");
            let resp = r.post(endpoint, auth.as_deref(), body);
            resp.assert_unauthorized(&what);
            assert_eq!(resp.error().code, ErrorCode::Unauthorized, "{what}");
            // Garbage bodies: still 401, the token is checked first.
            let resp = r.post(endpoint, auth.as_deref(), b"\xff\xff\xff not postcard");
            resp.assert_unauthorized(&format!("{what} and a garbage body"));
        }
    }
    // Nothing was recorded for anyone but dev-a.
    let devices = r.devices_json().to_string();
    assert!(
        devices.contains("dev-a") && !devices.contains("dev-b"),
        "{devices}"
    );
}

#[test]
fn forbidden_repositories_answer_exactly_like_missing_ones() {
    let r = Registry::start();
    let (secret_manifest, secret_layer) = r.push_image("secret/app", "v1", b"key=hunter2\n");
    let (edge_manifest, edge_layer) = r.push_image("edge/app", "v1", b"a=1\n");

    // dev-b may read secret/*: the image exists and plans fine.
    let ok = r.device_post(
        "plan",
        TOKEN_B,
        &plan_body(&[("secret/app", "v1")], empty()),
    );
    assert_eq!(ok.status, 200, "{:?}", ok.error());

    // dev-a may not. Existing tag, missing tag, missing repository, and a
    // mix with a readable image: the same answer, byte for byte.
    let plan =
        |images: &[(&str, &str)]| r.device_post("plan", TOKEN_A, &plan_body(images, empty()));
    let existing = plan(&[("secret/app", "v1")]);
    existing.assert_unauthorized("plan of a forbidden, existing image");
    assert_eq!(existing.error().code, ErrorCode::Forbidden);
    assert_eq!(plan(&[("secret/app", "no-such-tag")]), existing);
    assert_eq!(
        plan(&[("secret/app", &Digest::of(b"nothing").to_string())]),
        existing
    );
    assert_eq!(plan(&[("edge/app", "v1"), ("secret/app", "v1")]), existing);
    // A repository that does not exist at all (a name of the same length):
    // only the name in the message differs.
    let missing_repo = plan(&[("secret/xyz", "v1")]);
    assert_eq!(
        (
            missing_repo.status,
            &missing_repo.headers,
            missing_repo.error().code
        ),
        (existing.status, &existing.headers, existing.error().code)
    );
    assert_eq!(
        missing_repo
            .error()
            .message
            .replace("secret/xyz", "secret/app"),
        existing.error().message
    );

    // Archive and objects: a real manifest/layer/object of the forbidden
    // image vs made-up ones.
    let archive = |m: Digest, l: Digest| {
        r.device_post("archive", TOKEN_A, &archive_body("secret/app", m, vec![l]))
    };
    let real = archive(secret_manifest, secret_layer);
    real.assert_unauthorized("archive of a forbidden image");
    assert_eq!(archive(Digest::of(b"x"), Digest::of(b"y")), real);
    // Even naming the layer of an image the device may read does not help.
    assert_eq!(archive(edge_manifest, edge_layer), real);

    let objects =
        |d: Digest| r.device_post("objects", TOKEN_A, &objects_body("secret/app", vec![d]));
    let real = objects(Digest::of(b"key=hunter2\n"));
    real.assert_unauthorized("objects of a forbidden image");
    assert_eq!(objects(Digest::of(b"not there")), real);

    // For contrast: in a repository it may read, the device does learn
    // that a tag is missing (404), which is fine.
    assert_eq!(plan(&[("edge/app", "nope")]).status, 404);
    // And the forbidden content never showed up in any answer.
    assert!(!String::from_utf8_lossy(&existing.body).contains("hunter2"));
}

#[test]
fn holdings_records_are_bound_to_the_token() {
    let r = Registry::start();
    let (_, layer) = r.push_image("edge/app", "v1", b"a=1\n");
    let held = HeldSet {
        layers: vec![layer],
        objects: vec![],
    };

    // dev-a says it holds the layer.
    let resp = r.device_post(
        "plan",
        TOKEN_A,
        &plan_body(&[("edge/app", "v1")], Holdings::Full(held.clone())),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.error());
    let plan_a: PlanResponse = postcard::from_bytes(&resp.body).unwrap();
    assert_eq!(plan_a.holdings_hash, held.hash());
    assert_eq!(plan_a.images[0].layers[0].state, LayerState::Held);

    // dev-b cannot use dev-a's record: the hash is unknown *for dev-b*.
    let resp = r.device_post(
        "plan",
        TOKEN_B,
        &plan_body(&[("edge/app", "v1")], Holdings::Hash(plan_a.holdings_hash)),
    );
    assert_eq!(resp.status, 409);
    assert_eq!(resp.error().code, ErrorCode::UnknownHoldingsSet);

    // dev-b reports an empty set; nothing in any body names a device, so
    // this can only ever touch dev-b's record.
    let resp = r.device_post(
        "report",
        TOKEN_B,
        &postcard::to_allocvec(&Report {
            holdings: empty(),
            images: vec![],
        })
        .unwrap(),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.error());
    let ack: ReportAck = postcard::from_bytes(&resp.body).unwrap();
    assert_eq!(ack.holdings_hash, HeldSet::default().hash());

    // dev-a's record is untouched: its hash still stands for its set.
    let resp = r.device_post(
        "plan",
        TOKEN_A,
        &plan_body(&[("edge/app", "v1")], Holdings::Hash(plan_a.holdings_hash)),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.error());
    let again: PlanResponse = postcard::from_bytes(&resp.body).unwrap();
    assert_eq!(again.images[0].layers[0].state, LayerState::Held);
    // And dev-b still plans the layer as needed.
    let resp = r.device_post("plan", TOKEN_B, &plan_body(&[("edge/app", "v1")], empty()));
    let plan_b: PlanResponse = postcard::from_bytes(&resp.body).unwrap();
    assert!(matches!(
        plan_b.images[0].layers[0].state,
        LayerState::Needed(_)
    ));

    let devices = r.devices_json().to_string();
    assert!(
        devices.contains("dev-a") && devices.contains("dev-b"),
        "{devices}"
    );
}

#[test]
fn tokens_and_passwords_never_reach_the_log() {
    let r = Registry::start();
    let (manifest, layer) = r.push_image("edge/app", "v1", b"a=1\n");
    for token in [TOKEN_A, TOKEN_B] {
        let resp = r.device_post("plan", token, &plan_body(&[("edge/app", "v1")], empty()));
        assert_eq!(resp.status, 200);
        let resp = r.device_post(
            "archive",
            token,
            &archive_body("edge/app", manifest, vec![layer]),
        );
        assert_eq!(resp.status, 200);
        assert!(!resp.body.is_empty());
    }
    // Failures log too: a forbidden repository, wrong tokens near the real
    // ones, and a bad publisher password.
    r.device_post("plan", TOKEN_A, &plan_body(&[("secret/x", "v1")], empty()));
    r.post("plan", Some(&format!("Bearer {TOKEN_A}-nope")), b"");
    r.post("archive", Some(&format!("Bearer {TOKEN_B}")), b"garbage");
    let bad_pw = ureq::http::Request::builder()
        .uri(format!("{}/v2/", r.base))
        .header("Authorization", basic_auth().replace('=', "A"))
        .body(())
        .unwrap();
    assert_eq!(r.http.run(bad_pw).unwrap().status().as_u16(), 401);

    // Give the writer a moment, then look.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = r.log();
    assert!(
        log.contains("/layerlink/v1/plan") && log.contains("DEBUG"),
        "the debug log does not show the requests, so it proves nothing:\n{log}"
    );
    let basic = basic_auth();
    let secrets = [
        TOKEN_A,
        TOKEN_B,
        &TOKEN_A[..16],
        &TOKEN_B[..16],
        PUBLISHER_PASSWORD,
        basic.trim_start_matches("Basic "),
    ];
    for s in secrets {
        assert!(
            !log.contains(s),
            "the log contains the secret {s:?}:\n{log}"
        );
    }
}

/// A layer tar with its parent directories listed (so layer-base may use
/// it as a base): `etc/`, `bin/`, then the files.
fn plain_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, dir, &[][..]).unwrap();
    }
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

impl Registry {
    /// Push a one-layer image made of `layer`; returns (manifest, diff_id).
    fn push_layer(&self, repo: &str, tag: &str, layer: Vec<u8>) -> (Digest, Digest) {
        let diff_id = Digest::of(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        }))
        .unwrap();
        for blob in [&layer, &config] {
            let d = Digest::of(blob);
            let (status, body) = self.publisher_put(
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                "application/octet-stream",
                blob,
            );
            assert_eq!(status, 201, "blob push: {body}");
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": diff_id.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        let (status, body) = self.publisher_put(
            &format!("/v2/{repo}/manifests/{tag}"),
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        );
        assert_eq!(status, 201, "manifest push: {body}");
        (Digest::of(&manifest), diff_id)
    }

    /// An archive request asking for the `layer-base` feature.
    fn archive_with_base(&self, token: &str, body: &[u8]) -> Resp {
        let req = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}/layerlink/v1/archive", self.base))
            .header("Content-Type", CONTENT_TYPE)
            .header("Authorization", format!("Bearer {token}"))
            .header(layerlink_proto::archive::FEATURES_HEADER, "layer-base")
            .body(body.to_vec())
            .unwrap();
        let resp = self.http.run(req).unwrap();
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut body)
            .unwrap();
        Resp {
            status,
            headers: Vec::new(),
            body,
        }
    }
}

/// Issue 15: the object store and layer index are shared by every
/// repository, so a digest must belong to something the device may read.
/// Every sync endpoint is probed by a device granted `edge/*` with
/// identifiers taken from `secret/*`; each answers as if they did not
/// exist. dev-b, granted both, shows each probe would have revealed
/// something without the rule.
#[test]
fn identifiers_from_another_repository_are_treated_as_unknown() {
    let r = Registry::start();
    let shared: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("bin/tool{i}"),
                format!("#!/bin/sh\necho {i}\n").into_bytes(),
            )
        })
        .collect();
    let mut secret_files: Vec<(&str, &[u8])> = shared
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    secret_files.push(("etc/secret.key", b"key=hunter2\n"));
    let mut edge_files: Vec<(&str, &[u8])> = shared
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    edge_files.push(("etc/app.conf", b"a=1\n"));
    let (_, secret_layer) = r.push_layer("secret/app", "v1", plain_layer(&secret_files));
    let (edge_manifest, edge_layer) = r.push_layer("edge/app", "v1", plain_layer(&edge_files));
    let secret_object = Digest::of(b"key=hunter2\n");
    let shared_object = Digest::of(&shared[0].1);

    // /objects: an object of the secret repository named through edge/app
    // is refused exactly like a digest nobody has.
    let objects = |token: &str, d: Digest| {
        r.device_post("objects", token, &objects_body("edge/app", vec![d]))
    };
    let leaked = objects(TOKEN_A, secret_object);
    leaked.assert_unauthorized("objects: a secret object through edge/app");
    assert_eq!(leaked.error().code, ErrorCode::Forbidden);
    let unknown = objects(TOKEN_A, Digest::of(b"stored nowhere"));
    assert_eq!(
        (leaked.status, &leaked.headers),
        (unknown.status, &unknown.headers)
    );
    assert_eq!(
        leaked
            .error()
            .message
            .replace(&secret_object.to_string(), "D"),
        unknown
            .error()
            .message
            .replace(&Digest::of(b"stored nowhere").to_string(), "D"),
    );
    assert!(!String::from_utf8_lossy(&leaked.body).contains("hunter2"));
    // Even dev-b, who may read secret/*, must name the right repository.
    assert_eq!(objects(TOKEN_B, secret_object).status, 401);
    let through_secret = r.device_post(
        "objects",
        TOKEN_B,
        &objects_body("secret/app", vec![secret_object]),
    );
    assert_eq!(through_secret.status, 200, "{:?}", through_secret.error());
    // An object edge/app does contain is served, also when secret/app has it too.
    assert_eq!(objects(TOKEN_A, shared_object).status, 200);

    // /archive with layer-base: claiming to hold the secret layer must not
    // make it a base (its removed paths and unsent entries would describe
    // it), nor make its objects count as held.
    let claim = HeldSet {
        layers: vec![secret_layer],
        objects: vec![],
    };
    let archive = |token: &str, holdings: Holdings| {
        let body = postcard::to_allocvec(&ArchiveRequest {
            repository: "edge/app".into(),
            manifest_digest: edge_manifest,
            layers: vec![edge_layer],
            metadata: false,
            holdings,
        })
        .unwrap();
        let resp = r.archive_with_base(token, &body);
        assert_eq!(resp.status, 200);
        resp.body
    };
    let plain_a = archive(TOKEN_A, empty());
    let claimed_a = archive(TOKEN_A, Holdings::Full(claim.clone()));
    assert!(
        claimed_a == plain_a,
        "dev-a's archive changed because it claimed a layer of secret/app ({} vs {} bytes)",
        claimed_a.len(),
        plain_a.len()
    );
    // dev-b may read secret/app: the same claim is used (smaller archive),
    // so the comparison above can fail.
    let plain_b = archive(TOKEN_B, empty());
    let claimed_b = archive(TOKEN_B, Holdings::Full(claim.clone()));
    assert!(plain_b == plain_a, "two devices got different archives");
    assert!(
        claimed_b.len() < plain_b.len(),
        "dev-b's held layer was not used: {} vs {} bytes",
        claimed_b.len(),
        plain_b.len()
    );

    // /plan: the costs do not change with the claim either.
    let plan = |token: &str, holdings: Holdings| -> PlanResponse {
        let resp = r.device_post("plan", token, &plan_body(&[("edge/app", "v1")], holdings));
        assert_eq!(resp.status, 200, "{:?}", resp.error());
        postcard::from_bytes(&resp.body).unwrap()
    };
    let costs = |p: &PlanResponse| format!("{:?}", p.images[0].layers);
    assert_eq!(
        costs(&plan(TOKEN_A, Holdings::Full(claim.clone()))),
        costs(&plan(TOKEN_A, empty()))
    );
    assert_ne!(
        costs(&plan(TOKEN_B, Holdings::Full(claim.clone()))),
        costs(&plan(TOKEN_B, empty())),
        "dev-b's claim should change the plan, or the check above proves nothing"
    );

    // /archive naming the secret layer through the edge manifest: refused
    // with the same words as a layer that exists nowhere.
    let bad_layer = |l: Digest| {
        r.device_post(
            "archive",
            TOKEN_A,
            &archive_body("edge/app", edge_manifest, vec![l]),
        )
    };
    let a = bad_layer(secret_layer);
    let b = bad_layer(Digest::of(b"no layer"));
    assert_eq!(a.status, 400);
    assert_eq!(
        a.error().message.replace(&secret_layer.to_string(), "L"),
        b.error()
            .message
            .replace(&Digest::of(b"no layer").to_string(), "L")
    );
}

/// A device reads the OCI API (`GET`/`HEAD` of manifests, blobs and
/// referrers: its agent checks cosign signatures there) only in the
/// repositories it may sync; elsewhere the answer is the publisher-auth 401,
/// the same whether the manifest exists or not.
#[test]
fn devices_read_the_oci_api_only_where_granted() {
    let r = Registry::start();
    let (app, _) = r.push_image("edge/app", "v1", b"a=1\n");
    let (secret, _) = r.push_image("secret/x", "v1", b"s=1\n");
    let get = |method: &str, path: &str, token: &str| {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", r.base))
            .header("Authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let resp = r.http.run(req).unwrap();
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut body)
            .unwrap();
        (status, body)
    };
    assert_eq!(
        get("GET", &format!("/v2/edge/app/manifests/{app}"), TOKEN_A).0,
        200
    );
    assert_eq!(get("HEAD", "/v2/edge/app/manifests/v1", TOKEN_A).0, 200);
    assert_eq!(
        get("GET", &format!("/v2/edge/app/referrers/{app}"), TOKEN_A).0,
        200
    );
    assert_eq!(
        get("GET", &format!("/v2/secret/x/manifests/{secret}"), TOKEN_B).0,
        200
    );
    let forbidden = get("GET", &format!("/v2/secret/x/manifests/{secret}"), TOKEN_A);
    let unknown = get(
        "GET",
        &format!("/v2/secret/x/manifests/{}", Digest::of(b"none")),
        TOKEN_A,
    );
    assert_eq!(forbidden.0, 401);
    assert_eq!(
        forbidden, unknown,
        "a forbidden manifest answers like an unknown one"
    );
    assert_eq!(
        get("GET", &format!("/v2/secret/x/referrers/{secret}"), TOKEN_A).0,
        401
    );
    // Reads only, and not the listings.
    assert_eq!(
        get("DELETE", &format!("/v2/edge/app/manifests/{app}"), TOKEN_A).0,
        401
    );
    assert_eq!(get("GET", "/v2/edge/app/tags/list", TOKEN_A).0, 401);
    assert_eq!(get("GET", "/v2/_catalog", TOKEN_B).0, 401);
}
