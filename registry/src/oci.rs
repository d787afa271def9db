//! The one OCI / Docker image model of the registry: media types,
//! descriptors, image manifests, indexes (manifest lists) and image
//! configs, as the push check (`http::oci::manifest`), ingest, sync
//! planning and the editor read them.
//!
//! Every document keeps its whole JSON next to the fields read from it
//! ([`Descriptor::json`], [`ImageManifest::json`], [`Index::json`],
//! [`ImageConfig::json`]), so a rewrite ([`Descriptor::retarget`],
//! [`ImageManifest::rebuilt`], [`ImageConfig::rebuilt`]) changes only the
//! fields it owns and keeps every other field, annotation and unknown key
//! as it was. That is why this is plain `serde_json::Value` underneath and
//! not the `oci-spec` crate: its typed structs drop unknown fields on a
//! round trip and reorder keys, and an edit must not (see ARCHITECTURE.md).

use layerlink_proto::msg::Platform;
use layerlink_proto::Digest;
use serde_json::{json, Value};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The index.json annotation naming a tag (OCI image layout).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Largest manifest, index or config read into memory, in bytes.
pub const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;

/// Why a document is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// Not JSON at all.
    #[error("{0}")]
    NotJson(String),
    /// JSON, but not the document it should be.
    #[error("{0}")]
    Invalid(String),
}

/// A content descriptor, with its JSON kept whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `mediaType` (empty when the JSON has none).
    pub media_type: String,
    /// `digest`.
    pub digest: Digest,
    /// `size`.
    pub size: u64,
    /// `platform` (an index entry's), when it names an os and an
    /// architecture.
    pub platform: Option<Platform>,
    /// The descriptor object as it was.
    pub json: Value,
}

impl Descriptor {
    /// Parse a descriptor object: a sha256 `digest` and a `size` are
    /// required; `what` names it in errors.
    pub fn from_json(v: &Value, what: &str) -> Result<Descriptor, DocError> {
        let bad = |m: String| DocError::Invalid(format!("{what}: {m}"));
        let obj = v
            .as_object()
            .ok_or_else(|| bad("descriptor is not a JSON object".into()))?;
        let digest = obj
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("descriptor without a digest".into()))?;
        let digest = Digest::parse(digest).map_err(|e| bad(format!("digest {digest:?}: {e}")))?;
        let size = obj
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(format!("descriptor {digest} without a size")))?;
        let media_type = obj
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let platform = obj.get("platform").and_then(|p| {
            let get = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
            Some(Platform {
                os: get("os")?,
                architecture: get("architecture")?,
                variant: get("variant").filter(|v| !v.is_empty()),
            })
        });
        Ok(Descriptor {
            media_type,
            digest,
            size,
            platform,
            json: v.clone(),
        })
    }

    /// Whether the content is elsewhere (a foreign layer with `urls`).
    pub fn is_foreign(&self) -> bool {
        self.json
            .get("urls")
            .and_then(Value::as_array)
            .is_some_and(|u| !u.is_empty())
    }

    /// A copy pointing at other content (digest and size replaced, every
    /// other field kept).
    pub fn retarget(&self, digest: &Digest, size: u64) -> Value {
        let mut v = self.json.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("digest".into(), Value::String(digest.to_string()));
            o.insert("size".into(), json!(size));
        }
        v
    }
}

/// An image manifest: config and layers, base first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    /// The whole document.
    pub json: Value,
    /// Its media type: the document's `mediaType`, else the one it was
    /// stored with.
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, base first.
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Whether the config is a container image config (not an artifact).
    pub fn is_container_image(&self) -> bool {
        matches!(
            self.config.media_type.as_str(),
            OCI_CONFIG | DOCKER_CONFIG | ""
        )
    }

    /// Whether this is a Docker schema 2 manifest (else OCI).
    pub fn is_docker(&self) -> bool {
        self.media_type == DOCKER_MANIFEST
    }

    /// The media type of a new gzip layer in this manifest.
    pub fn new_layer_media_type(&self) -> &'static str {
        if self.is_docker() {
            DOCKER_LAYER_GZIP
        } else {
            OCI_LAYER_GZIP
        }
    }

    /// This manifest with another config and layer list (every other
    /// field kept).
    pub fn rebuilt(&self, config: Value, layers: Vec<Value>) -> Value {
        let mut v = self.json.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("config".into(), config);
            o.insert("layers".into(), Value::Array(layers));
        }
        v
    }
}

