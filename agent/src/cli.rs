//! Command line: hand-rolled argument parsing, the config file subset,
//! `--help`, and the commands' output.

use crate::apply::{human, Applier, ApplyOptions};
use crate::checkout;
use crate::client::{Client, ClientConfig};
use crate::error::{exit, Error, Result};
use crate::fsops::file_type;
use crate::json::Value;
use crate::store::record::{parse_image_ref, show_image_ref, ImageOutcome, SyncResult};
use crate::store::{now, walk_tree, Access, Store};
use crate::sync::{sync, SyncOptions, SyncSummary};
use layerlink_proto::msg::{ImageRef, Platform};
use layerlink_proto::time::rfc3339;
use rustix::fs::FileType;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `--help` text.
pub const HELP: &str = "\
layerlink-agent: sync container images file by file from a layerlink registry

USAGE:
  layerlink-agent sync --server URL --store DIR [options] IMAGE...
  layerlink-agent status --store DIR [--json]
  layerlink-agent checkout --store DIR [--read-only] IMAGE DEST
  layerlink-agent layers --store DIR IMAGE
  layerlink-agent gc --store DIR
  layerlink-agent remove --store DIR IMAGE...        (then gc: frees what no other image uses)
  layerlink-agent verify --store DIR
  layerlink-agent verify --repair --server URL --store DIR [sync options] [IMAGE...]
                      re-hash every object, drop damaged ones and the layers using
                      them, fetch them again (IMAGE... default: every held image)
  layerlink-agent apply-archive --store DIR FILE|-     (debugging: apply a dedup archive)
  layerlink-agent --help | --version

IMAGE is repo:tag or repo@sha256:<hex>.

sync options:
  --server URL        registry base URL (https://…; http:// only when written so)
  --store DIR         the store directory (created if missing)
  --token T           device bearer token
  --token-file F      read the token from F
  --ca-file PEM       trust these CA certificates (default: the system CA bundle,
                      $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt …)
  --platform P        os/arch[/variant], default: the build target (e.g. linux/arm64);
                      an image whose config names another platform is refused
                      (exit 8) unless --force-platform (config: force_platform = true)
  --config FILE       read server, store, token_file, ca_file, platform, images,
                      retry_for, keep, force_platform, deltas from FILE
                      (TOML subset: key = \"value\" / [\"a\", \"b\"] / true);
                      flags override it, IMAGE arguments replace its images
  --retry-for SECS    keep retrying transient failures this long (default 300)
  --keep N            retention: after the sync, per repository synced, keep its
                      images of this run and the N most recently synced others;
                      remove the rest and gc (config: keep = N; default: keep all)
  --no-devices        refuse device nodes in layers
  --no-zstd           do not ask for zstd archives (gzip, as agents before it)
  --no-deltas         do not ask for binary deltas: modified files come whole
                      (config: deltas = false)
  -q, --quiet         no progress lines on stderr

checkout options:
  --read-only         hard-link regular files into the store (mount the rootfs
                      read-only!) instead of copying them

EXIT CODES:
  0 ok (synced or already up to date)   4 store locked (another sync is running)
  1 other error                         5 integrity error (digest mismatch,
  2 usage or configuration error          hostile archive, verify found problems)
  3 server/network error after retries  6 disk full
                                        7 authentication failed (401)
  sync only (each image succeeds or fails on its own; status --json says which):
  8 image not found: every image that failed is unknown to the registry
    (repository, tag, digest or platform) or made for another platform;
    the others were synced
  9 some images failed, others were synced or are up to date
";

/// Run the agent with `args` (including the program name); returns the
/// exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("layerlink-agent: {e}");
            e.exit_code()
        }
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// Parsed flags and positional arguments of one command.
#[derive(Default, Debug)]
struct Args {
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

/// Flags that take a value.
const VALUE_FLAGS: &[&str] = &[
    "--server",
    "--store",
    "--token",
    "--token-file",
    "--ca-file",
    "--platform",
    "--config",
    "--retry-for",
    "--keep",
];
/// Flags without a value.
const BOOL_FLAGS: &[&str] = &[
    "--json",
    "--read-only",
    "--quiet",
    "-q",
    "--no-devices",
    "--no-zstd",
    "--no-deltas",
    "--force-platform",
    "--repair",
    "--help",
    "-h",
];

fn parse_args(raw: &[OsString]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = raw.iter();
    let mut only_positional = false;
    while let Some(arg) = it.next() {
        let arg = arg
            .to_str()
            .ok_or_else(|| usage("arguments must be UTF-8"))?
            .to_string();
        if only_positional || !arg.starts_with('-') || arg == "-" {
            a.positional.push(arg);
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if VALUE_FLAGS.contains(&name.as_str()) {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .and_then(|v| v.to_str())
                    .ok_or_else(|| usage(format!("{name} needs a value")))?
                    .to_string(),
            };
            a.flags.push((name, Some(v)));
        } else if BOOL_FLAGS.contains(&name.as_str()) && inline.is_none() {
            a.flags.push((name, None));
        } else {
            return Err(usage(format!("unknown option {arg}")));
        }
    }
    Ok(a)
}

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
    fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|(n, _)| names.contains(&n.as_str()))
    }
    /// Fail on flags this command does not take.
    fn only(&self, cmd: &str, allowed: &[&str]) -> Result<()> {
        for (n, _) in &self.flags {
            if !allowed.contains(&n.as_str()) && !["--help", "-h"].contains(&n.as_str()) {
                return Err(usage(format!("{cmd} does not take {n}")));
            }
        }
        Ok(())
    }
    fn store(&self) -> Result<PathBuf> {
        self.value("--store")
            .map(PathBuf::from)
            .ok_or_else(|| usage("--store DIR is required"))
    }
}

