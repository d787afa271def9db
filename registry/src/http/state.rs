//! The state every handler gets: the store, the config (replaceable at run
//! time: `SIGHUP` reloads devices and publishers) and the metrics handle.

use crate::config::Config;
use crate::store::storage::Storage;
use crate::sync::precompute::Precompute;
use crate::sync::resume::ResumeCache;
use std::sync::{Arc, RwLock};

/// The config handlers read; [`SharedConfig::replace`] swaps it whole, so a
/// request sees either the old or the new file, never a mix.
#[derive(Debug)]
pub struct SharedConfig(RwLock<Arc<Config>>);

impl SharedConfig {
    /// A cell holding `config`.
    pub fn new(config: Config) -> SharedConfig {
        SharedConfig(RwLock::new(Arc::new(config)))
    }

    /// The current config.
    pub fn get(&self) -> Arc<Config> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replace the config (requests already running keep the old one).
    pub fn replace(&self, config: Config) {
        let new = Arc::new(config);
        match self.0.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }
}

/// State every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub storage: Arc<Storage>,
    /// The config file's contents (see [`AppState::config`]).
    pub shared_config: Arc<SharedConfig>,
    /// The background thread preparing pushed images (`None` when the
    /// config turns it off).
    pub precompute: Option<Arc<Precompute>>,
    /// The Prometheus recorder's handle (`None`: `/metrics` answers 404;
    /// `serve` installs one, unit tests do not).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Archives kept for devices to resume (`[resume]` of the config at
    /// start).
    pub resume: Arc<ResumeCache>,
}

impl AppState {
    /// State over `storage` and `config`.
    pub fn new(storage: Storage, config: Config) -> AppState {
        if let Some(l) = config.zstd_level {
            crate::sync::frame::set_frame_level(l);
        }
        let storage = Arc::new(storage);
        let precompute = config
            .precompute()
            .then(|| Arc::new(Precompute::start(storage.clone())));
        let resume = Arc::new(ResumeCache::new(
            storage.resume_dir(),
            config.resume.max_bytes,
            config.resume.keep,
        ));
        AppState {
            resume,
            storage,
            shared_config: Arc::new(SharedConfig::new(config)),
            precompute,
            metrics: None,
        }
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.shared_config.get()
    }
}