/// An image index / manifest list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The whole document.
    pub json: Value,
    /// Its manifests, in order.
    pub manifests: Vec<Descriptor>,
}

impl Index {
    /// The platforms the index lists, for messages.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .filter_map(|m| m.platform.as_ref())
            .map(platform_string)
            .collect()
    }
}

/// What a manifest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedManifest {
    /// An image manifest (OCI or Docker schema 2).
    Image(ImageManifest),
    /// An image index / manifest list.
    Index(Index),
    /// Something else (Docker schema 1, an artifact without config, …),
    /// with a description.
    Other(String),
}

/// Parse manifest JSON. `media_type` is the type it was stored with (used
/// when the JSON has no `mediaType`). A document with a `manifests` list is
/// an index (unless its type says image manifest: an error), one with a
/// `config` an image manifest (`layers` may be absent: none).
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> Result<ParsedManifest, DocError> {
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| DocError::NotJson(format!("manifest is not valid JSON: {e}")))?;
    let invalid = |m: String| DocError::Invalid(m);
    if !json.is_object() {
        return Err(invalid("manifest is not a JSON object".into()));
    }
    let mt = json
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(media_type)
        .to_owned();
    if json.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return Ok(ParsedManifest::Other("Docker schema 1 manifest".into()));
    }
    let list = |key: &str, what: &str| -> Result<Option<Vec<Descriptor>>, DocError> {
        match json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, d)| Descriptor::from_json(d, &format!("{what} {i}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(invalid(format!("\"{key}\" is not a list"))),
        }
    };
    if let Some(manifests) = list("manifests", "index entry")? {
        if matches!(mt.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
            return Err(invalid(format!(
                "manifest of type {mt} has a \"manifests\" list"
            )));
        }
        return Ok(ParsedManifest::Index(Index { json, manifests }));
    }
    match json.get("config") {
        None | Some(Value::Null) => Ok(ParsedManifest::Other(format!(
            "manifest of type {mt:?} without config"
        ))),
        Some(c) => {
            let config = Descriptor::from_json(c, "manifest config")?;
            let layers = list("layers", "manifest layer")?.unwrap_or_default();
            Ok(ParsedManifest::Image(ImageManifest {
                media_type: if mt.is_empty() {
                    media_type.to_owned()
                } else {
                    mt
                },
                config,
                layers,
                json,
            }))
        }
    }
}

/// An image config: `rootfs.diff_ids` and `history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// The whole document.
    pub json: Value,
    /// `rootfs.diff_ids`, base first.
    pub diff_ids: Vec<Digest>,
    /// `history` (possibly empty).
    pub history: Vec<Value>,
}

impl ImageConfig {
    /// Parse config bytes: a `rootfs` is required.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, DocError> {
        let json: Value = serde_json::from_slice(bytes)
            .map_err(|e| DocError::NotJson(format!("image config is not valid JSON: {e}")))?;
        let rootfs = json
            .get("rootfs")
            .filter(|r| r.is_object())
            .ok_or_else(|| DocError::Invalid("image config has no rootfs".into()))?;
        let diff_ids = match rootfs.get("diff_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|d| {
                    d.as_str()
                        .and_then(|s| Digest::parse(s).ok())
                        .ok_or_else(|| DocError::Invalid(format!("image config: bad diff_id {d}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(DocError::Invalid(
                    "image config: rootfs.diff_ids is not a list".into(),
                ))
            }
        };
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
    /// `None`); every other field kept.
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

/// The `rootfs.diff_ids` of an image config.
pub fn config_diff_ids(bytes: &[u8]) -> Result<Vec<Digest>, DocError> {
    ImageConfig::parse(bytes).map(|c| c.diff_ids)
}

/// Serialise a document compactly.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serialises")
}

