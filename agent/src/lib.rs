//! layerlink device agent (library; `main.rs` is a thin wrapper).
//!
//! The agent syncs container images from a layerlink registry file by file
//! into a local store of content-addressed objects and hard-linked layer
//! trees, and turns synced images into OCI runtime bundles or overlayfs
//! lower dirs. Single-threaded, streaming, bounded memory.
//!
//! | module | what |
//! |---|---|
//! | [`cli`] | command line, config file, exit codes, `--help` |
//! | [`sync`] | one sync run: plan, archive, repair, report, retries |
//! | [`client`] | the thin HTTP client ([`client::Remote`]) |
//! | [`store`] | the on-disk store (layout drawn there), gc, verify |
//! | [`apply`] | applying a dedup archive into the store |
//! | [`codec`] | archive decompression: gzip or zstd frames (bounded window) |
//! | [`delta`] | rebuilding an object from a held one and a binary patch |
//! | [`tar`] | the streaming tar reader |
//! | [`progress`] | received bytes, rate and ETA on stderr |
//! | [`checkout`] | OCI runtime bundles and overlayfs lower dirs |
//! | [`json`] | minimal JSON reader/writer |
//! | [`platform`] | the device's platform, `--platform`, the image config check |
//! | [`trust`] | the trust policy: cosign key-pair signatures checked before applying |
//! | [`fsops`] | symlink-safe `*at` file-system primitives |
//! | [`error`] | errors and exit codes |
#![forbid(unsafe_code)]

pub mod apply;
pub mod checkout;
pub mod cli;
pub mod client;
pub mod codec;
pub mod delta;
pub mod error;
pub mod fsops;
pub mod json;
pub mod platform;
pub mod progress;
pub mod resume;
pub mod store;
pub mod sync;
pub mod tar;
pub mod tarsplit;
pub mod trust;

pub use error::{Error, Result};
