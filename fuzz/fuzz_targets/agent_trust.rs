//! The agent's trust-policy parsers (`agent/src/trust.rs`) on arbitrary
//! bytes: the PEM public key, strict base64, the docker-reference split,
//! the signed payload, a config's diff_ids, and ECDSA verification with a
//! real key over hostile DER signatures (ring parses the DER).
//!
//! Never a panic; base64 that decodes re-encodes to the same text (one
//! text per byte string); a payload that passes for test/tiny:v1 and a
//! digest fails for another tag, repository or digest.
#![no_main]

use layerlink_agent::trust::{
    base64_decode, check_payload, config_diff_ids, parse_docker_reference, Policy,
};
use layerlink_proto::Digest;
use libfuzzer_sys::fuzz_target;

const PUB_PEM: &[u8] = b"-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHhtIO2j7wDyJuan+VrrjobfCUhCu
E0XhExFLg8BfwC4D7M2T1cT7vv8sDHpYh7J72HnnqdQRGVWSwmziDrFdHQ==
-----END PUBLIC KEY-----
";

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            s.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let _ = Policy::from_pem(data);
    let _ = Policy::from_spki_der(data);
    let text = String::from_utf8_lossy(data);
    if let Some(bytes) = base64_decode(&text) {
        assert_eq!(b64(&bytes), text, "non-canonical base64 accepted");
    }
    let (_, tag) = parse_docker_reference(&text);
    assert!(!tag.is_some_and(|t| t.contains('/')), "a tag with a slash");
    let manifest = Digest::of(b"m");
    if check_payload(data, "test/tiny", Some("v1"), &manifest).is_ok() {
        // A payload that passes is bound to that tag, repository and digest.
        assert!(check_payload(data, "test/tiny", Some("v2"), &manifest).is_err());
        assert!(check_payload(data, "test/other", Some("v1"), &manifest).is_err());
        assert!(check_payload(data, "test/tiny", Some("v1"), &Digest::of(b"x")).is_err());
    }
    let _ = check_payload(data, "", None, &manifest);
    let _ = config_diff_ids(data);
    let key = Policy::from_pem(PUB_PEM).expect("the test key");
    let (payload, sig) = data.split_at(data.len() / 2);
    let _ = key.verify(payload, sig);
});
