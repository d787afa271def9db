//! layerlink registry: an OCI distribution registry that also splits every
//! pushed layer into files, stores each distinct file once, and serves
//! devices dedup archives of only the files they lack.
//!
//! Layers, lowest first; a module uses only modules in rows above it (the
//! test `tests/module_cycles.rs` fails on an import cycle):
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the TOML config file: publishers, devices, TLS |
//! | [`auth`] | publisher (push) and device (sync) authentication |
//! | [`clock`], [`hashing`] | now in seconds and RFC 3339; readers and writers that hash what passes through |
//! | [`compression`] | the one layer-blob codec: gzip / zstd / plain tar by magic bytes, the decompressor ingest and edit share, the compressor edit writes layers with |
//! | [`tar`] | the one tar codec: header bytes (ustar blocks, PAX records) and the streaming reader ingest and edit share |
//! | [`oci`] | the one OCI / Docker image model: media types, descriptors, manifests, indexes, configs (JSON kept whole) |
//! | [`store`] | [`storage`](store::storage) (blobs, manifests, tags, uploads), [`objects`](store::objects) (the content-addressed object store), [`index`](store::index) (per-layer entry index) |
//! | [`ingest`] | layer → files: decompress, walk the tar, store objects, record the entry index |
//! | [`sync`] | [`plan`](sync::plan) (what a device needs), [`access`](sync::access) (what a device may receive), [`archive`](sync::archive) (the dedup archive writer), [`devices`](sync::devices) (holdings records), [`SyncError`](sync::SyncError) |
//! | [`edit`] | in-place image editing (layout and registry backends, the `edit` command) |
//! | [`gc`] | garbage collection: what no tag and no recently seen device needs |
//! | [`stats`] | the `stats` command |
//! | [`http`] | routes and handlers: [`oci`](http::oci) `/v2/`, [`sync`](http::sync) and [`edit`](http::edit) under `/layerlink/v1/`, [`server`](http::server), [`state`](http::state) |

pub mod auth;
pub mod clock;
pub mod compression;
pub mod config;
pub mod edit;
pub mod gc;
pub mod hashing;
pub mod http;
pub mod ingest;
pub mod oci;
pub mod stats;
pub mod store;
pub mod sync;
pub mod tar;

// The flat paths used before the modules moved into layer folders, kept so
// code written against them still builds. New code names the real path.
// (`oci` now names the image model; the `/v2/` handlers are `http::oci`.)
#[doc(hidden)]
pub use http::server;
#[doc(hidden)]
pub use http::sync as sync_api;
#[doc(hidden)]
pub use store::{index, objects, storage};
#[doc(hidden)]
pub use sync::{archive, devices, plan};