fn run(args: Vec<OsString>) -> Result<i32> {
    let rest = args.get(1..).unwrap_or(&[]);
    let Some(cmd) = rest.first().and_then(|c| c.to_str()) else {
        eprint!("{HELP}");
        return Ok(exit::USAGE);
    };
    match cmd {
        "--help" | "-h" | "help" => {
            print!("{HELP}");
            return Ok(exit::OK);
        }
        "--version" | "-V" => {
            let tls = if cfg!(feature = "tls") {
                "tls"
            } else {
                "no tls"
            };
            println!("layerlink-agent {} ({tls})", env!("CARGO_PKG_VERSION"));
            return Ok(exit::OK);
        }
        _ => {}
    }
    let a = parse_args(&rest[1..])?;
    if a.has(&["--help", "-h"]) {
        print!("{HELP}");
        return Ok(exit::OK);
    }
    match cmd {
        "sync" => cmd_sync(&a),
        "status" => cmd_status(&a),
        "checkout" => cmd_checkout(&a),
        "layers" => cmd_layers(&a),
        "gc" => cmd_gc(&a),
        "remove" => cmd_remove(&a),
        "verify" => cmd_verify(&a),
        "apply-archive" => cmd_apply_archive(&a),
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

fn image_arg(s: &str) -> Result<ImageRef> {
    parse_image_ref(s).ok_or_else(|| usage(format!("{s:?} is not repo:tag or repo@sha256:<hex>")))
}

/// The platform this agent was built for.
pub fn default_platform() -> Platform {
    let (arch, variant) = if cfg!(target_arch = "x86_64") {
        ("amd64", None)
    } else if cfg!(target_arch = "aarch64") {
        ("arm64", None)
    } else if cfg!(target_arch = "arm") {
        ("arm", Some("v7".to_string()))
    } else if cfg!(target_arch = "x86") {
        ("386", None)
    } else if cfg!(target_arch = "riscv64") {
        ("riscv64", None)
    } else {
        (std::env::consts::ARCH, None)
    };
    Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant,
    }
}

/// Parse `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Option<Platform> {
    let mut parts = s.split('/');
    let os = parts.next().filter(|p| !p.is_empty())?;
    let arch = parts.next().filter(|p| !p.is_empty())?;
    let variant = parts.next().map(str::to_string);
    if parts.next().is_some() || variant.as_deref() == Some("") {
        return None;
    }
    Some(Platform {
        os: os.into(),
        architecture: arch.into(),
        variant,
    })
}

