//! Publisher and device authentication. OWNER: registry-oci helper.

use crate::config::{Config, Device};

/// The device a bearer token belongs to (constant-time comparison), from an
/// `Authorization` header value (`Bearer <token>`).
pub fn device_for_authorization<'a>(config: &'a Config, header: Option<&str>) -> Option<&'a Device> {
    let token = header?.strip_prefix("Bearer ")?.trim();
    config
        .devices
        .iter()
        .find(|d| constant_time_eq(d.token.as_bytes(), token.as_bytes()))
}

/// Compare without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
