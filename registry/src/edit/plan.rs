//! The request checked before anything is read: paths normalised,
//! layer indexes checked against the image, put and insert sources
//! checked.

use super::request::{user_path, EditRequest, InsertOp, InsertSource, PutOp, PutSource};
use super::scan::show_path;
use super::tar::{NewEntry, NewKind};
use super::tar_rewrite::Put;
use super::{Backend, EditError};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

/// The request with paths normalised and indexes checked against `n` layers.
pub(super) struct Plan {
    /// The layer puts and removes apply to.
    pub layer: Option<usize>,
    /// Normalised paths to remove.
    pub removes: Vec<Vec<u8>>,
    /// Puts: dest path, op.
    pub puts: Vec<(Vec<u8>, PutOp)>,
    /// Layers to delete.
    pub deleted: BTreeSet<usize>,
    /// Layers to insert.
    pub inserts: Vec<InsertOp>,
}

impl Plan {
    pub fn new(req: &EditRequest) -> Result<Plan, EditError> {
        let has_edit = !req.puts.is_empty() || !req.removes.is_empty();
        if !has_edit && req.delete_layers.is_empty() && req.inserts.is_empty() {
            return Err(EditError::Invalid(
                "nothing to do: give --put, --rm, --delete-layer or --insert-layer".into(),
            ));
        }
        if has_edit && req.layer.is_none() {
            return Err(EditError::Invalid(
                "--put and --rm need --layer K (0 is the base layer)".into(),
            ));
        }
        if !has_edit && req.layer.is_some() {
            return Err(EditError::Invalid(
                "--layer given without any --put or --rm".into(),
            ));
        }
        let mut removes = Vec::new();
        for r in &req.removes {
            let p = user_path(r)?;
            if !removes.contains(&p) {
                removes.push(p);
            }
        }
        let mut puts: Vec<(Vec<u8>, PutOp)> = Vec::new();
        for op in &req.puts {
            let p = user_path(&op.dest)?;
            let name = p.rsplit(|&c| c == b'/').next().unwrap_or_default();
            if name.starts_with(layerlink_proto::archive::WHITEOUT_PREFIX) {
                return Err(EditError::Invalid(format!(
                    "{}: names starting with .wh. are whiteouts; to hide a path, --rm it from the layer that has it",
                    show_path(&p)
                )));
            }
            if puts.iter().any(|(q, _)| *q == p) {
                return Err(EditError::Invalid(format!(
                    "{} is put twice",
                    show_path(&p)
                )));
            }
            if let Some(mode) = op.mode {
                if mode > 0o7777 {
                    return Err(EditError::Invalid(format!(
                        "mode {mode:o} is not a permission mode"
                    )));
                }
            }
            puts.push((p, op.clone()));
        }
        let mut deleted = BTreeSet::new();
        for &d in &req.delete_layers {
            if !deleted.insert(d) {
                return Err(EditError::Invalid(format!("layer {d} is deleted twice")));
            }
        }
        if let Some(k) = req.layer {
            if has_edit && deleted.contains(&k) {
                return Err(EditError::Invalid(format!(
                    "layer {k} cannot be both edited and deleted"
                )));
            }
        }
        Ok(Plan {
            layer: req.layer.filter(|_| has_edit),
            removes,
            puts,
            deleted,
            inserts: req.inserts.clone(),
        })
    }

    pub fn check_indexes(&self, n: usize) -> Result<(), EditError> {
        let range = |i: usize, what: &str| {
            if i < n {
                Ok(())
            } else {
                Err(EditError::Invalid(format!(
                    "{what} {i} is out of range: the image has {n} layers (0..={})",
                    n.saturating_sub(1)
                )))
            }
        };
        if let Some(k) = self.layer {
            range(k, "--layer")?;
        }
        for &d in &self.deleted {
            range(d, "--delete-layer")?;
        }
        for ins in &self.inserts {
            if ins.at > n {
                return Err(EditError::Invalid(format!(
                    "--insert-layer position {} is out of range: the image has {n} layers (0..={n}, {n} = on top)",
                    ins.at
                )));
            }
        }
        if n - self.deleted.len() + self.inserts.len() == 0 {
            return Err(EditError::Invalid(
                "the edit would leave the image without layers".into(),
            ));
        }
        Ok(())
    }

    pub fn note(&self) -> String {
        let mut parts: Vec<String> = self
            .removes
            .iter()
            .map(|p| format!("rm {}", show_path(p)))
            .collect();
        parts.extend(
            self.puts
                .iter()
                .map(|(p, _)| format!("put {}", show_path(p))),
        );
        format!("layerlink edit: {}", parts.join(", "))
    }
}

/// A put with its source checked and its entry header decided.
pub(super) fn prepare_put(
    backend: &dyn Backend,
    path: &[u8],
    op: &PutOp,
) -> Result<Put, EditError> {
    let (source, size, mut entry) = match &op.source {
        PutSource::File(src) => {
            let meta = std::fs::metadata(src).map_err(|e| {
                EditError::Invalid(format!(
                    "--put source {} cannot be read: {e}",
                    src.display()
                ))
            })?;
            if !meta.is_file() {
                return Err(EditError::Invalid(format!(
                    "--put source {} is not a regular file",
                    src.display()
                )));
            }
            std::fs::File::open(src).map_err(|e| {
                EditError::Invalid(format!(
                    "--put source {} cannot be read: {e}",
                    src.display()
                ))
            })?;
            let entry = (
                meta.mode() & 0o7777,
                u64::from(meta.uid()),
                u64::from(meta.gid()),
                meta.mtime().max(0) as u64,
            );
            (src.clone(), meta.len(), entry)
        }
        PutSource::Blob(d) => {
            let p = backend.blob_path(d)?.ok_or_else(|| {
                EditError::NotFound(format!(
                    "put source blob {d} is not in {}",
                    backend.describe()
                ))
            })?;
            let len = std::fs::metadata(&p)?.len();
            (p, len, (0o644, 0, 0, crate::clock::now_secs()))
        }
    };
    if let Some(m) = op.mode {
        entry.0 = m;
    }
    if let Some(u) = op.uid {
        entry.1 = u;
    }
    if let Some(g) = op.gid {
        entry.2 = g;
    }
    if let Some(t) = op.mtime {
        entry.3 = t;
    }
    Ok(Put {
        entry: NewEntry {
            path: path.to_vec(),
            kind: NewKind::File { size },
            mode: entry.0,
            uid: entry.1,
            gid: entry.2,
            mtime: entry.3,
            uname: Vec::new(),
            gname: Vec::new(),
            xattrs: Vec::new(),
        },
        source,
        parents: Vec::new(),
    })
}

/// Check the inserted sources exist before any work.
pub(super) fn check_insert_sources(
    backend: &dyn Backend,
    inserts: &[InsertOp],
) -> Result<(), EditError> {
    for op in inserts {
        match &op.source {
            InsertSource::Dir(p) => {
                if !std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false) {
                    return Err(EditError::Invalid(format!(
                        "--insert-layer: {} is not a directory",
                        p.display()
                    )));
                }
            }
            InsertSource::Tar(p) => {
                if !std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false) {
                    return Err(EditError::Invalid(format!(
                        "--insert-layer: {} is not a file",
                        p.display()
                    )));
                }
            }
            InsertSource::Blob(d) => {
                if backend.blob_path(d)?.is_none() {
                    return Err(EditError::NotFound(format!(
                        "--insert-layer: blob {d} is not in {}",
                        backend.describe()
                    )));
                }
            }
        }
    }
    Ok(())
}