/// The keys the config file may set.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigFile {
    /// `server`.
    pub server: Option<String>,
    /// `store`.
    pub store: Option<String>,
    /// `token_file`.
    pub token_file: Option<String>,
    /// `ca_file`.
    pub ca_file: Option<String>,
    /// `platform`.
    pub platform: Option<String>,
    /// `images`.
    pub images: Option<Vec<String>>,
    /// `retry_for` (seconds).
    pub retry_for: Option<u64>,
    /// `keep`: retention, previous images kept per repository.
    pub keep: Option<u64>,
    /// `force_platform = true`: sync images made for another platform.
    pub force_platform: Option<bool>,
    /// `deltas = false`: do not ask for binary deltas.
    pub deltas: Option<bool>,
}

enum TomlValue {
    Bool(bool),
    Str(String),
    Int(u64),
    List(Vec<String>),
}

fn toml_string(s: &str) -> std::result::Result<(String, &str), String> {
    let body = s.strip_prefix('"').ok_or("expected a \"string\"")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                _ => return Err("unsupported escape".into()),
            },
            c => out.push(c),
        }
    }
    Err("unterminated string".into())
}

/// The line without its `#` comment (outside strings), trimmed.
fn strip_comment(s: &str) -> &str {
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            '#' if !in_str => return s[..i].trim(),
            _ => {}
        }
    }
    s.trim()
}

/// Parse the config file subset: `key = "string"`, `key = 123`,
/// `key = ["a", "b"]` (may span lines), `#` comments.
pub fn parse_config(text: &str) -> std::result::Result<ConfigFile, String> {
    let mut cfg = ConfigFile::default();
    let mut lines = text.lines().enumerate();
    while let Some((no, line)) = lines.next() {
        let line = strip_comment(line);
        if line.is_empty() {
            continue;
        }
        let err = |m: &str| format!("line {}: {m}", no + 1);
        let (key, rest) = line
            .split_once('=')
            .ok_or_else(|| err("expected key = value"))?;
        let key = key.trim();
        let mut rest = rest.trim().to_string();
        let value = if rest.starts_with('[') {
            while !rest.trim_end().ends_with(']') {
                let Some((_, more)) = lines.next() else {
                    return Err(err("unterminated list"));
                };
                rest.push(' ');
                rest.push_str(strip_comment(more));
            }
            let mut items = Vec::new();
            let mut s = rest[1..].trim_start();
            loop {
                s = s.trim_start();
                if let Some(after) = s.strip_prefix(']') {
                    if !strip_comment(after).is_empty() {
                        return Err(err("trailing text after list"));
                    }
                    break;
                }
                let (item, after) = toml_string(s).map_err(|m| err(&m))?;
                items.push(item);
                s = after.trim_start();
                s = s.strip_prefix(',').unwrap_or(s);
            }
            TomlValue::List(items)
        } else if rest.starts_with('"') {
            let (v, after) = toml_string(&rest).map_err(|m| err(&m))?;
            if !strip_comment(after).is_empty() {
                return Err(err("trailing text after value"));
            }
            TomlValue::Str(v)
        } else if rest == "true" || rest == "false" {
            TomlValue::Bool(rest == "true")
        } else {
            TomlValue::Int(
                rest.parse()
                    .map_err(|_| err("expected a \"string\", number or list"))?,
            )
        };
        match (key, value) {
            ("server", TomlValue::Str(s)) => cfg.server = Some(s),
            ("store", TomlValue::Str(s)) => cfg.store = Some(s),
            ("token_file", TomlValue::Str(s)) => cfg.token_file = Some(s),
            ("ca_file", TomlValue::Str(s)) => cfg.ca_file = Some(s),
            ("platform", TomlValue::Str(s)) => cfg.platform = Some(s),
            ("images", TomlValue::List(l)) => cfg.images = Some(l),
            ("retry_for", TomlValue::Int(n)) => cfg.retry_for = Some(n),
            ("keep", TomlValue::Int(n)) => cfg.keep = Some(n),
            ("force_platform", TomlValue::Bool(b)) => cfg.force_platform = Some(b),
            ("deltas", TomlValue::Bool(b)) => cfg.deltas = Some(b),
            (k, _) => return Err(err(&format!("unknown key or wrong type: {k}"))),
        }
    }
    Ok(cfg)
}

