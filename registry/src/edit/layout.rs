//! Backend: an OCI image-layout directory, as skopeo (`oci:DIR:TAG`) and
//! umoci write it.
//!
//! ```text
//! DIR/
//! ├── oci-layout              {"imageLayoutVersion": "1.0.0"}
//! ├── index.json              top-level descriptors; a tag is the
//! │                           org.opencontainers.image.ref.name annotation
//! ├── blobs/sha256/<hex>      layers, configs, manifests, indexes
//! └── .layerlink-edit-<rand>/ scratch of an edit in progress (removed after)
//! ```
//!
//! New blobs are renamed into `blobs/sha256/` (an existing blob is the
//! same bytes: kept), then `index.json` is replaced atomically (temp file,
//! fsync, rename, fsync of the directory). Nothing is deleted: old blobs
//! stay until a `umoci gc`. Two edits of one layout at the same time are
//! not coordinated (the last `index.json` write wins).

use super::{layer_digests, Backend, Commit, EditError, NewDoc, Resolved, Scratch};
use crate::oci::{self, Descriptor, REF_NAME};
use anyhow::Context;
use layerlink_proto::Digest;
use serde_json::{Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Scratch directories older than this belong to killed edits.
const STALE_SCRATCH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Use the layout at `root` (it must have `oci-layout` and `index.json`).
    pub fn open(root: &Path) -> Result<Layout, EditError> {
        for f in ["oci-layout", "index.json"] {
            if !root.join(f).is_file() {
                return Err(EditError::NotFound(format!(
                    "{} is not an OCI image layout (no {f})",
                    root.display()
                )));
            }
        }
        Ok(Layout {
            root: root.to_owned(),
        })
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(d.hex())
    }

    /// The parsed `index.json`.
    pub fn index(&self) -> Result<Value, EditError> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EditError::Corrupt(format!("{} is not valid JSON: {e}", path.display())))
    }

    fn entries(index: &Value) -> Vec<Value> {
        index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn ref_name(entry: &Value) -> Option<&str> {
        entry
            .pointer("/annotations")
            .and_then(|a| a.get(REF_NAME))
            .and_then(Value::as_str)
    }

    fn find<'a>(entries: &'a [Value], reference: &str) -> Option<&'a Value> {
        if reference.starts_with("sha256:") {
            entries
                .iter()
                .find(|e| e.get("digest").and_then(Value::as_str) == Some(reference))
        } else {
            entries
                .iter()
                .find(|e| Layout::ref_name(e) == Some(reference))
        }
    }

    fn store_doc(&self, doc: &NewDoc) -> Result<(), EditError> {
        let target = self.blob(&doc.digest);
        if target.exists() {
            return Ok(());
        }
        let tmp = self
            .root
            .join("blobs")
            .join("sha256")
            .join(format!(".{}.tmp", doc.digest.hex()));
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&doc.bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &target).with_context(|| format!("renaming into {}", target.display()))?;
        Ok(())
    }
}

