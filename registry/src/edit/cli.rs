//! `layerlink-registry edit`: the command line of [`super::edit_image`].
//!
//! ```text
//! layerlink-registry edit (--layout DIR | --data DIR) IMAGE [--tag NEWTAG] [--platform OS/ARCH[/VARIANT]]
//!     [--layer K (--put SRC:/DEST | --rm /PATH)... [--mode OCTAL] [--uid N] [--gid N] [--mtime SECS]]
//!     [--delete-layer K]... [--insert-layer K:DIR|K:TAR]... [--dry-run] [--json]
//! ```
//!
//! Warnings go to stderr, the digest of what the tag now names to stdout
//! (the whole outcome as JSON with `--json`). Exit status: see [`exit_code`].

use super::registry::{parse_image_ref, RegistryImage};
use super::{
    edit_image, edit_layout, EditError, EditOutcome, EditRequest, InsertOp, InsertSource, PutOp,
    PutSource,
};
use crate::store::storage::Storage;
use std::path::PathBuf;

/// Arguments of `layerlink-registry edit`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Layer indexes are 0-based from the base layer and refer to the image as it was.
--put/--rm apply to --layer K (removals first, then puts). Paths are root-relative: /etc/motd.

Examples:
  edit --layout ./oci app --layer 1 --put ./motd:/etc/motd --rm /var/cache/apt
  edit --data /var/lib/layerlink edge/app:v1 --tag v1-fixed --delete-layer 2
  edit --layout ./oci app --insert-layer 0:./rootfs-extra --platform linux/arm64")]
pub struct EditArgs {
    /// Edit an OCI image-layout directory (offline).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "data",
        required_unless_present = "data"
    )]
    pub layout: Option<PathBuf>,
    /// Edit the registry store in this data directory.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Registry config file (with `--data`): its `[storage]` section says
    /// where the metadata (PostgreSQL) and the blobs (S3) are.
    #[arg(long, value_name = "FILE", requires = "data")]
    pub config: Option<PathBuf>,
    /// The image. Layout: its ref name (tag) or a sha256: digest. Registry: REPO:TAG or REPO@sha256:….
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The operations (boxed: keeps the subcommand enum small).
    #[command(flatten)]
    pub ops: Box<EditOps>,
}