fn read_token(path: &str) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("reading token file {path}: {e}")))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(usage(format!("token file {path} is empty")));
    }
    Ok(t)
}

/// The flags of `sync` (and of `verify --repair`, which syncs).
const SYNC_FLAGS: &[&str] = &[
    "--server",
    "--store",
    "--token",
    "--token-file",
    "--ca-file",
    "--platform",
    "--config",
    "--retry-for",
    "--keep",
    "--quiet",
    "-q",
    "--no-devices",
    "--no-zstd",
    "--no-deltas",
    "--force-platform",
];

/// Everything a sync run needs, from flags and the config file.
struct SyncSetup {
    store: Store,
    client: Client,
    opts: SyncOptions,
    quiet: bool,
    /// Retention: previous images kept per repository (None: keep all).
    keep: Option<u64>,
}

fn cmd_sync(a: &Args) -> Result<i32> {
    a.only("sync", SYNC_FLAGS)?;
    let mut s = sync_setup(a, false)?;
    heal_before_sync(&s.store, false, s.quiet)?;
    let result = sync(&s.store, &mut s.client, &s.opts);
    let code = finish_sync(&s.store, result, s.quiet)?;
    retain(&s, code)?;
    mark_checked(&s.store);
    Ok(code)
}

/// Move the self-check watermark. A failure (e.g. a full disk) only costs
/// the next sync some re-hashing, so it must not change the exit code.
fn mark_checked(store: &Store) {
    if let Err(e) = store.mark_checked() {
        eprintln!("warning: the store check watermark was not moved: {e}");
    }
}

/// The check that starts every sync (see `store::heal`): drop damaged
/// objects and the layers using them, which the sync then fetches again.
fn heal_before_sync(store: &Store, full: bool, quiet: bool) -> Result<()> {
    let h = store.heal(full, |p| eprintln!("damaged: {p}"))?;
    if !quiet && (h.rehashed > 0 || h.layers_removed > 0 || full) {
        eprintln!(
            "store check: {} object(s), {} re-hashed, {} damaged removed, {} layer(s) to rebuild",
            h.objects, h.rehashed, h.damaged, h.layers_removed
        );
    }
    Ok(())
}

/// Retention after a sync that ended 0 (or 8: only images not found
/// failed): for each repository whose images of this run all succeeded,
/// keep those images and the `keep` most recently synced
/// others; remove the rest, then gc.
fn retain(s: &SyncSetup, code: i32) -> Result<()> {
    let Some(keep) = s.keep else {
        return Ok(());
    };
    // Not after a failed image: gc would drop the loose objects its retry
    // resumes from (an image that is not found left none).
    if code != exit::OK && code != exit::NOT_FOUND {
        return Ok(());
    }
    let failed: Vec<ImageRef> = s
        .store
        .state()
        .last_sync
        .map(|r| {
            r.images
                .into_iter()
                .filter(|o| o.exit_code != 0)
                .map(|o| o.image)
                .collect()
        })
        .unwrap_or_default();
    let mut repos: Vec<&str> = s
        .opts
        .images
        .iter()
        .filter(|i| !failed.iter().any(|f| f.repository == i.repository))
        .map(|i| i.repository.as_str())
        .collect();
    repos.sort_unstable();
    repos.dedup();
    let mut removed = 0;
    for repo in repos {
        let mut others: Vec<_> = s
            .store
            .records()?
            .into_iter()
            .filter(|r| r.image.repository == repo && !s.opts.images.contains(&r.image))
            .collect();
        others.sort_by_key(|r| std::cmp::Reverse(r.synced_at));
        for r in others.iter().skip(keep as usize) {
            s.store.remove_record(&r.image)?;
            removed += 1;
            if !s.quiet {
                eprintln!("retention: removed {}", show_image_ref(&r.image));
            }
        }
    }
    let g = s.store.gc()?;
    if !s.quiet && (removed > 0 || g.bytes_freed > 0) {
        eprintln!(
            "gc: removed {} layer(s) and {} object(s), freed {}",
            g.layers_removed,
            g.objects_removed,
            human(g.bytes_freed)
        );
    }
    Ok(())
}

