//! Manifests, indexes and configs as JSON values: just enough structure to
//! read the layer list and rewrite it, keeping every field the editor does
//! not own as it was.

use super::plan::Plan;
use super::{EditError, Warning};
use layerlink_proto::time::rfc3339;
use layerlink_proto::Digest;
use serde_json::{json, Map, Value};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The index.json annotation naming a tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest manifest, index or config the editor reads.
pub const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;

/// A content descriptor, with its JSON kept whole.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// `mediaType`.
    pub media_type: String,
    /// `digest`.
    pub digest: Digest,
    /// `size`.
    pub size: u64,
    /// The descriptor object as it was.
    pub json: Value,
}

impl Descriptor {
    /// Parse a descriptor object; `what` names it in errors.
    pub fn parse(v: &Value, what: &str) -> Result<Descriptor, EditError> {
        let bad = |m: &str| EditError::Invalid(format!("{what}: {m}"));
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let media_type = obj
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let digest = obj
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no digest"))
            .and_then(|s| Digest::parse(s).map_err(|_| bad("not a sha256 digest")))?;
        let size = obj
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no size"))?;
        Ok(Descriptor {
            media_type,
            digest,
            size,
            json: v.clone(),
        })
    }

    /// A copy pointing at other content (digest and size replaced).
    pub fn retarget(&self, digest: &Digest, size: u64) -> Value {
        let mut v = self.json.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("digest".into(), Value::String(digest.to_string()));
            o.insert("size".into(), json!(size));
        }
        v
    }
}

/// Whether a manifest document is an image or an index of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// An image manifest (OCI or Docker schema2).
    Image,
    /// An image index / manifest list.
    Index,
}

/// Parse manifest bytes, deciding image vs index by media type and shape.
pub fn parse_doc(
    bytes: &[u8],
    media_type: &str,
    what: &str,
) -> Result<(Value, DocKind), EditError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| EditError::Corrupt(format!("{what} is not valid JSON: {e}")))?;
    let mt = v
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(media_type);
    if v.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Err(EditError::Invalid(format!(
            "{what} is a Docker schema 1 manifest, which cannot be edited"
        )));
    }
    let kind = if mt == OCI_INDEX
        || mt == DOCKER_LIST
        || (v.get("manifests").is_some() && v.get("layers").is_none())
    {
        DocKind::Index
    } else if v.get("layers").is_some() && v.get("config").is_some() {
        DocKind::Image
    } else {
        return Err(EditError::Invalid(format!(
            "{what} ({mt}) is neither an image manifest nor an index"
        )));
    };
    Ok((v, kind))
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

    fn matches(&self, v: &Value) -> bool {
        let get = |k: &str| v.get(k).and_then(Value::as_str);
        get("os") == Some(self.os.as_str())
            && get("architecture") == Some(self.architecture.as_str())
            && self
                .variant
                .as_deref()
                .is_none_or(|want| get("variant") == Some(want))
    }
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

/// The platforms an index lists, for messages.
pub fn index_platforms(index: &Value) -> Vec<String> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("platform"))
        .map(|p| {
            let get = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("?");
            match p.get("variant").and_then(Value::as_str) {
                Some(v) => format!("{}/{}/{v}", get("os"), get("architecture")),
                None => format!("{}/{}", get("os"), get("architecture")),
            }
        })
        .collect()
}

/// The position and descriptor of `platform`'s manifest in an index.
pub fn pick_platform(index: &Value, platform: &Platform) -> Result<(usize, Descriptor), EditError> {
    let list = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, m) in list.iter().enumerate() {
        if m.get("platform").is_some_and(|p| platform.matches(p)) {
            return Ok((i, Descriptor::parse(m, "index entry")?));
        }
    }
    Err(EditError::NotFound(format!(
        "the index has no manifest for platform {platform} (it has: {})",
        index_platforms(index).join(", ")
    )))
}

/// Every manifest descriptor of an index (for scanning which images use a blob).
pub fn index_children(index: &Value) -> Vec<Descriptor> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| Descriptor::parse(m, "index entry").ok())
        .collect()
}

