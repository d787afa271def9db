//! Publisher and device authentication. Credentials are compared in
//! constant time and never logged.

use crate::config::{Config, Device, Publisher};
use base64::Engine as _;

/// The device a bearer token belongs to (constant-time comparison), from an
/// `Authorization` header value (`Bearer <token>`).
pub fn device_for_authorization<'a>(
    config: &'a Config,
    header: Option<&str>,
) -> Option<&'a Device> {
    let token = header?.strip_prefix("Bearer ")?.trim();
    config
        .devices
        .iter()
        .find(|d| constant_time_eq(d.token.as_bytes(), token.as_bytes()))
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
}
