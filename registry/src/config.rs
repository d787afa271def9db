//! The registry's TOML config file.
//!
//! ```toml
//! # publishers may push (docker-style basic auth on /v2/)
//! [[publishers]]
//! user = "ci"
//! password = "s3cret"
//!
//! # devices sync with a bearer token bound to their id
//! [[devices]]
//! id = "gw-0001"
//! token = "long-random-token"
//! repositories = ["edge/*", "tools/busybox"]   # glob: `*` matches any run of characters
//!
//! # serve HTTPS (PEM files; relative paths are relative to this file)
//! [tls]
//! cert = "/etc/layerlink/cert.pem"     # certificate chain, server cert first
//! key = "/etc/layerlink/key.pem"       # PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole config file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who may push (and read) on the OCI endpoints.
    #[serde(default)]
    pub publishers: Vec<Publisher>,
    /// Devices that may sync.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Serve HTTPS with this certificate.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Refuse (400 `MANIFEST_INVALID`) an image manifest whose layers
    /// cannot be split into files, instead of storing it as an OCI registry
    /// must and marking it "not syncable" (the default, `false`).
    #[serde(default)]
    pub reject_unsyncable: bool,
    /// Make the zstd frames and likely binary deltas of every pushed image
    /// in the background right after the push (`sync::precompute`), so the
    /// first device does not wait for them. Default `true`.
    #[serde(default)]
    pub precompute: Option<bool>,
    /// zstd level (1..=22) of the cached content frames and cold archives
    /// (default 19: about 1.5-3 MB/s of one core, made once per object).
    /// Lower trades bytes on the wire for push-time CPU.
    #[serde(default)]
    pub zstd_level: Option<i32>,
}

/// A publisher account (HTTP basic auth on `/v2/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publisher {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// A device allowed to sync.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Stable device id (shown by `layerlink-registry devices`).
    pub id: String,
    /// Bearer token the device sends. Never logged.
    pub token: String,
    /// Repository patterns the device may read; `*` matches any run of
    /// characters (including `/`).
    #[serde(default)]
    pub repositories: Vec<String>,
}

/// TLS certificate and key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

impl Config {
    /// Read and parse a config file; the error names the file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        if let (Some(tls), Some(dir)) = (&mut config.tls, path.parent()) {
            tls.cert = dir.join(&tls.cert);
            tls.key = dir.join(&tls.key);
        }
        if let Some(l) = config.zstd_level {
            anyhow::ensure!(
                (1..=22).contains(&l),
                "{}: zstd_level must be 1..=22, not {l}",
                path.display()
            );
        }
        Ok(config)
    }

    /// Whether pushed images are prepared in the background (default yes).
    pub fn precompute(&self) -> bool {
        self.precompute.unwrap_or(true)
    }

    /// Whether any publisher is configured (push needs auth then).
    pub fn has_publisher_auth(&self) -> bool {
        !self.publishers.is_empty()
    }
}

impl Device {
    /// Whether this device may read `repository`.
    pub fn may_read(&self, repository: &str) -> bool {
        self.repositories
            .iter()
            .any(|p| glob_match(p.as_bytes(), repository.as_bytes()))
    }
}

/// `*` matches any run of bytes; everything else matches itself.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    match pattern.iter().position(|&c| c == b'*') {
        None => pattern == s,
        Some(i) => {
            if !s.starts_with(&pattern[..i]) {
                return false;
            }
            let rest = &pattern[i + 1..];
            (i..=s.len()).any(|j| glob_match(rest, &s[j..]))
        }
    }
}

/// A refusal to start that the operator must fix (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Anonymous push would be open to the network.
    #[error(
        "refusing to listen on non-loopback address {addr} without publisher auth: \
         add [[publishers]] to a --config file, or listen on 127.0.0.1 / [::1]"
    )]
    PublicWithoutAuth {
        /// The address asked for.
        addr: String,
    },
    /// The listen address does not parse or resolve.
    #[error("invalid --listen address {addr:?}: {why}")]
    BadListen {
        /// The address asked for.
        addr: String,
        /// Why.
        why: String,
    },
    /// A `[tls]` certificate or key file is missing or unreadable.
    #[error("[tls] {what} file {}: {why}", path.display())]
    TlsFile {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The certificate and key do not make a usable pair.
    #[error("[tls] certificate {} and private key {} do not match or cannot be used: {why}", cert.display(), key.display())]
    TlsMismatch {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// What rustls said.
        why: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"edge/*", b"edge/gw"));
        assert!(glob_match(b"*", b"a/b"));
        assert!(!glob_match(b"edge/*", b"other/gw"));
        assert!(glob_match(b"a*c*e", b"abcde"));
        assert!(!glob_match(b"tools/busybox", b"tools/busybox2"));
    }

    #[test]
    fn parses_example() {
        let c: Config = toml::from_str(
            r#"
            [[publishers]]
            user = "ci"
            password = "p"
            [[devices]]
            id = "gw"
            token = "t"
            repositories = ["edge/*"]
            "#,
        )
        .unwrap();
        assert!(c.has_publisher_auth());
        assert!(c.devices[0].may_read("edge/x"));
        assert!(!c.devices[0].may_read("secret/x"));
    }
}