fn sync_setup(a: &Args, repair: bool) -> Result<SyncSetup> {
    let cfg = match a.value("--config") {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| usage(format!("reading config {p}: {e}")))?;
            parse_config(&text).map_err(|e| usage(format!("config {p}: {e}")))?
        }
        None => ConfigFile::default(),
    };
    let server = a
        .value("--server")
        .map(str::to_string)
        .or(cfg.server)
        .ok_or_else(|| usage("--server URL is required"))?;
    let store_path = a
        .value("--store")
        .map(str::to_string)
        .or(cfg.store)
        .ok_or_else(|| usage("--store DIR is required"))?;
    let token = match (
        a.value("--token"),
        a.value("--token-file"),
        cfg.token_file.as_deref(),
    ) {
        (Some(t), _, _) => Some(t.to_string()),
        (None, Some(f), _) | (None, None, Some(f)) => Some(read_token(f)?),
        _ => None,
    };
    let cfg_force_platform = cfg.force_platform.unwrap_or(false);
    let cfg_deltas = cfg.deltas.unwrap_or(true);
    let platform = match a.value("--platform").map(str::to_string).or(cfg.platform) {
        Some(p) => parse_platform(&p)
            .ok_or_else(|| usage(format!("bad platform {p:?} (os/arch[/variant])")))?,
        None => default_platform(),
    };
    let image_args: Vec<String> = if !a.positional.is_empty() {
        a.positional.clone()
    } else if repair {
        // verify --repair: what the store holds.
        let store = Store::open(Path::new(&store_path), Access::ReadOnly)?;
        store
            .records()?
            .iter()
            .map(|r| show_image_ref(&r.image))
            .collect()
    } else {
        cfg.images.unwrap_or_default()
    };
    if image_args.is_empty() && !repair {
        return Err(usage("no IMAGE to sync"));
    }
    if image_args.len() > layerlink_proto::limits::MAX_IMAGES_PER_PLAN {
        return Err(usage("too many images for one sync"));
    }
    let images = image_args
        .iter()
        .map(|s| image_arg(s))
        .collect::<Result<Vec<_>>>()?;
    let retry_for = match a.value("--retry-for") {
        Some(s) => s
            .parse()
            .map_err(|_| usage(format!("--retry-for {s:?} is not a number of seconds")))?,
        None => cfg.retry_for.unwrap_or(300),
    };
    let client_cfg = ClientConfig {
        server,
        token,
        ca_file: a
            .value("--ca-file")
            .map(PathBuf::from)
            .or(cfg.ca_file.map(PathBuf::from)),
        no_zstd: a.has(&["--no-zstd"]),
        no_deltas: a.has(&["--no-deltas"]) || !cfg_deltas,
    };
    let client = Client::new(&client_cfg)?;
    let store = Store::open(Path::new(&store_path), Access::Exclusive)?;
    let quiet = a.has(&["--quiet", "-q"]);
    let opts = SyncOptions {
        platform,
        images,
        retry_for: Duration::from_secs(retry_for),
        first_backoff: Duration::from_secs(1),
        progress: !quiet,
        allow_devices: !a.has(&["--no-devices"]),
        force_platform: a.has(&["--force-platform"]) || cfg_force_platform,
    };
    let keep = match a.value("--keep") {
        Some(s) => Some(
            s.parse()
                .map_err(|_| usage(format!("--keep {s:?} is not a number of images")))?,
        ),
        None => cfg.keep,
    };
    Ok(SyncSetup {
        store,
        client,
        opts,
        quiet,
        keep,
    })
}