impl Backend for Layout {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.root.display())
    }

    fn resolve(&self, reference: &str) -> Result<Option<Resolved>, EditError> {
        let index = self.index()?;
        let entries = Layout::entries(&index);
        let Some(entry) = Layout::find(&entries, reference) else {
            return Ok(None);
        };
        let desc = Descriptor::from_json(entry, "index.json entry")?;
        let bytes = super::read_verified(&self.blob(&desc.digest), &desc.digest, "manifest")?;
        let media_type = if desc.media_type.is_empty() {
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| oci::OCI_MANIFEST.to_owned())
        } else {
            desc.media_type.clone()
        };
        Ok(Some(Resolved {
            bytes,
            media_type,
            digest: desc.digest,
            // Found by digest: no tag was named, even if the entry has one.
            tag: if reference.starts_with("sha256:") {
                None
            } else {
                Layout::ref_name(entry).map(str::to_owned)
            },
        }))
    }

    fn manifest(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> Result<Option<(Vec<u8>, String)>, EditError> {
        let path = self.blob(digest);
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some((
            super::read_verified(&path, digest, "manifest")?,
            media_type.to_owned(),
        )))
    }

    fn blob_path(&self, digest: &Digest) -> Result<Option<PathBuf>, EditError> {
        let p = self.blob(digest);
        Ok(p.is_file().then_some(p))
    }

    fn scratch(&self) -> Result<Scratch, EditError> {
        Scratch::sweep(&self.root, ".layerlink-edit-", STALE_SCRATCH);
        Ok(Scratch::create(&self.root, ".layerlink-edit-")?)
    }

    fn check_tag(&self, tag: &str) -> Result<(), EditError> {
        if tag.is_empty() || tag.chars().any(|c| c.is_control()) || tag.starts_with("sha256:") {
            return Err(EditError::Invalid(format!(
                "{tag:?} cannot be a tag (ref.name)"
            )));
        }
        Ok(())
    }

    fn blob_users(&self, blob: &Digest, skip_tags: &[&str]) -> Result<Vec<String>, EditError> {
        let index = self.index()?;
        let mut users = Vec::new();
        for entry in Layout::entries(&index) {
            let name = Layout::ref_name(&entry).map(str::to_owned);
            if name.as_deref().is_some_and(|n| skip_tags.contains(&n)) {
                continue;
            }
            let Ok(desc) = Descriptor::from_json(&entry, "index.json entry") else {
                continue;
            };
            // A document that cannot be read (or is corrupt) has no layers.
            let fetch = |d: &Digest, media_type: &str| {
                Ok::<_, EditError>(
                    super::read_verified(&self.blob(d), d, "manifest")
                        .ok()
                        .map(|bytes| (bytes, media_type.to_owned())),
                )
            };
            if layer_digests(&desc.digest, &desc.media_type, &fetch)?.contains(blob) {
                users.push(name.unwrap_or_else(|| desc.digest.to_string()));
            }
        }
        Ok(users)
    }

    fn commit(&self, commit: Commit) -> Result<(), EditError> {
        let blobs_dir = self.root.join("blobs").join("sha256");
        for b in &commit.blobs {
            let target = self.blob(&b.digest);
            if target.exists() {
                continue;
            }
            fs::rename(&b.path, &target)
                .with_context(|| format!("renaming into {}", target.display()))?;
        }
        self.store_doc(&commit.image)?;
        if let Some(index) = &commit.index {
            self.store_doc(index)?;
        }
        File::open(&blobs_dir)?.sync_all()?;

        // index.json, read again just before replacing it.
        let mut index = self.index()?;
        let mut entries = Layout::entries(&index);
        if commit.source_tag.as_deref() == Some(commit.tag.as_str()) {
            let now = Layout::find(&entries, &commit.tag)
                .and_then(|e| e.get("digest"))
                .and_then(Value::as_str);
            if now != Some(commit.source_digest.to_string().as_str()) {
                return Err(EditError::Conflict(format!(
                    "tag {} changed while the edit ran (now {}); nothing was tagged",
                    commit.tag,
                    now.unwrap_or("gone")
                )));
            }
        }
        let top = commit.top();
        let source = entries
            .iter()
            .find(|e| match &commit.source_tag {
                Some(t) => Layout::ref_name(e) == Some(t.as_str()),
                None => {
                    e.get("digest").and_then(Value::as_str)
                        == Some(commit.source_digest.to_string().as_str())
                }
            })
            .cloned();
        let mut desc = match source.as_ref().and_then(Value::as_object) {
            Some(o) => o.clone(),
            None => Map::new(),
        };
        desc.insert("mediaType".into(), Value::String(top.media_type.clone()));
        desc.insert("digest".into(), Value::String(top.digest.to_string()));
        desc.insert("size".into(), Value::from(top.bytes.len() as u64));
        let mut annotations = desc
            .get("annotations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        annotations.insert(REF_NAME.into(), Value::String(commit.tag.clone()));
        desc.insert("annotations".into(), Value::Object(annotations));
        let desc = Value::Object(desc);

        let position = entries
            .iter()
            .position(|e| Layout::ref_name(e) == Some(commit.tag.as_str()));
        entries.retain(|e| Layout::ref_name(e) != Some(commit.tag.as_str()));
        match position {
            Some(p) => entries.insert(p.min(entries.len()), desc),
            None => entries.push(desc),
        }
        if let Some(o) = index.as_object_mut() {
            o.insert("manifests".into(), Value::Array(entries));
        }
        let tmp = self
            .root
            .join(format!(".index.json.{:016x}.tmp", rand::random::<u64>()));
        let result = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&oci::to_bytes(&index))?;
            f.sync_all()?;
            fs::rename(&tmp, self.root.join("index.json"))?;
            File::open(&self.root)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.with_context(|| format!("replacing {}", self.root.join("index.json").display()))?;
        Ok(())
    }
}
