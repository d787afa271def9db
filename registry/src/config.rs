//! The registry's TOML config file.
//!
//! ```toml
//! # top-level keys first (TOML puts a key under the table above it)
//! log_format = "json"        # or "text" (the default)
//! metrics_auth = true        # /metrics needs publisher basic auth (default false)
//!
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
//! # or store only the token's SHA-256 (hex): `printf %s TOKEN | sha256sum`
//! [[devices]]
//! id = "gw-0002"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! repositories = ["edge/*"]
//!
//! # garbage collection inside `serve` (also: `layerlink-registry gc`)
//! [gc]
//! interval = "24h"          # run this often (units s, m, h, d; absent or "0": never by itself)
//! grace = "1h"               # spare what was pushed or written this recently
//! device_grace = "30d"       # layers held by devices seen this recently stay indexed ("0": none)
//!
//! # where the metadata lives (absent: the embedded redb database in the data dir)
//! [storage]
//! metadata = "postgres://layerlink:secret@db.example:5432/layerlink"
//!
//! # serve HTTPS (PEM files; relative paths are relative to this file)
//! [tls]
//! cert = "/etc/layerlink/cert.pem"     # certificate chain, server cert first
//! key = "/etc/layerlink/key.pem"       # PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key
//!
//! # where original blobs live (default: the data directory, DATA/blobs/sha256)
//! [storage]
//! blobs = "s3://layerlink/prod"          # s3://bucket[/prefix], or "local"
//!
//! # the S3-compatible server; keys left out come from AWS_* environment variables
//! [storage.s3]
//! endpoint = "http://127.0.0.1:3900"     # absent: AWS S3 (http:// allows plain HTTP)
//! region = "garage"
//! access_key_id = "GK…"
//! secret_access_key = "…"
//! virtual_hosted_style = false           # true: https://bucket.endpoint/key
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
    /// Log line format on stderr: `"text"` (default) or `"json"` (one JSON
    /// object per line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Whether `GET /metrics` needs publisher basic auth (default `false`:
    /// the figures carry no secrets and scrapers rarely hold credentials;
    /// set it when the port is reachable by people who should not see the
    /// traffic figures). No effect without `[[publishers]]`.
    #[serde(default)]
    pub metrics_auth: bool,
    /// Periodic garbage collection (see `gc`).
    #[serde(default)]
    pub gc: GcConfig,
    /// Archives kept for devices to resume after a cut (`sync::resume`).
    #[serde(default)]
    pub resume: ResumeConfig,
    /// Storage backends (see [`StorageConfig`]).
    #[serde(default)]
    pub storage: StorageConfig,
}

/// `[resume]`: how many archive responses `serve` keeps so that a device
/// cut off mid-way continues where it stopped instead of starting over.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ResumeConfig {
    /// Most bytes kept (oldest dropped first); 0 turns resumption off.
    /// Default 1 GiB.
    pub max_bytes: u64,
    /// How long an archive is kept (default `"1h"`).
    #[serde(deserialize_with = "de_duration")]
    pub keep: std::time::Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            max_bytes: 1 << 30,
            keep: std::time::Duration::from_secs(3600),
        }
    }
}

/// `[storage]`: the backends behind the data directory.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `postgres://user:password@host:port/database` (or `postgresql://`;
    /// `?host=/run/postgresql` for a unix socket): repositories, manifests,
    /// tags, blob links, referrers and upload sessions in that PostgreSQL
    /// database, shared by every registry process that names it, with the
    /// device records — and, when `blobs` is a bucket, the layer index and
    /// file objects replicas share. `?sslmode=require` makes connections
    /// TLS with the server certificate verified (against
    /// `&sslrootcert=PATH`, or the system's roots). Absent: the embedded
    /// redb database in the data directory.
    #[serde(default)]
    pub metadata: Option<String>,
    /// Original blobs: absent or `"local"`: `DATA/blobs/sha256/`;
    /// `"s3://bucket[/prefix]"`: an S3-compatible object store
    /// (configured in `[storage.s3]`). Uploads in flight stay in `DATA/tmp/`.
    #[serde(default)]
    pub blobs: Option<String>,
    /// The S3-compatible server.
    #[serde(default)]
    pub s3: S3Config,
}

impl std::fmt::Debug for StorageConfig {
    // The URL and the secret key are credentials: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field(
                "metadata",
                &self.metadata.as_ref().map(|_| "postgres://(redacted)"),
            )
            .field("blobs", &self.blobs)
            .field("s3.endpoint", &self.s3.endpoint)
            .field("s3.region", &self.s3.region)
            .finish_non_exhaustive()
    }
}

impl StorageConfig {
    /// The PostgreSQL URL when metadata lives there.
    pub fn postgres(&self) -> Option<&str> {
        self.metadata.as_deref()
    }

    /// The S3 URL of the blob store, `None` for the local default.
    pub fn s3_blobs(&self) -> Option<&str> {
        self.blobs.as_deref().filter(|b| *b != "local")
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.metadata {
            anyhow::ensure!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "[storage] metadata must be a postgres:// or postgresql:// URL"
            );
        }
        if let Some(url) = self.s3_blobs() {
            use anyhow::Context;
            parse_s3_url(url)
                .context("[storage] blobs must be \"local\" or \"s3://bucket[/prefix]\"")?;
        }
        Ok(())
    }
}