/// The variant a platform stands for when it names none.
fn normalized_variant(p: &Platform) -> Option<&str> {
    match (p.architecture.as_str(), p.variant.as_deref()) {
        ("arm64", None) => Some("v8"),
        ("amd64", Some("v1")) => None,
        (_, v) => v,
    }
}

/// Pick the manifest of an index for `want`: same os and architecture and
/// the same variant (arm64 without variant = v8); failing that, an entry
/// that names no variant, or for `arm` an older variant (v7 runs v6, v5).
/// `None` when nothing fits.
pub fn select_platform<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let candidates = || {
        entries.iter().filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
    };
    let want_v = normalized_variant(want);
    let exact = candidates().find(|e| e.platform.as_ref().map(normalized_variant) == Some(want_v));
    if exact.is_some() {
        return exact;
    }
    if want.architecture == "arm" {
        let order = ["v8", "v7", "v6", "v5"];
        if let Some(pos) = want_v.and_then(|v| order.iter().position(|o| *o == v)) {
            for older in &order[pos..] {
                let found = candidates().find(|e| {
                    e.platform.as_ref().and_then(|p| p.variant.as_deref()) == Some(*older)
                });
                if found.is_some() {
                    return found;
                }
            }
        }
    }
    candidates()
        .find(|e| e.platform.as_ref().is_some_and(|p| p.variant.is_none()) || want_v.is_none())
}

/// `os/arch[/variant]` for messages.
pub fn platform_string(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plat(os: &str, arch: &str, v: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        }
    }

    fn entry(n: u8, p: Platform) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest([n; 32]),
            size: 1,
            platform: Some(p),
            json: Value::Null,
        }
    }

    #[test]
    fn selects_platforms() {
        let idx = vec![
            entry(1, plat("linux", "amd64", None)),
            entry(2, plat("linux", "arm64", Some("v8"))),
            entry(3, plat("linux", "arm", Some("v6"))),
            entry(4, plat("unknown", "unknown", None)),
        ];
        let pick = |p: Platform| select_platform(&idx, &p).map(|e| e.digest.0[0]);
        assert_eq!(pick(plat("linux", "amd64", None)), Some(1));
        assert_eq!(pick(plat("linux", "arm64", None)), Some(2));
        assert_eq!(pick(plat("linux", "arm", Some("v7"))), Some(3));
        assert_eq!(pick(plat("linux", "riscv64", None)), None);
        assert_eq!(pick(plat("linux", "arm", Some("v5"))), None);
    }

    #[test]
    fn parses_manifests_and_configs() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","size":3},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000002","size":5,"annotations":{"k":"v"}}]}"#;
        let ParsedManifest::Image(im) = parse_manifest(m, "").unwrap() else {
            panic!("not an image")
        };
        assert!(im.is_container_image());
        assert_eq!(im.layers.len(), 1);
        assert_eq!(im.layers[0].size, 5);
        // A rewrite keeps what it does not own.
        let moved = im.layers[0].retarget(&Digest([9; 32]), 7);
        assert_eq!(moved["annotations"]["k"], "v");
        assert_eq!(moved["size"], 7);
        let c = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000003"]},"x-unknown":1}"#;
        let want = Digest::parse(
            "sha256:0000000000000000000000000000000000000000000000000000000000000003",
        )
        .unwrap();
        assert_eq!(config_diff_ids(c).unwrap(), vec![want]);
        let cfg = ImageConfig::parse(c).unwrap();
        assert_eq!(cfg.rebuilt(&[], None)["x-unknown"], 1);
        assert!(config_diff_ids(b"{}").is_err());
        assert!(matches!(config_diff_ids(b"{"), Err(DocError::NotJson(_))));
        let i = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000004","size":1,"platform":{"os":"linux","architecture":"arm64"}}]}"#;
        let ParsedManifest::Index(idx) = parse_manifest(i, OCI_INDEX).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(idx.platforms(), vec!["linux/arm64"]);
        assert!(parse_manifest(i, "").is_ok());
        let wrong = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#;
        assert!(parse_manifest(wrong, "").is_err());
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":1}"#, "").unwrap(),
            ParsedManifest::Other(_)
        ));
    }
}