/// The operations and options of `edit`.
#[derive(Debug, Clone, clap::Args)]
pub struct EditOps {
    /// Tag the result with this tag (default: the tag IMAGE names, moved in place).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// For an image index: the platform whose manifest to edit.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// The layer --put and --rm change.
    #[arg(long, value_name = "K")]
    pub layer: Option<usize>,
    /// Write the local file SRC at /DEST in the layer (replacing what is there).
    #[arg(long = "put", value_name = "SRC:/DEST")]
    pub put: Vec<String>,
    /// Remove /PATH (and everything under it) from the layer.
    #[arg(long = "rm", value_name = "/PATH")]
    pub rm: Vec<String>,
    /// Mode of put files (octal, e.g. 0644; default: the source's).
    #[arg(long, value_name = "OCTAL")]
    pub mode: Option<String>,
    /// Owner of put files (default: the source's).
    #[arg(long, value_name = "UID")]
    pub uid: Option<u64>,
    /// Group of put files (default: the source's).
    #[arg(long, value_name = "GID")]
    pub gid: Option<u64>,
    /// Modification time of put files, seconds since the epoch (default: the source's).
    #[arg(long, value_name = "SECONDS")]
    pub mtime: Option<u64>,
    /// Delete layer K.
    #[arg(long = "delete-layer", value_name = "K")]
    pub delete_layer: Vec<usize>,
    /// Insert a layer made from a directory or a tar file (plain, gzip or zstd) at position K.
    #[arg(long = "insert-layer", value_name = "K:DIR|K:TAR")]
    pub insert_layer: Vec<String>,
    /// Build and check everything, print warnings, store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl EditArgs {
    /// The request these arguments describe.
    pub fn request(&self) -> Result<EditRequest, EditError> {
        let mode = self
            .ops
            .mode
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .map_err(|_| EditError::Invalid(format!("--mode {m:?} is not an octal mode")))
            })
            .transpose()?;
        let puts = self
            .ops
            .put
            .iter()
            .map(|spec| {
                let (src, dest) = spec
                    .find(":/")
                    .map(|i| (&spec[..i], &spec[i + 1..]))
                    .filter(|(s, _)| !s.is_empty())
                    .ok_or_else(|| {
                        EditError::Invalid(format!("--put {spec:?} is not SRC:/DEST"))
                    })?;
                Ok(PutOp {
                    dest: dest.to_owned(),
                    source: PutSource::File(PathBuf::from(src)),
                    mode,
                    uid: self.ops.uid,
                    gid: self.ops.gid,
                    mtime: self.ops.mtime,
                })
            })
            .collect::<Result<Vec<_>, EditError>>()?;
        let inserts = self
            .ops
            .insert_layer
            .iter()
            .map(|spec| {
                let (k, src) = spec
                    .split_once(':')
                    .and_then(|(k, s)| k.parse::<usize>().ok().map(|k| (k, s)))
                    .filter(|(_, s)| !s.is_empty())
                    .ok_or_else(|| {
                        EditError::Invalid(format!("--insert-layer {spec:?} is not K:DIR or K:TAR"))
                    })?;
                let path = PathBuf::from(src);
                let source = match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => InsertSource::Dir(path),
                    Ok(_) => InsertSource::Tar(path),
                    Err(e) => {
                        return Err(EditError::Invalid(format!(
                            "--insert-layer {}: {e}",
                            path.display()
                        )));
                    }
                };
                Ok(InsertOp { at: k, source })
            })
            .collect::<Result<Vec<_>, EditError>>()?;
        if self.ops.put.is_empty()
            && (mode.is_some()
                || self.ops.uid.is_some()
                || self.ops.gid.is_some()
                || self.ops.mtime.is_some())
        {
            return Err(EditError::Invalid(
                "--mode/--uid/--gid/--mtime only apply to --put".into(),
            ));
        }
        Ok(EditRequest {
            tag: self.ops.tag.clone(),
            platform: self.ops.platform.clone(),
            layer: self.ops.layer,
            puts,
            removes: self.ops.rm.clone(),
            delete_layers: self.ops.delete_layer.clone(),
            inserts,
            dry_run: self.ops.dry_run,
        })
    }

    /// Run the edit; warnings are in the outcome (not printed).
    pub fn run(&self) -> Result<EditOutcome, EditError> {
        let req = self.request()?;
        match (&self.layout, &self.data) {
            (Some(dir), _) => edit_layout(dir, &self.image, &req),
            (None, Some(data)) => {
                let (repo, reference) = parse_image_ref(&self.image)?;
                let backends = match &self.config {
                    Some(path) => {
                        crate::config::Config::load(path)
                            .map_err(|e| EditError::Invalid(format!("{e:#}")))?
                            .storage
                    }
                    None => Default::default(),
                };
                let storage = Storage::open_with(data, &backends)?;
                edit_image(&RegistryImage::new(&storage, &repo)?, &reference, &req)
            }
            (None, None) => Err(EditError::Invalid("give --layout DIR or --data DIR".into())),
        }
    }
}

/// `layerlink-registry edit`: run, print warnings to stderr and the new
/// digest (or `--json` outcome) to stdout. The error is an [`EditError`]
/// inside the `anyhow::Error` (see [`exit_code`]).
pub fn cli_main(args: EditArgs) -> anyhow::Result<()> {
    let outcome = args.run()?;
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    if args.ops.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", outcome.digest);
    }
    if !outcome.committed {
        eprintln!("dry run: nothing stored, {} not moved", outcome.tag);
    }
    Ok(())
}

/// The process exit status for an error of [`cli_main`]: 2 for a bad
/// request, 3 for something not found, 4 for corrupt stored data, 5 when
/// the tag moved during the edit, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match err.downcast_ref::<EditError>() {
        Some(EditError::Invalid(_)) => 2,
        Some(EditError::NotFound(_)) => 3,
        Some(EditError::Corrupt(_)) => 4,
        Some(EditError::Conflict(_)) => 5,
        _ => 1,
    }
}