/// Split `s3://bucket[/prefix]` into bucket and prefix (without slashes at
/// either end): checked when the config loads, used by the S3 blob store
/// when it opens.
pub fn parse_s3_url(url: &str) -> anyhow::Result<(String, String)> {
    use anyhow::Context;
    let rest = url
        .strip_prefix("s3://")
        .with_context(|| format!("blob store {url:?}: expected s3://bucket[/prefix]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(
        !bucket.is_empty(),
        "blob store {url:?}: no bucket name (expected s3://bucket[/prefix])"
    );
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

/// `[storage.s3]`: how to reach the object store. Every key left out is
/// taken from the environment (`AWS_ENDPOINT`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), so secrets need not be in
/// the file.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Server URL, e.g. `http://127.0.0.1:3900` (plain HTTP is allowed
    /// when the URL says `http://`). Absent: AWS S3.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region the server expects in signatures (Garage: its `s3_region`).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Address buckets as `bucket.endpoint` instead of `endpoint/bucket`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
}

/// `[gc]`: when `serve` collects garbage by itself, and what it spares.
/// Durations are written `<number><unit>` with unit `s`, `m`, `h` or `d`
/// (`"90s"`, `"24h"`, `"30d"`), or `"0"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run this often; 0 (the default): only `layerlink-registry gc`.
    #[serde(deserialize_with = "de_duration")]
    pub interval: std::time::Duration,
    /// Spare manifests pushed and files written within this long.
    #[serde(deserialize_with = "de_duration")]
    pub grace: std::time::Duration,
    /// Layers held by a device seen within this long keep their index rows
    /// and objects (0: device holdings protect nothing).
    #[serde(deserialize_with = "de_duration")]
    pub device_grace: std::time::Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: std::time::Duration::ZERO,
            grace: std::time::Duration::from_secs(3600),
            device_grace: std::time::Duration::from_secs(30 * 86400),
        }
    }
}

/// Parse `<number><unit>` (`s`, `m`, `h`, `d`) or `0`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let unit = match t.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86400,
        _ => {
            return Err(format!(
                "{text:?}: a duration is a number and a unit (s, m, h, d), e.g. \"24h\""
            ))
        }
    };
    let n: u64 = t[..t.len() - 1].parse().map_err(|_| {
        format!("{text:?}: a duration is a number and a unit (s, m, h, d), e.g. \"24h\"")
    })?;
    n.checked_mul(unit)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Stable device id (shown by `layerlink-registry devices`).
    pub id: String,
    /// Bearer token the device sends. Never logged. Exactly one of
    /// `token` and `token_sha256` is set.
    #[serde(default)]
    pub token: String,
    /// SHA-256 of the bearer token, 64 hex digits (the file then holds no
    /// usable secret).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// [`Device::token_digest`], computed once (validation fills it at
    /// load, so authentication compares 32 bytes per device, no hashing).
    #[serde(skip)]
    #[doc(hidden)]
    pub digest: std::sync::OnceLock<Result<[u8; 32], String>>,
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
        config
            .validate()
            .with_context(|| format!("config file {}", path.display()))?;
        Ok(config)
    }

    /// Check what the types cannot: zstd level range, every device has
    /// exactly one of `token` / `token_sha256` (64 hex digits), no two
    /// devices share an id or a token (compared by SHA-256, so a plain
    /// token and another device's hash of it collide too), no two
    /// publishers share a user name.
    pub fn validate(&self) -> anyhow::Result<()> {
        use std::collections::HashMap;
        if let Some(l) = self.zstd_level {
            anyhow::ensure!((1..=22).contains(&l), "zstd_level must be 1..=22, not {l}");
        }
        self.storage.validate()?;
        let mut users: HashMap<&str, usize> = HashMap::new();
        for (i, p) in self.publishers.iter().enumerate() {
            if let Some(first) = users.insert(&p.user, i) {
                anyhow::bail!(
                    "publishers #{} and #{} have the same user {:?}",
                    first + 1,
                    i + 1,
                    p.user
                );
            }
        }
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut tokens: HashMap<[u8; 32], &str> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            anyhow::ensure!(!d.id.is_empty(), "device #{} has an empty id", i + 1);
            if let Some(first) = ids.insert(&d.id, i) {
                anyhow::bail!(
                    "devices #{} and #{} have the same id {:?} (every sync would be credited to the first)",
                    first + 1,
                    i + 1,
                    d.id
                );
            }
            let digest = d
                .token_digest()
                .map_err(|e| anyhow::anyhow!("device {:?}: {e}", d.id))?;
            if let Some(other) = tokens.insert(digest, &d.id) {
                anyhow::bail!(
                    "devices {other:?} and {:?} have the same token (a token must name one device)",
                    d.id
                );
            }
        }
        Ok(())
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
    /// SHA-256 of the device's token: `token_sha256` decoded, or the hash
    /// of `token`. Errors when neither or both are set, or the hex is bad.
    pub fn token_digest(&self) -> Result<[u8; 32], String> {
        self.digest
            .get_or_init(|| match (&self.token_sha256, self.token.is_empty()) {
                (Some(_), false) => Err("set `token` or `token_sha256`, not both".into()),
                (None, true) => Err("has no `token` (or `token_sha256`)".into()),
                (None, false) => Ok(sha256(self.token.as_bytes())),
                (Some(h), true) => parse_sha256_hex(h)
                    .ok_or_else(|| format!("token_sha256 must be 64 hex digits, not {h:?}")),
            })
            .clone()
    }

    /// Whether this device may read `repository`.
    pub fn may_read(&self, repository: &str) -> bool {
        self.repositories
            .iter()
            .any(|p| glob_match(p.as_bytes(), repository.as_bytes()))
    }
}

