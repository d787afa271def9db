//! Storage: everything the registry keeps on disk, and nothing above it.
//!
//! | module | holds |
//! |---|---|
//! | [`storage`] | original blobs on the filesystem; manifests, tags, uploads in redb |
//! | [`objects`] | the content-addressed object store (one zstd file per distinct file content) |
//! | [`index`] | per-layer entry index and object tables (redb), and rebuilding a layer's tar |
//!
//! Depends only on [`crate::tar`] (header bytes); ingest, sync, edit and
//! HTTP sit above it.

pub mod index;
pub mod objects;
pub mod storage;