/// Record a sync's outcome in the store's state (for `status`), print the
/// summary line, and return the exit code.
fn finish_sync(store: &Store, result: Result<SyncSummary>, quiet: bool) -> Result<i32> {
    let (code, message) = match &result {
        Ok(s) if !s.failed.is_empty() => {
            let failed: Vec<String> = s
                .failed
                .iter()
                .map(|f| {
                    let why = if f.exit_code == exit::NOT_FOUND {
                        "not found".to_string()
                    } else {
                        format!("exit {}", f.exit_code)
                    };
                    format!("{} ({why})", show_image_ref(&f.image))
                })
                .collect();
            (
                s.exit_code(),
                format!(
                    "{} of {} image(s) failed: {}; {} synced, {} up to date",
                    s.failed.len(),
                    s.failed.len() + s.updated.len() + s.up_to_date.len(),
                    failed.join(", "),
                    s.updated.len(),
                    s.up_to_date.len()
                ),
            )
        }
        Ok(s) if s.updated.is_empty() => (0, "already up to date".to_string()),
        Ok(s) => (
            0,
            format!(
                "synced {} image(s), {} layer(s), {} new",
                s.updated.len(),
                s.layers,
                human(s.new_bytes)
            ),
        ),
        Err(e) => (e.exit_code(), e.to_string()),
    };
    let images = match &result {
        Ok(s) => {
            let ok = |i: &ImageRef, m: &str| ImageOutcome {
                image: i.clone(),
                exit_code: 0,
                message: m.to_string(),
            };
            let mut v: Vec<ImageOutcome> = s
                .updated
                .iter()
                .map(|i| ok(i, "synced"))
                .chain(s.up_to_date.iter().map(|i| ok(i, "up to date")))
                .chain(s.failed.iter().map(|f| ImageOutcome {
                    image: f.image.clone(),
                    exit_code: f.exit_code as u8,
                    message: f.message.clone(),
                }))
                .collect();
            v.sort_by(|a, b| a.image.cmp(&b.image));
            v
        }
        Err(_) => Vec::new(),
    };
    let mut st = store.state();
    st.last_sync = Some(SyncResult {
        at: now(),
        exit_code: code as u8,
        message: message.clone(),
        images,
    });
    let _ = store.save_state(&st);
    let summary = result?;
    if !quiet || code != exit::OK {
        eprintln!(
            "{message}{}",
            if summary.attempts > 1 {
                format!(" after {} attempts", summary.attempts)
            } else {
                String::new()
            }
        );
    }
    Ok(code)
}

