//! `layerlink-registry`: a thin command line over the library.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.

use anyhow::Context;
use clap::{Parser, Subcommand};
use layerlink_registry::config::{Config, ConfigError, LogFormat};
use layerlink_registry::http::reload;
use layerlink_registry::http::server::{self, Transport};
use layerlink_registry::http::state::AppState;
use layerlink_registry::http::state::SharedConfig;
use layerlink_registry::store::storage::Storage;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "layerlink-registry",
    version,
    about = "OCI registry with file-level dedup sync for edge devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI distribution API and the device sync API.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:5000 (port 0 picks a free one).
        #[arg(long)]
        listen: String,
        /// Data directory (created if missing).
        #[arg(long)]
        data: PathBuf,
        /// TOML config file: publishers, devices, TLS.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print what the store holds and the dedup ratio.
    Stats {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Registry config file: its `[storage]` section says where the
        /// metadata (PostgreSQL) and the blobs (S3) are; other sections are
        /// ignored here.
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Edit an image in place: change a file inside layer k, delete layer k,
    /// insert a layer at k — without stacking new layers.
    Edit(layerlink_registry::edit::cli::EditArgs),
    /// Config file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask a running registry for its fleet view (GET /layerlink/v1/fleet):
    /// configured devices (also never seen), last sync and outcome, who
    /// holds which image.
    Fleet {
        /// Registry URL, e.g. https://registry.example:5000
        #[arg(long)]
        server: String,
        /// Publisher user; the password is read from LAYERLINK_PASSWORD.
        #[arg(long)]
        user: Option<String>,
        /// JSON output (as the endpoint answers).
        #[arg(long)]
        json: bool,
    },
    /// Collect garbage: delete manifests no tag reaches, and the blobs,
    /// index rows, file objects and caches nothing live needs. On a stopped
    /// registry (the database is locked while `serve` runs; `serve` collects
    /// by itself with `[gc] interval`). Exit 0 with a summary.
    Gc {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Registry config file: its `[storage]` section says where the
        /// metadata (PostgreSQL) and the blobs (S3) are; other sections are
        /// ignored here.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Count what would be freed, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Spare manifests pushed and files written within this long
        /// (`<n>s|m|h|d`, or 0).
        #[arg(long, default_value = "1h", value_parser = layerlink_registry::config::parse_duration)]
        grace: std::time::Duration,
        /// Keep the layers held by devices seen within this long (0: none).
        #[arg(long, default_value = "30d", value_parser = layerlink_registry::config::parse_duration)]
        device_grace: std::time::Duration,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print every device's holdings record.
    Devices {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Registry config file: its `[storage]` section says where the
        /// metadata (PostgreSQL) and the blobs (S3) are; other sections are
        /// ignored here.
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate a config file (duplicate device ids or tokens,
    /// token forms, TLS files); exit 0 when `serve` would accept it, 2
    /// with the reason otherwise.
    Check {
        /// The TOML config file.
        file: PathBuf,
    },
}

/// A problem the operator must fix in the command line or config (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct UsageError(anyhow::Error);

/// An `edit` failure; its exit code comes from `edit::cli::exit_code`.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct EditFailed(anyhow::Error);

impl From<anyhow::Error> for EditFailed {
    fn from(e: anyhow::Error) -> Self {
        EditFailed(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its config first: it names the log format.
    let mut format = LogFormat::Text;
    let mut loaded = None;
    let config_path = match &cli.command {
        Command::Serve { config, .. }
        | Command::Stats { config, .. }
        | Command::Gc { config, .. }
        | Command::Devices { config, .. } => config.as_ref(),
        _ => None,
    };
    if let Some(path) = config_path {
        match Config::load(path) {
            Ok(c) => {
                format = c.log_format;
                loaded = Some(c);
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    init_logging(format);
    match run(cli, loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(EditFailed(inner)) = e.downcast_ref::<EditFailed>() {
                let code = layerlink_registry::edit::cli::exit_code(inner);
                return ExitCode::from(u8::try_from(code).unwrap_or(1));
            }
            let usage = e.is::<UsageError>() || e.is::<ConfigError>();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Log to stderr, as text (colours on a terminal) or one JSON object per
/// line; `RUST_LOG` overrides the default level (`info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn run(cli: Cli, loaded: Option<Config>) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data,
            config: path,
        } => {
            let config = loaded.unwrap_or_default();
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(serve(listen, data, config, path))
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let config = Config::load(&file).map_err(UsageError)?;
            Transport::from_config(&config)?;
            let hashed = config
                .devices
                .iter()
                .filter(|d| d.token_sha256.is_some())
                .count();
            println!(
                "{}: ok: {} publisher(s), {} device(s) ({hashed} with hashed tokens), tls {}, metadata {}",
                file.display(),
                config.publishers.len(),
                config.devices.len(),
                if config.tls.is_some() { "on" } else { "off" },
                if config.storage.postgres().is_some() { "postgres" } else { "embedded" }
            );
            Ok(())
        }
        Command::Stats { data, json, .. } => {
            let storage = open_existing(&data, loaded.as_ref())?;
            let stats = layerlink_registry::stats::collect(&storage).context("collecting stats")?;
            let out = if json {
                serde_json::to_string_pretty(&stats)? + "\n"
            } else {
                layerlink_registry::stats::render_text(&stats)
            };
            std::io::stdout().write_all(out.as_bytes())?;
            Ok(())
        }
        Command::Gc {
            data,
            dry_run,
            grace,
            device_grace,
            json,
            ..
        } => {
            let storage = open_existing(&data, loaded.as_ref())?;
            // Serving processes hold this lock shared; their pushes are
            // fenced from a collection only inside one process.
            let lock = serve_lock(&data)?;
            if lock.try_lock().is_err() {
                return Err(UsageError(anyhow::anyhow!(
                    "a registry is serving {}: stop it first, or let it collect by itself ([gc] interval)",
                    data.display()
                ))
                .into());
            }
            let opts = layerlink_registry::gc::Options {
                offline: true,
                ..gc_options(grace, device_grace, dry_run)
            };
            let report =
                layerlink_registry::gc::run(&storage, &opts).context("collecting garbage")?;
            let out = if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                format!("gc: {}\n", report.summary())
            };
            std::io::stdout().write_all(out.as_bytes())?;
            Ok(())
        }
        Command::Fleet { server, user, json } => fleet(&server, user.as_deref(), json),
        Command::Devices { data, json, .. } => {
            let storage = open_existing(&data, loaded.as_ref())?;
            layerlink_registry::sync::devices::print_devices(&storage, json)
        }
        Command::Edit(args) => {
            layerlink_registry::edit::cli::cli_main(args).map_err(|e| EditFailed::from(e).into())
        }
    }
}

fn fleet(server: &str, user: Option<&str>, json: bool) -> anyhow::Result<()> {
    use base64::Engine as _;
    use layerlink_registry::sync::devices::{format_fleet, Fleet};
    let url = format!("{}/layerlink/v1/fleet", server.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(&url);
    if let Some(user) = user {
        let password = std::env::var("LAYERLINK_PASSWORD").map_err(|_| {
            UsageError(anyhow::anyhow!(
                "--user needs the password in the environment variable LAYERLINK_PASSWORD"
            ))
        })?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req = req.header("Authorization", &format!("Basic {b64}"));
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {url}"))?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {}", body.trim());
    let fleet: Fleet = serde_json::from_str(&body)
        .with_context(|| format!("{url} did not answer a fleet view"))?;
    let out = if json {
        serde_json::to_string_pretty(&fleet)? + "\n"
    } else {
        format_fleet(&fleet)
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// `DATA/serve.lock`: `serve` holds it shared for its lifetime, `gc` takes
/// it exclusively (released when the process ends, however it ends).
fn serve_lock(data: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = data.join("serve.lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

fn gc_options(
    grace: std::time::Duration,
    device_grace: std::time::Duration,
    dry_run: bool,
) -> layerlink_registry::gc::Options {
    layerlink_registry::gc::Options {
        grace,
        device_grace: (!device_grace.is_zero()).then_some(device_grace),
        dry_run,
        offline: false,
    }
}

fn open_existing(data: &std::path::Path, config: Option<&Config>) -> anyhow::Result<Storage> {
    if !data.is_dir() {
        return Err(UsageError(anyhow::anyhow!(
            "data directory {} does not exist",
            data.display()
        ))
        .into());
    }
    Storage::open_with(data, &config.map(|c| c.storage.clone()).unwrap_or_default())
}

async fn serve(
    listen: String,
    data: PathBuf,
    config: Config,
    config_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let transport = Transport::from_config(&config)?;
    let addrs = server::check_listen(&listen, &config, &transport).await?;
    let lock = serve_lock(&data).or_else(|_| {
        std::fs::create_dir_all(&data)?;
        serve_lock(&data)
    })?;
    if lock.try_lock_shared().is_err() {
        anyhow::bail!(
            "{} is being garbage-collected by `layerlink-registry gc`; start when it is done",
            data.display()
        );
    }
    let storage_config = config.storage.clone();
    let storage = tokio::task::spawn_blocking(move || {
        let s = Storage::open_with(&data, &storage_config)?;
        // Leftovers of a crash: temp blobs, orphan upload files, and the
        // staging dirs of layer ingests that died with their process.
        s.clean_tmp()?;
        let objects = layerlink_registry::store::index::object_store(&s);
        objects
            .clean_stale_staging()
            .with_context(|| format!("cleaning {}/.staging", objects.root().display()))?;
        anyhow::Ok(s)
    })
    .await??;
    let listener = server::bind(&addrs).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        publishers = config.publishers.len(),
        devices = config.devices.len(),
        tls = transport.is_tls(),
        blobs = %storage.blobs().store().location(),
        "registry ready"
    );
    let gc_config = config.gc.clone();
    let mut state = AppState::new(storage, config);
    state.metrics = Some(layerlink_registry::http::metrics::install()?);
    tokio::spawn(expire_uploads(state.storage.clone()));
    tokio::spawn(flush_seen_every(
        state.storage.clone(),
        std::time::Duration::from_secs(5),
    ));
    if !gc_config.interval.is_zero() {
        tokio::spawn(collect_garbage(state.storage.clone(), gc_config));
    }
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(state.shared_config.clone(), path));
    }
    // Tests and scripts wait for this exact line.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}://{addr}", transport.scheme())?;
    stdout.flush()?;
    let storage = state.storage.clone();
    let served = server::serve(listener, transport, state, server::shutdown_signal())
        .await
        .context("serving");
    if let Err(e) = storage.devices().flush_seen() {
        tracing::warn!("writing devices' last-seen times: {e:#}");
    }
    drop(lock);
    served
}

/// On every SIGHUP, read the config file again and swap in its devices and
/// publishers; a file that does not load keeps the old config (and says why
/// in the log).
async fn reload_on_sighup(shared: std::sync::Arc<SharedConfig>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP, config reload is off: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&p)).await;
        let result = match loaded {
            Ok(Ok(new)) => reload::apply(&shared, new),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        };
        layerlink_registry::http::metrics::reload(result.is_ok());
        match result {
            Ok(summary) => tracing::info!(file = %path.display(), "config reloaded: {summary}"),
            Err(why) => tracing::error!(
                file = %path.display(),
                "config reload failed, keeping the previous config: {why}"
            ),
        }
    }
}

/// Hourly: cancel upload sessions idle for a day (abandoned pushes).
async fn expire_uploads(storage: std::sync::Arc<Storage>) {
    const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let s = storage.clone();
        match tokio::task::spawn_blocking(move || s.expire_uploads(MAX_AGE)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("cancelled {n} abandoned upload session(s)"),
            Ok(Err(e)) => tracing::warn!("expiring upload sessions: {e:#}"),
            Err(e) => tracing::warn!("expiring upload sessions: {e}"),
        }
    }
}

/// Every `[gc] interval`: collect garbage (the first run one interval
/// after start-up).
async fn collect_garbage(
    storage: std::sync::Arc<Storage>,
    cfg: layerlink_registry::config::GcConfig,
) {
    let every = cfg.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let s = storage.clone();
        let opts = gc_options(cfg.grace, cfg.device_grace, false);
        let result =
            tokio::task::spawn_blocking(move || layerlink_registry::gc::run(&s, &opts)).await;
        let freed = match result {
            Ok(Ok(r)) => {
                tracing::info!(bytes_freed = r.bytes_freed, "gc: {}", r.summary());
                Some(r.bytes_freed)
            }
            Ok(Err(e)) => {
                tracing::error!("gc failed: {e:#}");
                None
            }
            Err(e) => {
                tracing::error!("gc failed: {e}");
                None
            }
        };
        layerlink_registry::http::metrics::gc(freed);
    }
}

/// Write devices' last-seen times (kept in memory by the up-to-date path)
/// every `every`.
async fn flush_seen_every(storage: std::sync::Arc<Storage>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let s = storage.clone();
        let r = tokio::task::spawn_blocking(move || s.devices().flush_seen()).await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("writing devices' last-seen times: {e:#}"),
            Err(e) => tracing::warn!("writing devices' last-seen times: {e}"),
        }
    }
}
