//! What an edit changes in manifests, indexes and configs (on the model of
//! [`crate::oci`], which keeps every field the editor does not own as it
//! was): the edited layer's descriptor, the history, the index entry of
//! `--platform`.

use super::plan::Plan;
use super::{EditError, Warning};
use crate::oci::{
    Descriptor, DocError, ImageConfig, ImageManifest, Index, ParsedManifest, DOCKER_LAYER_GZIP,
    OCI_LAYER_GZIP,
};
use layerlink_proto::Digest;
use serde_json::{Map, Value};

impl From<DocError> for EditError {
    fn from(e: DocError) -> EditError {
        match e {
            DocError::NotJson(m) => EditError::Corrupt(m),
            DocError::Invalid(m) => EditError::Invalid(m),
        }
    }
}

/// A manifest or index the editor can work on.
pub enum Doc {
    /// An image manifest.
    Image(ImageManifest),
    /// An image index.
    Index(Index),
}

/// Parse a stored manifest or index (`media_type`: the type it was stored
/// with) for editing.
pub fn parse_doc(bytes: &[u8], media_type: &str, what: &str) -> Result<Doc, EditError> {
    let named = |e: DocError| match e {
        DocError::NotJson(m) => EditError::Corrupt(format!("{what}: {m}")),
        DocError::Invalid(m) => EditError::Invalid(format!("{what}: {m}")),
    };
    match crate::oci::parse_manifest(bytes, media_type).map_err(named)? {
        ParsedManifest::Image(m) => Ok(Doc::Image(m)),
        ParsedManifest::Index(i) => Ok(Doc::Index(i)),
        ParsedManifest::Other(why) => Err(EditError::Invalid(format!(
            "{what} cannot be edited: it is a {why}, neither an image manifest nor an index"
        ))),
    }
}

/// An OS/architecture(/variant) triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `arm64`.
    pub architecture: String,
    /// e.g. `v8`, when given.
    pub variant: Option<String>,
}

impl Platform {
    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, EditError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*v).into()),
            }),
            _ => Err(EditError::Invalid(format!(
                "platform {s:?} is not os/arch[/variant]"
            ))),
        }
    }

    fn matches(&self, p: &layerlink_proto::msg::Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && self
                .variant
                .as_deref()
                .is_none_or(|want| p.variant.as_deref() == Some(want))
    }
}

/// The position and descriptor of `platform`'s manifest in an index.
pub fn pick_platform(index: &Index, platform: &Platform) -> Result<(usize, Descriptor), EditError> {
    index
        .manifests
        .iter()
        .position(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .map(|i| (i, index.manifests[i].clone()))
        .ok_or_else(|| {
            EditError::NotFound(format!(
                "the index has no manifest for platform {platform} (it has: {})",
                index.platforms().join(", ")
            ))
        })
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A rebuilt layer's descriptor: the old one pointing at the new blob, minus
/// what described the old bytes (annotations, `urls`); foreign and
/// non-distributable layers become ordinary ones since the content is now
/// in the store.
pub fn edited_layer_descriptor(
    old: &Descriptor,
    digest: &Digest,
    size: u64,
    docker: bool,
) -> Value {
    let mut v = old.retarget(digest, size);
    if let Some(o) = v.as_object_mut() {
        o.remove("annotations");
        o.remove("urls");
        let mt = edited_layer_media_type(old, docker);
        if mt != old.media_type {
            o.insert("mediaType".into(), Value::String(mt));
        }
    }
    v
}

/// The layer media type a rebuilt layer keeps (see [`edited_layer_descriptor`]).
pub fn edited_layer_media_type(old: &Descriptor, docker: bool) -> String {
    let mt = old.media_type.as_str();
    if mt.contains("foreign") || mt.contains("nondistributable") {
        (if docker {
            DOCKER_LAYER_GZIP
        } else {
            OCI_LAYER_GZIP
        })
        .into()
    } else {
        mt.into()
    }
}

/// Append `note` to a history entry's `created_by`.
pub fn amend_history(entry: &Value, note: &str) -> Value {
    let mut v = entry.clone();
    if let Some(o) = v.as_object_mut() {
        let by = match o.get("created_by").and_then(Value::as_str) {
            Some(old) if !old.is_empty() => format!("{old} ; {note}"),
            _ => note.to_owned(),
        };
        o.insert("created_by".into(), Value::String(by));
    }
    v
}

/// A history entry for an inserted layer.
pub fn insert_history(note: &str, created: &str) -> Value {
    let mut m = Map::new();
    m.insert("created".into(), Value::String(created.into()));
    m.insert("created_by".into(), Value::String(note.into()));
    m.insert("comment".into(), Value::String("layerlink".into()));
    Value::Object(m)
}

/// New history: one entry per new layer, empty-layer entries kept in place.
pub(super) fn rebuild_history(
    config: &ImageConfig,
    plan: &Plan,
    n: usize,
    warnings: &mut Vec<Warning>,
) -> Option<Vec<Value>> {
    let positions = config.layer_history();
    if config.history.is_empty() {
        return None;
    }
    if positions.len() != n {
        warnings.push(Warning::HistoryMismatch {
            history_layers: positions.len(),
            layers: n,
        });
        return None;
    }
    let created = crate::clock::now_rfc3339();
    let inserted_at = |li: usize| -> Vec<Value> {
        plan.inserts
            .iter()
            .filter(|op| op.at == li)
            .map(|op| insert_history(&format!("layerlink insert: from {}", op.source), &created))
            .collect()
    };
    let mut out = Vec::new();
    let mut li = 0;
    let mut after_last_layer = 0;
    for (hi, h) in config.history.iter().enumerate() {
        if li < n && positions[li] == hi {
            out.extend(inserted_at(li));
            if plan.deleted.contains(&li) {
                // gone
            } else if plan.layer == Some(li) {
                out.push(amend_history(h, &plan.note()));
            } else {
                out.push(h.clone());
            }
            li += 1;
            after_last_layer = out.len();
        } else {
            out.push(h.clone());
        }
    }
    let top = inserted_at(n);
    let at = if n == 0 { out.len() } else { after_last_layer };
    out.splice(at..at, top);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plat(os: &str, arch: &str, v: Option<&str>) -> layerlink_proto::msg::Platform {
        layerlink_proto::msg::Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        }
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert!(p.matches(&plat("linux", "arm", Some("v7"))));
        assert!(!p.matches(&plat("linux", "arm", Some("v6"))));
        let p = Platform::parse("linux/amd64").unwrap();
        assert!(p.matches(&plat("linux", "amd64", None)));
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn history_skips_empty_layers() {
        let c = ImageConfig::parse(
            br#"{"rootfs":{"type":"layers","diff_ids":[]},"history":[{"created_by":"a"},{"empty_layer":true},{"created_by":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(c.layer_history(), vec![0, 2]);
        assert_eq!(amend_history(&c.history[0], "x")["created_by"], "a ; x");
    }
}
