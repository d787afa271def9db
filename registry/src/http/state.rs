//! The state every handler gets: the store and the config.

use crate::config::Config;
use crate::store::storage::Storage;
use std::sync::Arc;

/// State every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub storage: Arc<Storage>,
    /// The config file's contents.
    pub config: Arc<Config>,
}

impl AppState {
    /// State over `storage` and `config`.
    pub fn new(storage: Storage, config: Config) -> AppState {
        AppState {
            storage: Arc::new(storage),
            config: Arc::new(config),
        }
    }
}
