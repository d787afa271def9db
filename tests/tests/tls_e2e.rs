//! HTTPS end to end: a registry serving `[tls]` with a certificate signed by
//! a CA made here, skopeo pushing and pulling with and without that CA, and
//! the real agent syncing over https with and without `--ca-file`.
//! The oracles are skopeo (Go's TLS stack and its byte-for-byte copies) and
//! the agent's exit codes.

use layerlink_tests::http::request_declaring;
use layerlink_tests::pki::Pki;
use layerlink_tests::{run, sha256_file, test_images, Agent, OciLayout, Registry};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PUBLISHER: (&str, &str) = ("ci", "tls-push-secret");
const TOKEN: &str = "tok-tls-device-0123456789";

fn skopeo(args: &[&str]) -> Output {
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy").args(args);
    run(&mut cmd)
}

fn creds() -> String {
    format!("{}:{}", PUBLISHER.0, PUBLISHER.1)
}

/// A registry config serving HTTPS with `pki`, with a publisher and one
/// device.
fn registry_config(pki: &Pki) -> String {
    format!(
        r#"
[[publishers]]
user = "{}"
password = "{}"

[[devices]]
id = "dev-tls"
token = "{TOKEN}"
repositories = ["test/*"]

[tls]
cert = "{}"
key = "{}"
"#,
        PUBLISHER.0,
        PUBLISHER.1,
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    )
}

fn start(pki: &Pki) -> Registry {
    let reg = Registry::start(Some(&registry_config(pki)));
    assert!(
        reg.url.starts_with("https://127.0.0.1:"),
        "a registry with [tls] must announce https, got {}",
        reg.url
    );
    reg
}

/// Push `tag` of the test images to `reg` as `test/<tag>` over https with
/// the CA in a cert dir (verification on).
fn push_with_ca(pki: &Pki, reg: &Registry, tag: &str) -> Output {
    let images = test_images();
    skopeo(&[
        "copy",
        "--dest-tls-verify=true",
        "--dest-cert-dir",
        pki.path("certs.d").to_str().unwrap(),
        "--dest-creds",
        &creds(),
        &format!("oci:{}:{tag}", images.oci_dir.display()),
        &format!("docker://{}/test/{tag}", reg.host),
    ])
}

fn assert_ok(what: &str, out: &Output, reg: &Registry) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n--- registry log\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        reg.log()
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn skopeo_round_trip_over_https_with_the_ca_is_byte_identical() {
    let pki = Pki::new();
    let reg = start(&pki);
    for tag in ["tiny:v1", "tiny:v2"] {
        assert_ok(
            "skopeo push over https",
            &push_with_ca(&pki, &reg, tag),
            &reg,
        );
    }

    let out_dir = tempfile::tempdir().unwrap();
    let layout_dir = out_dir.path().join("oci");
    let pulled = skopeo(&[
        "copy",
        "--src-tls-verify=true",
        "--src-cert-dir",
        pki.path("certs.d").to_str().unwrap(),
        "--src-creds",
        &creds(),
        &format!("docker://{}/test/tiny:v2", reg.host),
        &format!("oci:{}:tiny:v2", layout_dir.display()),
    ]);
    assert_ok("skopeo pull over https", &pulled, &reg);

    let src = test_images().layout();
    let dst = OciLayout::open(&layout_dir);
    assert_eq!(
        dst.manifest_bytes("tiny:v2"),
        src.manifest_bytes("tiny:v2"),
        "the manifest came back changed"
    );
    for layer in src.layers("tiny:v2") {
        assert_eq!(
            sha256_file(&dst.blob_path(&layer.digest)).unwrap(),
            layer.digest.trim_start_matches("sha256:"),
            "layer {} came back changed",
            layer.digest
        );
    }
    // The store really ingested what came over TLS.
    assert_eq!(reg.stat("manifests"), 2);
    assert!(reg.stat("layers") >= 2, "{}", reg.stats());
}

#[test]
fn clients_without_the_ca_are_refused() {
    let pki = Pki::new();
    let reg = start(&pki);
    let images = test_images();

    // skopeo verifying against the system roots only: Go's TLS refuses the
    // certificate, nothing is pushed.
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=true",
        "--dest-creds",
        &creds(),
        &format!("oci:{}:tiny:v1", images.oci_dir.display()),
        &format!("docker://{}/test/tiny:v1", reg.host),
    ]);
    assert!(!out.status.success(), "push without the CA succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("certificate") || err.contains("x509"),
        "push without the CA failed, but not on the certificate:\n{err}"
    );
    assert_eq!(reg.stat("manifests"), 0, "{}", reg.stats());
    assert_eq!(reg.stat("blobs"), 0, "{}", reg.stats());

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = request_declaring(reg.addr(), "GET", "/v2/", &[], 0, b"");
    assert!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP on the TLS port was answered 200: {plain:?}"
    );

    // The server is still fine for clients that trust it.
    assert_ok(
        "skopeo push with the CA after refused clients",
        &push_with_ca(&pki, &reg, "tiny:v1"),
        &reg,
    );
    assert_eq!(reg.stat("manifests"), 1);
}

/// The agent's sync command over https: with `--ca-file` it syncs; without
/// it (or with another CA) the certificate is refused (exit 3, the message
/// names the certificate) and the registry never hears from the device.
#[test]
fn agent_syncs_over_https_only_with_the_ca_file() {
    let pki = Pki::new();
    let reg = start(&pki);
    assert_ok("skopeo push", &push_with_ca(&pki, &reg, "tiny:v1"), &reg);

    let sync = |agent: &Agent, ca: Option<&Path>| {
        let mut cmd = agent.command();
        cmd.arg("sync")
            .arg("--server")
            .arg(&reg.url)
            .arg("--store")
            .arg(&agent.store)
            .arg("--token")
            .arg(&agent.token);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.arg("test/tiny:v1");
        let start = Instant::now();
        let out = run(&mut cmd);
        (out, start.elapsed())
    };

    let refused = Agent::new(TOKEN);
    let (out, took) = sync(&refused, None);
    assert_eq!(
        out.status.code(),
        Some(3),
        "sync against an unknown CA must fail as a server/network error (exit 3):\n{}",
        stderr(&out)
    );
    // The message names the cause, and a refused certificate is not
    // retried (the default retry window is minutes).
    assert!(
        stderr(&out).contains("certificate"),
        "the agent's error does not name the certificate:\n{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(
        !reg.devices().to_string().contains("dev-tls"),
        "a device that never got through TLS has a holdings record: {}",
        reg.devices()
    );

    let trusted = Agent::new(TOKEN);
    let (out, _) = sync(&trusted, Some(&pki.path("ca.pem")));
    assert!(
        out.status.success(),
        "sync with --ca-file failed ({}):\n{}\n--- registry log\n{}",
        out.status,
        stderr(&out),
        reg.log()
    );
    let status = trusted.status_json().to_string();
    assert!(status.contains("test/tiny"), "{status}");
    assert!(
        reg.devices().to_string().contains("dev-tls"),
        "the registry recorded no holdings for the device: {}",
        reg.devices()
    );

    // A CA file that is not the one that signed the server: refused too.
    let other = Pki::new();
    let (out, _) = sync(&Agent::new(TOKEN), Some(&other.path("ca.pem")));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}
