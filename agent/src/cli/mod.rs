//! Command line: `--help`, the dispatch to the commands, and the exit code.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | `--help`, `--version`, dispatch, usage errors |
//! | `args.rs` | flags and positional arguments (`lexopt`; its size cost is in `ARCHITECTURE.md`) |
//! | `config.rs` | the `--config` file: a TOML subset |
//! | `sync.rs` | `sync` and `verify --repair`: flags + config → a sync run, its summary, retention |
//! | `status.rs` | `status` (text and `--json`) |
//! | `commands.rs` | `checkout`, `layers`, `gc`, `verify`, `remove`, `apply-archive` |

mod args;
mod commands;
mod config;
mod status;
mod sync;

use crate::error::{exit, Error, Result};
use crate::store::record::parse_image_ref;
use args::parse_args;
use layerlink_proto::msg::ImageRef;
use std::ffi::OsString;

pub use config::{parse_config, ConfigFile};

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
                      retry_for, keep, force_platform, deltas, trust_key,
                      verify_layers from FILE
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
  --verify-layers M   on: before a new layer is committed, check that its tree
                      hashes, with the registry's framing, to its diff_id (exit 5
                      if not); warn for a layer the registry has no framing for.
                      require (default with --trust-key): also refuse such a
                      layer (exit 5). off (default without): no check
                      (config: verify_layers = \"on\")
  --trust-key PEM     apply only images signed with this ECDSA P-256 key
                      (cosign.pub; cosign key-pair signatures; an image asked
                      by tag needs `cosign sign -a tag=TAG`); exit 11 otherwise
                      (config: trust_key = \"/etc/layerlink/cosign.pub\")
  -q, --quiet         no progress lines on stderr

checkout options:
  --read-only         rootfs/ is a read-only overlayfs mount of the store's layers
                      instead of a copy: nothing copied, no write through it can
                      reach the store (EROFS, root too). Needs root; exit 10 when
                      it cannot mount (never a writable fallback). Undo with
                      `umount DEST/rootfs && rm -r DEST`; gc keeps the layers of
                      a mounted checkout. The mount does not survive a reboot.

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
  11 not trusted (--trust-key): no valid signature by the key for the image's
     manifest, repository and tag; nothing of it was stored
  checkout --read-only only:
  10 the read-only mount is unavailable (not root, no overlayfs, too many
     layers for one mount); nothing is left in DEST
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

pub(super) fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
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
        "sync" => sync::cmd_sync(&a),
        "status" => status::cmd_status(&a),
        "checkout" => commands::cmd_checkout(&a),
        "layers" => commands::cmd_layers(&a),
        "gc" => commands::cmd_gc(&a),
        "remove" => commands::cmd_remove(&a),
        "verify" => commands::cmd_verify(&a),
        "apply-archive" => commands::cmd_apply_archive(&a),
        other => Err(usage(format!("unknown command {other:?}"))),
    }
}

pub(super) fn image_arg(s: &str) -> Result<ImageRef> {
    parse_image_ref(s).ok_or_else(|| usage(format!("{s:?} is not repo:tag or repo@sha256:<hex>")))
}