/// SHA-256 of `b`.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

fn parse_sha256_hex(h: &str) -> Option<[u8; 32]> {
    let h = h.trim();
    if h.len() != 64 || !h.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
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
    #[test]
    fn gc_durations() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(super::parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(
            super::parse_duration("30d"),
            Ok(Duration::from_secs(30 * 86400))
        );
        assert_eq!(super::parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "h", "5", "5w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(super::parse_duration(bad).is_err(), "{bad:?}");
        }
        let c: super::Config = toml::from_str("[gc]\ninterval = \"2s\"\ngrace = \"0\"\n").unwrap();
        assert_eq!(c.gc.interval, Duration::from_secs(2));
        assert_eq!(c.gc.grace, Duration::ZERO);
        assert_eq!(c.gc.device_grace, Duration::from_secs(30 * 86400));
        assert!(toml::from_str::<super::Config>("[gc]\ninterval = \"soon\"\n").is_err());
    }

    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(parse_s3_url("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(
            parse_s3_url("s3://b/p/q/").unwrap(),
            ("b".into(), "p/q".into())
        );
        assert!(parse_s3_url("s3:///p").is_err());
        assert!(parse_s3_url("/data/blobs").is_err());
    }

    #[test]
    fn storage_section() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.storage.postgres(), None);
        let c: Config =
            toml::from_str("[storage]\nmetadata = \"postgres://u:hunter2@db/layerlink\"\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.storage.postgres(),
            Some("postgres://u:hunter2@db/layerlink")
        );
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "the password is printed"
        );
        let c: Config = toml::from_str("[storage]\nmetadata = \"mysql://db/x\"\n").unwrap();
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("postgres://"), "{e}");
        for (blobs, ok) in [
            ("local", true),
            ("s3://b/p", true),
            ("s3:///p", false),
            ("/srv", false),
        ] {
            let c: Config = toml::from_str(&format!("[storage]\nblobs = \"{blobs}\"\n")).unwrap();
            let r = c.validate().map_err(|e| format!("{e:#}"));
            assert_eq!(r.is_ok(), ok, "{blobs}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains("[storage] blobs must be"), "{e}");
            }
        }
        assert!(toml::from_str::<Config>("[storage]\nmetdata = \"postgres://x\"\n").is_err());
    }

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

    fn check(text: &str) -> Result<(), String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn duplicates_and_token_forms() {
        let hashed: String = sha256(b"t1").iter().map(|b| format!("{b:02x}")).collect();
        check(&format!(
            "[[devices]]\nid = \"a\"\ntoken = \"t0\"\n[[devices]]\nid = \"b\"\ntoken_sha256 = \"{hashed}\"\n"
        ))
        .unwrap();
        let e = check(
            "[[devices]]\nid = \"a\"\ntoken = \"t0\"\n[[devices]]\nid = \"a\"\ntoken = \"t1\"\n",
        )
        .unwrap_err();
        assert!(e.contains("same id \"a\""), "{e}");
        let e = check(
            "[[devices]]\nid = \"a\"\ntoken = \"t0\"\n[[devices]]\nid = \"b\"\ntoken = \"t0\"\n",
        )
        .unwrap_err();
        assert!(e.contains("same token"), "{e}");
        // A plain token and another device's hash of the same token.
        let e = check(&format!(
            "[[devices]]\nid = \"a\"\ntoken = \"t1\"\n[[devices]]\nid = \"b\"\ntoken_sha256 = \"{hashed}\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("same token"), "{e}");
        let e = check("[[devices]]\nid = \"a\"\n").unwrap_err();
        assert!(e.contains("no `token`"), "{e}");
        let e = check("[[devices]]\nid = \"a\"\ntoken_sha256 = \"xyz\"\n").unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
        let e = check("[[publishers]]\nuser = \"u\"\npassword = \"p\"\n[[publishers]]\nuser = \"u\"\npassword = \"q\"\n").unwrap_err();
        assert!(e.contains("same user"), "{e}");
        let e = check("zstd_level = 30\n").unwrap_err();
        assert!(e.contains("zstd_level"), "{e}");
        let c: Config = toml::from_str("log_format = \"json\"\n").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(toml::from_str::<Config>("log_format = \"xml\"\n").is_err());
    }
}
