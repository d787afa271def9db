//! Device sync, without HTTP: what a device needs and the archives that
//! carry it.
//!
//! | module | concern |
//! |---|---|
//! | [`access`] | what a device may receive (objects and held layers of repositories it may read) |
//! | [`plan`] | which layers/files a device needs ([`plan::Dedup`], [`plan::HeldObjects`]) |
//! | [`archive`] | the dedup archive writer |
//! | [`delta`] | binary deltas (feature `file-delta`): old-file choice, bidiff, the patch cache |
//! | [`devices`] | per-device holdings record (the mapping table) and the `devices` command |
//! | [`error`] | [`SyncError`], the domain error of a sync request |
//! | [`frame`] | the settings of every zstd frame an archive carries |
//! | [`framing`] | layer framing ("tar-split"): a layer tar without file contents, for devices to recompute diff_ids |
//!
//! The `/layerlink/v1/` handlers that call these live in
//! [`crate::http::sync`], which also maps [`SyncError`] to a response.

pub mod access;
pub mod archive;
pub mod delta;
pub mod devices;
pub mod error;
pub mod frame;
pub mod framing;
pub mod plan;
pub mod precompute;
pub mod resume;

pub use error::SyncError;
