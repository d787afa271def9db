//! Publisher and device authentication. Credentials are compared in
//! constant time and never logged.

use crate::config::{Config, Device, Publisher};
use base64::Engine as _;

/// The device a bearer token belongs to, from an `Authorization` header
/// value (`Bearer <token>`). The presented token is hashed (SHA-256) and
/// compared in constant time with every device's token hash (`token` hashed,
/// or `token_sha256` as configured), so a config may hold hashes only.
pub fn device_for_authorization<'a>(
    config: &'a Config,
    header: Option<&str>,
) -> Option<&'a Device> {
    let token = header?.strip_prefix("Bearer ")?.trim();
    let presented = crate::config::sha256(token.as_bytes());
    let mut found = None;
    for d in &config.devices {
        let Ok(expected) = d.token_digest() else {
            continue;
        };
        if constant_time_eq(&expected, &presented) && found.is_none() {
            found = Some(d);
        }
    }
    found
}

/// The publisher an `Authorization: Basic <base64(user:password)>` header
/// value names, if user and password match a configured publisher.
pub fn publisher_for_authorization<'a>(
    config: &'a Config,
    header: Option<&str>,
) -> Option<&'a Publisher> {
    let encoded = header?.trim();
    let encoded = encoded
        .strip_prefix("Basic ")
        .or_else(|| encoded.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    // Check every publisher so the time taken does not say which user exists.
    let mut found = None;
    for p in &config.publishers {
        let ok = constant_time_eq(p.user.as_bytes(), user)
            & constant_time_eq(p.password.as_bytes(), password);
        if ok && found.is_none() {
            found = Some(p);
        }
    }
    found
}

/// Compare without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Publisher;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn basic_auth() {
        let config = Config {
            publishers: vec![
                Publisher {
                    user: "ci".into(),
                    password: "s3:cret".into(),
                },
                Publisher {
                    user: "bob".into(),
                    password: "pw".into(),
                },
            ],
            ..Config::default()
        };
        assert_eq!(
            publisher_for_authorization(&config, Some(&basic("ci:s3:cret")))
                .unwrap()
                .user,
            "ci"
        );
        assert_eq!(
            publisher_for_authorization(&config, Some(&basic("bob:pw")))
                .unwrap()
                .user,
            "bob"
        );
        assert!(publisher_for_authorization(&config, Some(&basic("ci:pw"))).is_none());
        assert!(publisher_for_authorization(&config, Some(&basic("ci"))).is_none());
        assert!(publisher_for_authorization(&config, Some("Bearer x")).is_none());
        assert!(publisher_for_authorization(&config, None).is_none());
    }

    #[test]
    fn bearer_plain_and_hashed() {
        let hex: String = crate::config::sha256(b"secret-b")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = Config {
            devices: vec![
                Device {
                    id: "a".into(),
                    token: "secret-a".into(),
                    ..Device::default()
                },
                Device {
                    id: "b".into(),
                    token_sha256: Some(hex.clone()),
                    ..Device::default()
                },
            ],
            ..Config::default()
        };
        let who = |h: &str| device_for_authorization(&config, Some(h)).map(|d| d.id.clone());
        assert_eq!(who("Bearer secret-a").as_deref(), Some("a"));
        assert_eq!(who("Bearer secret-b").as_deref(), Some("b"));
        // The hash itself is not a token.
        assert_eq!(who(&format!("Bearer {hex}")), None);
        assert_eq!(who("Bearer secret-c"), None);
        assert_eq!(who("Basic secret-a"), None);
    }
}
