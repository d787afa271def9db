//! The trust policy: with a public key configured (`--trust-key`,
//! `trust_key`), an image is applied only when its platform manifest
//! carries a valid signature in the cosign key-pair format, and only the
//! manifest, config and diff_ids that signature covers are used.
//!
//! ```text
//! plan (manifest digest M, config digest C, diff_ids)
//!  │ GET /v2/<repo>/manifests/sha256-<hex M>.sig      (cosign's tag convention)
//!  │ else GET /v2/<repo>/referrers/M → each listed manifest
//!  │   each layer of mediaType application/vnd.dev.cosign.simplesigning.v1+json:
//!  │   GET its blob (the payload), ECDSA P-256 SHA-256 check of the
//!  │   annotation dev.cosignproject.cosign/signature (base64 DER) with the key,
//!  │   then the payload: type, docker-manifest-digest = M, docker-reference
//!  │   names <repo>, and for a tag request the tag (`cosign sign -a tag=T`)
//!  │ GET /v2/<repo>/manifests/M  → sha256 = M, config = C, layer count
//!  │ GET /v2/<repo>/blobs/C      → sha256 = C, rootfs.diff_ids = the plan's
//!  ▼ Verified { manifest, config, diff_ids }   (nothing fetched or committed before)
//! ```
//!
//! A held record of the same manifest supplies manifest and config instead
//! of the two last GETs. Any failure is [`Error::Untrusted`] (exit 11).
//! ECDSA is ring's (already linked for TLS); PEM, base64 and the fixed P-256
//! SubjectPublicKeyInfo prefix are read here (no ASN.1 crate: the key must
//! be exactly the 91-byte form `cosign generate-key-pair` and every X.509
//! library write; ring parses the DER signature itself).

use crate::client::Remote;
use crate::error::{Error, Result};
use crate::json::{self, Value};
use layerlink_proto::limits::MAX_METADATA_BYTES;
use layerlink_proto::msg::{ImagePlan, ImageRef};
use layerlink_proto::Digest;

/// Media type of a cosign signature payload layer.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign payload.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

const ACCEPT_MANIFEST: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const MAX_SIGNATURE_MANIFEST: u64 = 256 * 1024;
const MAX_PAYLOAD: u64 = 64 * 1024;
/// Signature manifests (tag + referrers) and payloads looked at, at most.
const MAX_CANDIDATES: usize = 16;

/// DER of a P-256 SubjectPublicKeyInfo up to the uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING 0x00 0x04… }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A trusted ECDSA P-256 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The uncompressed point (`0x04 ‖ X ‖ Y`).
    point: Vec<u8>,
}

impl Policy {
    /// The key of a PEM `PUBLIC KEY` block (cosign.pub).
    pub fn from_pem(text: &[u8]) -> std::result::Result<Policy, String> {
        let der = pem_decode(text, "PUBLIC KEY")?;
        Policy::from_spki_der(&der)
    }

    /// The key of a DER SubjectPublicKeyInfo (P-256, uncompressed point).
    pub fn from_spki_der(der: &[u8]) -> std::result::Result<Policy, String> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(Policy {
                point: point.to_vec(),
            }),
            _ => Err("not an ECDSA P-256 public key (SubjectPublicKeyInfo, uncompressed)".into()),
        }
    }

    /// Whether `sig` (ASN.1 DER ECDSA) signs `payload` (SHA-256) with this key.
    pub fn verify(&self, payload: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(payload, sig)
        .is_ok()
    }
}

/// The body of the first `-----BEGIN <label>-----` block of `text`
/// (armor lines compared whole: no substring search is linked in).
pub fn pem_decode(text: &[u8], label: &str) -> std::result::Result<Vec<u8>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the key file is not text")?;
    let armor = |l: &str, kind: &str| {
        l.strip_prefix("-----")
            .and_then(|l| l.strip_prefix(kind))
            .and_then(|l| l.strip_suffix("-----"))
            == Some(label)
    };
    let mut lines = text.lines().map(str::trim);
    if !lines.any(|l| armor(l, "BEGIN ")) {
        return Err(format!("no -----BEGIN {label}----- line"));
    }
    let mut b64 = String::new();
    for l in lines {
        if armor(l, "END ") {
            return base64_decode(&b64).ok_or_else(|| format!("bad base64 in the {label} block"));
        }
        b64.push_str(l);
    }
    Err(format!("no -----END {label}----- line"))
}

