//! Router assembly, listening, shared state. OWNER: registry-oci helper.

use crate::config::Config;
use crate::storage::Storage;
use std::sync::Arc;

/// State every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub storage: Arc<Storage>,
    /// The config file's contents.
    pub config: Arc<Config>,
}
