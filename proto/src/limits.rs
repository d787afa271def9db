//! Bounds both sides enforce. A message or archive that breaks one is
//! rejected with a clear error ([`crate::ErrorCode::TooLarge`] on the
//! registry, an apply error on the agent), never processed partially.

/// Largest postcard request or response body, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most images one plan request may name.
pub const MAX_IMAGES_PER_PLAN: usize = 64;
/// Most committed layers a device may report.
pub const MAX_HELD_LAYERS: usize = 8192;
/// Most loose objects a device may report (8 MiB of digests).
pub const MAX_LOOSE_OBJECTS: usize = 262_144;
/// Most objects one repair request may ask for.
pub const MAX_REPAIR_OBJECTS: usize = 65_536;
/// Longest repository name or reference (tag or digest), in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest path of an archive entry, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Largest PAX extended header an archive reader accepts, in bytes.
pub const MAX_PAX_BYTES: u64 = 1024 * 1024;
/// Most extension headers (PAX `x`/`g`, GNU `L`/`K`) a tar reader accepts
/// in a row before an entry. A real entry has at most one of each kind;
/// the cap keeps a stream of extension headers from running unbounded.
pub const MAX_EXTENSION_HEADERS: usize = 8;
/// Largest manifest or config carried by a marker entry, in bytes.
pub const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;
/// Most entries one layer may have.
pub const MAX_LAYER_ENTRIES: u64 = 4_000_000;