/// Strict standard base64 (`+/`, `=` padding, no whitespace, unused bits
/// zero): one text per byte string.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return None;
    }
    let quads = b.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, chunk) in b.chunks(4).enumerate() {
        let mut v = [0u8; 4];
        let mut pad = 0;
        for (j, &c) in chunk.iter().enumerate() {
            v[j] = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if i + 1 == quads && j >= 2 => {
                    pad += 1;
                    continue;
                }
                _ => return None,
            };
            if pad > 0 {
                return None;
            }
        }
        if (pad == 1 && v[2] & 3 != 0) || (pad == 2 && v[1] & 15 != 0) {
            return None;
        }
        let n =
            u32::from(v[0]) << 18 | u32::from(v[1]) << 12 | u32::from(v[2]) << 6 | u32::from(v[3]);
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// The repository and tag a `docker-reference` names: the registry host
/// (a first component with `.` or `:`, or `localhost`) and a `@digest` are
/// dropped; `:tag` after the last `/` is the tag.
pub fn parse_docker_reference(r: &str) -> (&str, Option<&str>) {
    let r = r.split('@').next().unwrap_or("");
    let r = match r.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => r,
    };
    let slash = r.rfind('/').map_or(0, |i| i + 1);
    match r[slash..].find(':') {
        Some(c) => (&r[..slash + c], Some(&r[slash + c + 1..])),
        None => (r, None),
    }
}

/// Check a signed payload: its type, that it names `manifest`, repository
/// `repo` and, when the image was asked by tag, that tag (`optional.tag`, as
/// `cosign sign -a tag=T` writes it, or a tag in `docker-reference`).
pub fn check_payload(
    payload: &[u8],
    repo: &str,
    tag: Option<&str>,
    manifest: &Digest,
) -> std::result::Result<(), String> {
    let v = json::parse(payload).map_err(|e| format!("signed payload is not JSON: {e}"))?;
    let critical = v.get("critical");
    let field = |path: &[&str]| {
        path.iter()
            .try_fold(critical?, |v, k| v.get(k))
            .and_then(Value::as_str)
    };
    if field(&["type"]) != Some(SIGNATURE_TYPE) {
        return Err(format!(
            "signed payload's critical.type is not {SIGNATURE_TYPE:?}"
        ));
    }
    let named = field(&["image", "docker-manifest-digest"]).unwrap_or("");
    if Digest::parse(named).ok().as_ref() != Some(manifest) {
        return Err(format!(
            "the signature is for manifest {named:?}, not {manifest}"
        ));
    }
    let reference = field(&["identity", "docker-reference"]).unwrap_or("");
    let (signed_repo, ref_tag) = parse_docker_reference(reference);
    if signed_repo != repo {
        return Err(format!(
            "the signature is for repository {reference:?}, not {repo}"
        ));
    }
    if let Some(tag) = tag {
        let annotated = v
            .get("optional")
            .and_then(|o| o.get("tag"))
            .and_then(Value::as_str);
        if let Some(t) = ref_tag.filter(|t| *t != tag) {
            return Err(format!("the signature is for tag {t:?}, not {tag:?}"));
        }
        match annotated {
            Some(t) if t == tag => {}
            None if ref_tag == Some(tag) => {}
            Some(t) => return Err(format!("the signature is for tag {t:?}, not {tag:?}")),
            None => {
                return Err(format!(
                    "the signature names no tag, and {tag:?} was asked (sign with -a tag={tag}, or sync by digest)"
                ))
            }
        }
    }
    Ok(())
}

/// The config's `rootfs.diff_ids`; every entry must be a digest.
pub fn config_diff_ids(config: &[u8]) -> std::result::Result<Vec<Digest>, String> {
    let v = json::parse(config).map_err(|e| format!("config is not JSON: {e}"))?;
    let ids = v
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_arr)
        .ok_or("config has no rootfs.diff_ids")?;
    ids.iter()
        .map(|d| {
            d.as_str()
                .and_then(|s| Digest::parse(s).ok())
                .ok_or_else(|| "config has a diff_id that is not a digest".to_string())
        })
        .collect()
}

/// Check manifest bytes against the plan: digest, config digest, layer count.
pub fn check_manifest(manifest: &[u8], ip: &ImagePlan) -> std::result::Result<(), String> {
    if Digest::of(manifest) != ip.manifest_digest {
        return Err(format!(
            "manifest bytes do not hash to {}",
            ip.manifest_digest
        ));
    }
    let v = json::parse(manifest).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let config = v
        .get("config")
        .and_then(|c| c.get("digest"))
        .and_then(Value::as_str);
    if config.and_then(|c| Digest::parse(c).ok()) != Some(ip.config_digest) {
        return Err(format!(
            "the signed manifest's config is not the plan's {}",
            ip.config_digest
        ));
    }
    let layers = v
        .get("layers")
        .and_then(Value::as_arr)
        .map_or(0, <[Value]>::len);
    if layers != ip.layers.len() {
        return Err(format!(
            "the signed manifest has {layers} layers, the plan {}",
            ip.layers.len()
        ));
    }
    Ok(())
}

