//! layerlink registry: an OCI distribution registry that also splits every
//! pushed layer into files, stores each distinct file once, and serves
//! devices dedup archives of only the files they lack.
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the TOML config file: publishers, devices, TLS |
//! | [`access`] | what a device may receive: objects and held layers of repositories it may read |
//! | [`auth`] | publisher (push) and device (sync) authentication |
//! | [`storage`] | blobs on the filesystem, metadata in redb (manifests, tags, uploads) |
//! | [`oci`] | the OCI distribution API handlers under `/v2/` |
//! | [`server`] | router assembly, listening, shared state |
//! | [`ingest`] | layer → files: decompress, walk the tar, store objects, record the entry index |
//! | [`objects`] | the content-addressed object store (compressed at rest) |
//! | [`index`] | per-layer entry index and object tables |
//! | [`archive`] | the dedup archive writer |
//! | [`delta`] | binary deltas: old-file choice, bidiff, the patch cache |
//! | [`plan`] | which layers/files a device needs |
//! | [`sync_api`] | `/layerlink/v1/` handlers |
//! | [`devices`] | per-device holdings record (the mapping table) and the `devices` command |
//! | [`stats`] | the `stats` command |
//! | [`edit`] | in-place image editing |

pub mod access;
pub mod archive;
pub mod auth;
pub mod config;
pub mod delta;
pub mod devices;
pub mod edit;
pub mod index;
pub mod ingest;
pub mod objects;
pub mod oci;
pub mod plan;
pub mod server;
pub mod stats;
pub mod storage;
pub mod sync_api;
