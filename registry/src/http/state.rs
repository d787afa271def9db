//! The state every handler gets: the store and the config.

use crate::config::Config;
use crate::store::storage::Storage;
use crate::sync::precompute::Precompute;
use std::sync::Arc;

/// State every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub storage: Arc<Storage>,
    /// The config file's contents.
    pub config: Arc<Config>,
    /// The background thread preparing pushed images (`None` when the
    /// config turns it off).
    pub precompute: Option<Arc<Precompute>>,
}

impl AppState {
    /// State over `storage` and `config`.
    pub fn new(storage: Storage, config: Config) -> AppState {
        if let Some(l) = config.zstd_level {
            crate::sync::archive::zstd::set_frame_level(l);
        }
        let storage = Arc::new(storage);
        let precompute = config
            .precompute()
            .then(|| Arc::new(Precompute::start(storage.clone())));
        AppState {
            storage,
            config: Arc::new(config),
            precompute,
        }
    }
}