/// What a verified signature covers: the manifest and config bytes (their
/// digests checked against the plan) and the config's diff_ids (equal to
/// the plan's layers, base first).
#[derive(Debug, Clone)]
pub struct Verified {
    /// The platform manifest, as signed.
    pub manifest: Vec<u8>,
    /// The image config the manifest names.
    pub config: Vec<u8>,
    /// The config's `rootfs.diff_ids`: what each layer's tar must hash to.
    pub diff_ids: Vec<Digest>,
}

fn untrusted(want: &ImageRef, m: impl std::fmt::Display) -> Error {
    Error::Untrusted(format!("{}:{}: {m}", want.repository, want.reference))
}

/// Verify `ip` (the plan for `want`) under `policy`; `held` is the manifest
/// and config of a held record of the same manifest digest, if any.
/// Network errors are returned as they are (a transient one retries the
/// run); everything else is [`Error::Untrusted`].
pub fn verify_image(
    policy: &Policy,
    remote: &mut dyn Remote,
    want: &ImageRef,
    ip: &ImagePlan,
    held: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Verified> {
    let repo = &want.repository;
    let digest = ip.manifest_digest;
    let tag = (!want.reference.contains(':')).then_some(want.reference.as_str());
    let mut checked = 0usize;
    let mut found = 0usize;
    let mut why: Option<String> = None;
    let sig_tag = digest.to_string().replace(':', "-") + ".sig";
    let mut manifests: Vec<Vec<u8>> = Vec::new();
    if let Some(m) = remote.oci_get(
        &format!("/v2/{repo}/manifests/{sig_tag}"),
        ACCEPT_MANIFEST,
        MAX_SIGNATURE_MANIFEST,
    )? {
        manifests.push(m);
    }
    let mut referrers: Option<Vec<Digest>> = None;
    let mut i = 0;
    loop {
        if i == manifests.len() {
            // The tag gave nothing valid: ask the referrers API (once).
            if referrers.is_some() {
                break;
            }
            let list = remote
                .oci_get(
                    &format!("/v2/{repo}/referrers/{digest}"),
                    "application/vnd.oci.image.index.v1+json",
                    MAX_SIGNATURE_MANIFEST,
                )?
                .and_then(|b| json::parse(&b).ok())
                .map(|v| {
                    v.get("manifests")
                        .and_then(Value::as_arr)
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|d| d.get("digest")?.as_str())
                        .filter_map(|d| Digest::parse(d).ok())
                        .take(MAX_CANDIDATES)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for d in &list {
                let m = remote.oci_get(
                    &format!("/v2/{repo}/manifests/{d}"),
                    ACCEPT_MANIFEST,
                    MAX_SIGNATURE_MANIFEST,
                )?;
                if let Some(m) = m.filter(|m| Digest::of(m) == *d) {
                    manifests.push(m);
                }
            }
            referrers = Some(list);
            if i == manifests.len() {
                break;
            }
        }
        let sig_manifest = json::parse(&manifests[i]).unwrap_or(Value::Null);
        i += 1;
        for layer in sig_manifest
            .get("layers")
            .and_then(Value::as_arr)
            .unwrap_or(&[])
        {
            if layer.get("mediaType").and_then(Value::as_str) != Some(SIMPLESIGNING) {
                continue;
            }
            found += 1;
            if checked == MAX_CANDIDATES {
                break;
            }
            checked += 1;
            let sig = layer
                .get("annotations")
                .and_then(|a| a.get(SIGNATURE_ANNOTATION))
                .and_then(Value::as_str)
                .and_then(base64_decode);
            let Some(pd) = layer
                .get("digest")
                .and_then(Value::as_str)
                .and_then(|d| Digest::parse(d).ok())
            else {
                continue;
            };
            let Some(sig) = sig else { continue };
            let payload = remote.oci_get(&format!("/v2/{repo}/blobs/{pd}"), "*/*", MAX_PAYLOAD)?;
            let Some(payload) = payload.filter(|p| Digest::of(p) == pd) else {
                continue;
            };
            if !policy.verify(&payload, &sig) {
                continue;
            }
            match check_payload(&payload, repo, tag, &digest) {
                Ok(()) => return verified(remote, want, ip, held),
                Err(e) => why = Some(e),
            }
        }
    }
    Err(untrusted(
        want,
        match (why, found) {
            (Some(w), _) => w,
            (None, 0) => format!(
                "no signature for {digest} (neither the tag {sig_tag} nor the referrers API has one)"
            ),
            (None, n) => format!("none of the {n} signatures of {digest} verifies with the trusted key"),
        },
    ))
}

/// The signed manifest digest is the plan's: tie manifest, config and
/// diff_ids to it.
fn verified(
    remote: &mut dyn Remote,
    want: &ImageRef,
    ip: &ImagePlan,
    held: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Verified> {
    let repo = &want.repository;
    let (manifest, config) = match held {
        Some(mc) => mc,
        None => {
            let get = |r: &mut dyn Remote, path: String, accept| {
                r.oci_get(&path, accept, MAX_METADATA_BYTES)?
                    .ok_or_else(|| untrusted(want, format!("the registry does not serve {path}")))
            };
            let m = get(
                remote,
                format!("/v2/{repo}/manifests/{}", ip.manifest_digest),
                ACCEPT_MANIFEST,
            )?;
            let c = get(
                remote,
                format!("/v2/{repo}/blobs/{}", ip.config_digest),
                "*/*",
            )?;
            (m, c)
        }
    };
    check_manifest(&manifest, ip).map_err(|e| untrusted(want, e))?;
    if Digest::of(&config) != ip.config_digest {
        return Err(untrusted(
            want,
            format!("config does not hash to {}", ip.config_digest),
        ));
    }
    let diff_ids = config_diff_ids(&config).map_err(|e| untrusted(want, e))?;
    if !diff_ids.iter().eq(ip.layers.iter().map(|l| &l.diff_id)) {
        return Err(untrusted(
            want,
            "the plan's layers differ from the signed config's rootfs.diff_ids",
        ));
    }
    Ok(Verified {
        manifest,
        config,
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key pair made with Python `cryptography` (independent of
    /// ring): the public key as cosign.pub, and a signature of PAYLOAD.
    const PUB_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHhtIO2j7wDyJuan+VrrjobfCUhCu\n\
E0XhExFLg8BfwC4D7M2T1cT7vv8sDHpYh7J72HnnqdQRGVWSwmziDrFdHQ==\n\
-----END PUBLIC KEY-----\n";
    const PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/test/tiny"},"image":{"docker-manifest-digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"type":"cosign container image signature"},"optional":{"tag":"v1"}}"#;
    const SIG_B64: &str = "MEUCIGqYRQNT3iVcrko+G5aP9eK03sMOlD3v8SWuzgme1wiCAiEA6+XWzFwq4LCxOwjl9kVkB3XJAygZtzfZeH7XqGOlIuU=";

    #[test]
    fn base64_is_strict() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for bad in [
            "Z",
            "Zg",
            "Zg=",
            "Zg===",
            "Z===",
            "====",
            "Zg==Zg==",
            "Zh==",
            "Zm9=",
            "Zm 9",
            "Zm9v\n",
            "Zm-_",
            "Zg=a",
            "\u{e9}abc",
            "=Zg=",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn public_keys() {
        let p = Policy::from_pem(PUB_PEM.as_bytes()).unwrap();
        assert_eq!(p.point.len(), 65);
        // Hostile or wrong inputs are errors, never panics.
        let der = pem_decode(PUB_PEM.as_bytes(), "PUBLIC KEY").unwrap();
        assert_eq!(der.len(), 91);
        for n in 0..der.len() {
            assert!(
                Policy::from_spki_der(&der[..n]).is_err(),
                "truncated at {n}"
            );
        }
        let mut longer = der.clone();
        longer.push(0);
        assert!(Policy::from_spki_der(&longer).is_err());
        let mut compressed = der.clone();
        compressed[26] = 2;
        assert!(Policy::from_spki_der(&compressed).is_err());
        let mut other_curve = der.clone();
        other_curve[22] = 0x22; // secp384r1's last arc
        assert!(Policy::from_spki_der(&other_curve).is_err());
        for bad in [
            "",
            "-----BEGIN PUBLIC KEY-----\n",
            "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----",
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nMFkw\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----",
        ] {
            assert!(Policy::from_pem(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(Policy::from_pem(b"\xff\xfe").is_err());
    }

    #[test]
    fn signatures_from_an_independent_implementation() {
        let p = Policy::from_pem(PUB_PEM.as_bytes()).unwrap();
        let sig = base64_decode(SIG_B64).unwrap();
        assert!(p.verify(PAYLOAD.as_bytes(), &sig));
        let mut tampered = PAYLOAD.as_bytes().to_vec();
        tampered[10] ^= 1;
        assert!(!p.verify(&tampered, &sig));
        // Hostile DER: every truncation, every single-bit flip, garbage.
        for n in 0..sig.len() {
            assert!(!p.verify(PAYLOAD.as_bytes(), &sig[..n]));
        }
        for i in 0..sig.len() * 8 {
            let mut s = sig.clone();
            s[i / 8] ^= 1 << (i % 8);
            assert!(!p.verify(PAYLOAD.as_bytes(), &s), "bit {i}");
        }
        let mut longer = sig.clone();
        longer.push(0);
        assert!(!p.verify(PAYLOAD.as_bytes(), &longer));
        assert!(!p.verify(PAYLOAD.as_bytes(), &[0x30, 0x00]));
        assert!(!p.verify(PAYLOAD.as_bytes(), &[0x30, 0x80, 0x02, 0x01, 0x01]));
    }

    #[test]
    fn docker_references() {
        for (r, repo, tag) in [
            ("test/tiny", "test/tiny", None),
            ("127.0.0.1:5000/test/tiny", "test/tiny", None),
            ("localhost/test/tiny:v2", "test/tiny", Some("v2")),
            ("reg.example/a/b:v1@sha256:00", "a/b", Some("v1")),
            ("reg.example:443/a", "a", None),
            ("a:v1", "a", Some("v1")),
            ("", "", None),
            ("reg:5000/", "", None),
        ] {
            assert_eq!(parse_docker_reference(r), (repo, tag), "{r}");
        }
    }

    #[test]
    fn payload_checks() {
        let m = Digest::of(b"m");
        let payload = |reference: &str, digest: &str, ty: &str, optional: &str| {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"{ty}"}},"optional":{optional}}}"#
            )
        };
        let ok = payload(
            "127.0.0.1:5000/test/tiny",
            &m.to_string(),
            SIGNATURE_TYPE,
            r#"{"tag":"v2"}"#,
        );
        assert_eq!(
            check_payload(ok.as_bytes(), "test/tiny", Some("v2"), &m),
            Ok(())
        );
        assert_eq!(check_payload(ok.as_bytes(), "test/tiny", None, &m), Ok(()));
        let refused = |p: String, repo: &str, tag: Option<&str>| {
            check_payload(p.as_bytes(), repo, tag, &m).unwrap_err()
        };
        assert!(refused(ok.clone(), "test/tiny", Some("v1")).contains("tag \"v2\""));
        assert!(refused(ok.clone(), "test/other", Some("v2")).contains("repository"));
        let other = Digest::of(b"x").to_string();
        assert!(refused(
            payload("test/tiny", &other, SIGNATURE_TYPE, "{}"),
            "test/tiny",
            None
        )
        .contains("is for manifest"));
        assert!(refused(
            payload("test/tiny", &m.to_string(), "other", "{}"),
            "test/tiny",
            None
        )
        .contains("critical.type"));
        let untagged = payload("test/tiny", &m.to_string(), SIGNATURE_TYPE, "null");
        assert!(refused(untagged.clone(), "test/tiny", Some("v2")).contains("names no tag"));
        assert_eq!(
            check_payload(untagged.as_bytes(), "test/tiny", None, &m),
            Ok(())
        );
        let in_ref = payload(
            "r.example/test/tiny:v2",
            &m.to_string(),
            SIGNATURE_TYPE,
            "{}",
        );
        assert_eq!(
            check_payload(in_ref.as_bytes(), "test/tiny", Some("v2"), &m),
            Ok(())
        );
        assert!(refused(in_ref, "test/tiny", Some("v3")).contains("tag \"v2\""));
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"critical":[]}"#,
            r#"{"critical":{"type":1}}"#,
            "{\"critical\":",
        ] {
            assert!(
                check_payload(bad.as_bytes(), "test/tiny", None, &m).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_diff_ids_are_strict() {
        let d = Digest::of(b"l");
        let c = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{d}","{d}"]}}}}"#);
        assert_eq!(config_diff_ids(c.as_bytes()).unwrap(), vec![d, d]);
        for bad in [
            "{}",
            r#"{"rootfs":{}}"#,
            r#"{"rootfs":{"diff_ids":["sha256:00"]}}"#,
            r#"{"rootfs":{"diff_ids":[1]}}"#,
            "not json",
        ] {
            assert!(config_diff_ids(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            config_diff_ids(br#"{"rootfs":{"diff_ids":[]}}"#).unwrap(),
            Vec::<Digest>::new()
        );
    }
}
