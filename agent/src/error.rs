//! The agent's error type and the process exit codes it maps to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok: synced, or already up to date |
//! | 1 | other error (I/O, unexpected) |
//! | 2 | usage or configuration error |
//! | 3 | server or network error (after retries) |
//! | 4 | the store is locked: another sync is running |
//! | 5 | integrity error: digest mismatch, hostile or malformed archive, `verify` found problems |
//! | 6 | disk full |
//! | 7 | authentication error (401) |
//! | 8 | image or tag not found: every image that failed is unknown to the registry (or has no manifest for the device's platform); the others were synced |
//! | 9 | some images failed, others were synced or up to date (`status --json` says which and why) |
//! | 10 | `checkout --read-only`: the read-only mount is unavailable (not root, no overlayfs, too many layers); nothing was checked out |
//! | 11 | not trusted: a trust key is configured and the image has no valid signature by it (missing, other key, tampered, for another manifest, repository or tag); nothing of it was stored |

use std::fmt;
use std::io;

/// Process exit codes (see the module doc).
pub mod exit {
    /// Synced, or already up to date.
    pub const OK: i32 = 0;
    /// Any other error.
    pub const OTHER: i32 = 1;
    /// Bad command line or configuration file.
    pub const USAGE: i32 = 2;
    /// Server or network error after retries.
    pub const NETWORK: i32 = 3;
    /// Another process holds the store lock.
    pub const LOCKED: i32 = 4;
    /// Digest mismatch, hostile archive, or failed `verify`.
    pub const INTEGRITY: i32 = 5;
    /// No space left on the store's file system.
    pub const DISK_FULL: i32 = 6;
    /// The registry rejected the token (401).
    pub const AUTH: i32 = 7;
    /// `sync`: every image that failed is not on the registry (unknown
    /// repository, tag or digest, no manifest for the device's platform, or
    /// an image whose config names another platform).
    pub const NOT_FOUND: i32 = 8;
    /// `sync`: some images failed, others were synced or up to date.
    pub const PARTIAL: i32 = 9;
    /// `checkout --read-only`: the overlayfs mount it needs is not
    /// available (not root, no overlayfs, too many layers).
    pub const UNAVAILABLE: i32 = 10;
    /// `sync` with a trust key: an image has no valid signature by it.
    pub const UNTRUSTED: i32 = 11;
}

/// Everything that can go wrong in the agent.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Bad command line or configuration.
    Usage(String),
    /// Another process holds the store lock.
    Locked(String),
    /// A network failure or server answer worth retrying (connect failure,
    /// 5xx, cut stream). Becomes exit code 3 once retries are exhausted.
    Transient(String),
    /// A server answer that retrying will not change (4xx other than 401).
    Server {
        /// HTTP status.
        status: u16,
        /// The error body's code, if the body decoded.
        code: Option<layerlink_proto::ErrorCode>,
        /// What the server said, or what was wrong with the answer.
        message: String,
    },
    /// The registry rejected the device token (401).
    Auth(String),
    /// Content or archive that must not be trusted: digest mismatch,
    /// escaping path, write through a symlink, malformed tar, …
    Integrity(String),
    /// No space left on the store's file system.
    DiskFull {
        /// Bytes needed, when known.
        needed: Option<u64>,
        /// Bytes available, when known.
        available: Option<u64>,
        /// What was being written.
        context: String,
    },
    /// An I/O error, with what was being done.
    Io {
        /// What was being done (names the path).
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The image is not for this device's platform (its config names
    /// another os/architecture/variant). Exit code [`exit::NOT_FOUND`], as
    /// for an index without the device's platform; `--force-platform`
    /// accepts it.
    WrongPlatform(String),
    /// A read-only checkout cannot mount its overlay (exit
    /// [`exit::UNAVAILABLE`]); never falls back to a writable tree.
    Unavailable(String),
    /// The trust policy refuses the image (exit [`exit::UNTRUSTED`]): no
    /// valid signature by the trusted key for this manifest, repository
    /// and tag, or the signed manifest/config do not match the plan.
    Untrusted(String),
    /// Anything else.
    Other(String),
}

/// Shorthand result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with context; `ENOSPC`/`EDQUOT` become [`Error::DiskFull`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        let context = context.into();
        match source.raw_os_error() {
            Some(28) | Some(122) => Error::DiskFull {
                needed: None,
                available: None,
                context,
            },
            _ => Error::Io { context, source },
        }
    }

    /// A rustix errno with context.
    pub fn errno(context: impl Into<String>, e: rustix::io::Errno) -> Error {
        Error::io(context, io::Error::from(e))
    }

    /// An integrity error.
    pub fn integrity(msg: impl Into<String>) -> Error {
        Error::Integrity(msg.into())
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Locked(_) => exit::LOCKED,
            Error::Transient(_) | Error::Server { .. } => exit::NETWORK,
            Error::Auth(_) => exit::AUTH,
            Error::Integrity(_) => exit::INTEGRITY,
            Error::WrongPlatform(_) => exit::NOT_FOUND,
            Error::Unavailable(_) => exit::UNAVAILABLE,
            Error::Untrusted(_) => exit::UNTRUSTED,
            Error::DiskFull { .. } => exit::DISK_FULL,
            Error::Io { .. } | Error::Other(_) => exit::OTHER,
        }
    }

    /// Whether retrying the operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m} (see --help)"),
            Error::Locked(m) => write!(f, "another sync is running: {m}"),
            Error::Transient(m) => write!(f, "network error: {m}"),
            Error::Server {
                status: 0, message, ..
            } => write!(f, "connection failed: {message}"),
            Error::Server {
                status, message, ..
            } => write!(f, "server error {status}: {message}"),
            Error::Auth(m) => write!(f, "authentication failed: {m}"),
            Error::Integrity(m) => write!(f, "integrity error: {m}"),
            Error::WrongPlatform(m) => write!(f, "not for this platform: {m}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Untrusted(m) => write!(f, "not trusted: {m}"),
            Error::DiskFull {
                needed,
                available,
                context,
            } => {
                write!(f, "disk full while {context}")?;
                if let Some(n) = needed {
                    write!(f, ": {n} bytes needed")?;
                }
                if let Some(a) = available {
                    write!(f, ", {a} bytes available")?;
                }
                Ok(())
            }
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_disk_full() {
        let e = Error::io("writing x", io::Error::from_raw_os_error(28));
        assert_eq!(e.exit_code(), exit::DISK_FULL);
        let e = Error::io("writing x", io::Error::from_raw_os_error(2));
        assert_eq!(e.exit_code(), exit::OTHER);
    }
}