/// An image manifest: its config and layer descriptors.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// The whole document.
    pub json: Value,
    /// Media type (stored, or the document's `mediaType`).
    pub media_type: String,
    /// The config descriptor.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Read an image manifest document.
    pub fn from_json(json: Value, media_type: &str) -> Result<ImageManifest, EditError> {
        let media_type = json
            .get("mediaType")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(media_type)
            .to_owned();
        let config = Descriptor::parse(
            json.get("config").unwrap_or(&Value::Null),
            "manifest config",
        )?;
        let layers = json
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| EditError::Invalid("manifest has no layers array".into()))?
            .iter()
            .enumerate()
            .map(|(i, l)| Descriptor::parse(l, &format!("manifest layer {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImageManifest {
            json,
            media_type,
            config,
            layers,
        })
    }

    /// Whether this is a Docker schema2 manifest (else OCI).
    pub fn is_docker(&self) -> bool {
        self.media_type == DOCKER_MANIFEST
    }

    /// The media type for a new gzip layer in this manifest.
    pub fn new_layer_media_type(&self) -> &'static str {
        if self.is_docker() {
            DOCKER_LAYER_GZIP
        } else {
            OCI_LAYER_GZIP
        }
    }

    /// This manifest with another config and layer list.
    pub fn rebuilt(&self, config: Value, layers: Vec<Value>) -> Value {
        let mut v = self.json.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("config".into(), config);
            o.insert("layers".into(), Value::Array(layers));
        }
        v
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
        let mt = old.media_type.as_str();
        if mt.contains("foreign") || mt.contains("nondistributable") {
            let new = if docker {
                DOCKER_LAYER_GZIP
            } else {
                OCI_LAYER_GZIP
            };
            o.insert("mediaType".into(), Value::String(new.into()));
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

/// An image config: diff_ids and history.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The whole document.
    pub json: Value,
    /// `rootfs.diff_ids`, base first.
    pub diff_ids: Vec<Digest>,
    /// `history` (possibly empty).
    pub history: Vec<Value>,
}

impl ImageConfig {
    /// Parse config bytes.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, EditError> {
        let json: Value = serde_json::from_slice(bytes)
            .map_err(|e| EditError::Corrupt(format!("image config is not valid JSON: {e}")))?;
        let diff_ids = json
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .ok_or_else(|| EditError::Invalid("image config has no rootfs.diff_ids".into()))?
            .iter()
            .map(|d| {
                d.as_str()
                    .and_then(|s| Digest::parse(s).ok())
                    .ok_or_else(|| EditError::Invalid(format!("image config: bad diff_id {d}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let history = json
            .get("history")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(ImageConfig {
            json,
            diff_ids,
            history,
        })
    }

    /// History indexes of the entries that made a layer (not `empty_layer`).
    pub fn layer_history(&self) -> Vec<usize> {
        self.history
            .iter()
            .enumerate()
            .filter(|(_, h)| {
                !h.get("empty_layer")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// This config with other diff_ids and history (history left out when
    /// the original had none).
    pub fn rebuilt(&self, diff_ids: &[Digest], history: Option<Vec<Value>>) -> Value {
        let mut v = self.json.clone();
        let ids: Vec<Value> = diff_ids
            .iter()
            .map(|d| Value::String(d.to_string()))
            .collect();
        if let Some(rootfs) = v.get_mut("rootfs").and_then(Value::as_object_mut) {
            rootfs.insert("diff_ids".into(), Value::Array(ids));
        }
        if let (Some(h), Some(o)) = (history, v.as_object_mut()) {
            o.insert("history".into(), Value::Array(h));
        }
        v
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

/// Now as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Serialise a document compactly.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
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
    let created = now_rfc3339();
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

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert!(p.matches(&json!({"os":"linux","architecture":"arm","variant":"v7"})));
        assert!(!p.matches(&json!({"os":"linux","architecture":"arm","variant":"v6"})));
        let p = Platform::parse("linux/amd64").unwrap();
        assert!(p.matches(&json!({"os":"linux","architecture":"amd64"})));
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