fn cmd_status(a: &Args) -> Result<i32> {
    a.only("status", &["--store", "--json"])?;
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    let records = store.records()?;
    let layers = store.committed_layers()?;
    let (mut variants, mut loose, mut object_bytes) = (0u64, 0u64, 0u64);
    store.for_each_object(|_, _, st| {
        variants += 1;
        if st.st_nlink == 1 {
            loose += 1;
        }
        object_bytes += st.st_blocks as u64 * 512;
        Ok(())
    })?;
    let mut tree_bytes = 0u64;
    for l in &layers {
        let fd = store.open_layer(l)?;
        let mut p = Vec::new();
        walk_tree(std::os::fd::AsFd::as_fd(&fd), &mut p, &mut |_, _, st| {
            if st.st_nlink == 1 || file_type(st) == FileType::Directory {
                tree_bytes += st.st_blocks as u64 * 512;
            }
            Ok(())
        })?;
    }
    let used: std::collections::BTreeSet<_> = records
        .iter()
        .flat_map(|r| r.layers.iter().copied())
        .collect();
    let st = store.state();
    if a.has(&["--json"]) {
        let images = records
            .iter()
            .map(|r| {
                Value::obj([
                    ("image", Value::str(show_image_ref(&r.image))),
                    ("manifest_digest", Value::str(r.manifest_digest.to_string())),
                    (
                        "layers",
                        Value::Arr(r.layers.iter().map(|l| Value::str(l.to_string())).collect()),
                    ),
                    ("synced_at", Value::str(rfc3339(r.synced_at))),
                ])
            })
            .collect();
        let last = match &st.last_sync {
            Some(s) => Value::obj([
                ("at", Value::str(rfc3339(s.at))),
                ("exit_code", Value::num(s.exit_code)),
                ("message", Value::str(s.message.clone())),
                (
                    "images",
                    Value::Arr(
                        s.images
                            .iter()
                            .map(|o| {
                                Value::obj([
                                    ("image", Value::str(show_image_ref(&o.image))),
                                    ("ok", Value::Bool(o.exit_code == 0)),
                                    ("exit_code", Value::num(o.exit_code)),
                                    (
                                        "not_found",
                                        Value::Bool(o.exit_code as i32 == exit::NOT_FOUND),
                                    ),
                                    ("message", Value::str(o.message.clone())),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ]),
            None => Value::Null,
        };
        let v = Value::obj([
            ("store", Value::str(store.root().to_string_lossy())),
            ("images", Value::Arr(images)),
            ("layers", Value::num(layers.len())),
            (
                "unused_layers",
                Value::num(layers.iter().filter(|l| !used.contains(l)).count()),
            ),
            ("objects", Value::num(variants)),
            ("loose_objects", Value::num(loose)),
            ("disk_bytes", Value::num(object_bytes + tree_bytes)),
            ("last_sync", last),
        ]);
        println!("{}", v.to_compact());
        return Ok(exit::OK);
    }
    println!("store {}", store.root().display());
    println!("images:");
    if records.is_empty() {
        println!("  (none)");
    }
    for r in &records {
        println!(
            "  {}  {}  {} layers  synced {}",
            show_image_ref(&r.image),
            r.manifest_digest,
            r.layers.len(),
            rfc3339(r.synced_at)
        );
    }
    println!(
        "layers: {} committed ({} unused)",
        layers.len(),
        layers.iter().filter(|l| !used.contains(l)).count()
    );
    println!("objects: {variants} variants ({loose} loose)");
    println!("disk used: {}", human(object_bytes + tree_bytes));
    match &st.last_sync {
        Some(s) if s.exit_code == 0 => {
            println!("last sync: ok at {}: {}", rfc3339(s.at), s.message)
        }
        Some(s) => println!(
            "last sync: failed (exit {}) at {}: {}",
            s.exit_code,
            rfc3339(s.at),
            s.message
        ),
        None => println!("last sync: never"),
    }
    if let Some(s) = &st.last_sync {
        for o in s.images.iter().filter(|o| o.exit_code != 0) {
            println!(
                "  {}: failed (exit {}): {}",
                show_image_ref(&o.image),
                o.exit_code,
                o.message
            );
        }
    }
    Ok(exit::OK)
}

fn cmd_checkout(a: &Args) -> Result<i32> {
    a.only("checkout", &["--store", "--read-only"])?;
    let [image, dest] = a.positional.as_slice() else {
        return Err(usage("checkout needs IMAGE and DEST"));
    };
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    checkout::checkout(
        &store,
        &image_arg(image)?,
        Path::new(dest),
        a.has(&["--read-only"]),
    )?;
    Ok(exit::OK)
}

fn cmd_layers(a: &Args) -> Result<i32> {
    a.only("layers", &["--store"])?;
    let [image] = a.positional.as_slice() else {
        return Err(usage("layers needs IMAGE"));
    };
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    println!("{}", checkout::lowerdir(&store, &image_arg(image)?)?);
    Ok(exit::OK)
}

fn cmd_gc(a: &Args) -> Result<i32> {
    a.only("gc", &["--store"])?;
    let store = Store::open(&a.store()?, Access::Exclusive)?;
    let s = store.gc()?;
    println!(
        "removed {} layer(s) and {} object(s), freed {} ({} bytes)",
        s.layers_removed,
        s.objects_removed,
        human(s.bytes_freed),
        s.bytes_freed
    );
    Ok(exit::OK)
}

fn cmd_verify(a: &Args) -> Result<i32> {
    if a.has(&["--repair"]) {
        let mut flags = SYNC_FLAGS.to_vec();
        flags.push("--repair");
        a.only("verify --repair", &flags)?;
        return cmd_repair(a);
    }
    a.only("verify", &["--store"])?;
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    let s = store.verify(|p| eprintln!("problem: {p}"))?;
    println!(
        "checked {} object(s), {} layer(s), {} image(s): {} problem(s)",
        s.objects, s.layers, s.images, s.problems
    );
    Ok(if s.problems > 0 {
        exit::INTEGRITY
    } else {
        exit::OK
    })
}

/// `verify --repair`: re-hash everything, drop what is damaged, sync the
/// held images (by the names they were synced as) to fetch it again, then
/// verify.
fn cmd_repair(a: &Args) -> Result<i32> {
    let mut s = sync_setup(a, true)?;
    heal_before_sync(&s.store, true, false)?;
    let mut code = exit::OK;
    if !s.opts.images.is_empty() {
        let result = sync(&s.store, &mut s.client, &s.opts);
        code = finish_sync(&s.store, result, s.quiet)?;
    }
    mark_checked(&s.store);
    let v = s.store.verify(|p| eprintln!("problem: {p}"))?;
    println!(
        "checked {} object(s), {} layer(s), {} image(s): {} problem(s) left",
        v.objects, v.layers, v.images, v.problems
    );
    Ok(if v.problems > 0 {
        exit::INTEGRITY
    } else {
        code
    })
}

/// `remove IMAGE...`: forget the images, then gc what no other image uses.
fn cmd_remove(a: &Args) -> Result<i32> {
    a.only("remove", &["--store"])?;
    if a.positional.is_empty() {
        return Err(usage("remove needs IMAGE..."));
    }
    let images = a
        .positional
        .iter()
        .map(|s| image_arg(s))
        .collect::<Result<Vec<_>>>()?;
    let store = Store::open(&a.store()?, Access::Exclusive)?;
    for i in &images {
        if store.remove_record(i)? {
            println!("removed {}", show_image_ref(i));
        } else {
            println!("{} is not in the store", show_image_ref(i));
        }
    }
    let s = store.gc()?;
    println!(
        "removed {} layer(s) and {} object(s), freed {} ({} bytes)",
        s.layers_removed,
        s.objects_removed,
        human(s.bytes_freed),
        s.bytes_freed
    );
    Ok(exit::OK)
}

fn cmd_apply_archive(a: &Args) -> Result<i32> {
    a.only(
        "apply-archive",
        &["--store", "--no-devices", "--quiet", "-q"],
    )?;
    let [file] = a.positional.as_slice() else {
        return Err(usage("apply-archive needs FILE (or - for stdin)"));
    };
    let store = Store::open(&a.store()?, Access::Exclusive)?;
    let mut opts = ApplyOptions::new(Vec::new());
    opts.any_layers = true;
    opts.allow_devices = !a.has(&["--no-devices"]);
    opts.progress = !a.has(&["--quiet", "-q"]);
    let mut applier = Applier::new(&store, opts)?;
    if file == "-" {
        applier.apply_archive(std::io::stdin().lock())?;
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io(format!("opening {file}"), e))?;
        applier.apply_archive(std::io::BufReader::with_capacity(64 * 1024, f))?;
    }
    let pending = applier.pending_digests();
    if !pending.is_empty() {
        return Err(Error::integrity(format!(
            "{} referenced object(s) are not in the store (first: {}); layers left uncommitted",
            pending.len(),
            pending[0]
        )));
    }
    for (d, s) in applier.committed() {
        println!(
            "{d}: {} entries, {} new files, {} referenced",
            s.entries, s.new_files, s.referenced_files
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_config_subset() {
        let cfg = parse_config(
            "# device config\nserver = \"https://reg.example:5000\"\nstore = \"/var/lib/ll\" # here\n\
             images = [\"a:v1\",\n  \"b@sha256:00\", # second\n]\nretry_for = 60\n",
        )
        .unwrap();
        assert_eq!(cfg.server.as_deref(), Some("https://reg.example:5000"));
        assert_eq!(cfg.store.as_deref(), Some("/var/lib/ll"));
        assert_eq!(
            cfg.images,
            Some(vec!["a:v1".to_string(), "b@sha256:00".to_string()])
        );
        assert_eq!(cfg.retry_for, Some(60));
        assert!(parse_config("bogus = \"x\"").is_err());
        assert!(parse_config("server = https://x").is_err());
        assert!(parse_config("images = [\"a\"").is_err());
    }

    #[test]
    fn parses_flags() {
        let raw: Vec<OsString> = ["--store=/s", "--server", "http://x", "-q", "img:v1"]
            .iter()
            .map(OsString::from)
            .collect();
        let a = parse_args(&raw).unwrap();
        assert_eq!(a.value("--store"), Some("/s"));
        assert_eq!(a.value("--server"), Some("http://x"));
        assert!(a.has(&["-q"]));
        assert_eq!(a.positional, vec!["img:v1"]);
        assert!(parse_args(&[OsString::from("--bogus")]).is_err());
        assert!(parse_args(&[OsString::from("--server")]).is_err());
    }

    #[test]
    fn platforms() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(
            (p.architecture.as_str(), p.variant.as_deref()),
            ("arm64", Some("v8"))
        );
        assert!(parse_platform("linux").is_none());
    }
}
