//! Checking a pushed manifest and listing what it references. Pure: no I/O.
//! The push-time rules (Content-Type against `mediaType`, schema versions,
//! what an index and an image need) are here; the model (descriptors,
//! media types) is [`crate::oci`].

use super::error::OciError;
use axum::http::StatusCode;
use serde_json::Value;

pub use crate::oci::{Descriptor, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

/// A checked manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Blobs that must be in the repository: config and layers (foreign
    /// layers with `urls` excluded).
    pub blobs: Vec<Descriptor>,
    /// Manifests that must be in the repository (an index's entries).
    pub children: Vec<Descriptor>,
    /// OCI 1.1 `subject`: the manifest this one refers to (a signature,
    /// an SBOM, …); need not exist in the repository.
    pub subject: Option<Descriptor>,
    /// The artifact type the referrers API lists it under: `artifactType`,
    /// else the config's media type (OCI 1.1).
    pub artifact_type: Option<String>,
    /// The manifest's `annotations`, as pushed.
    pub annotations: Option<Value>,
}

/// Check `bytes` pushed with `content_type` (the request's Content-Type,
/// parameters stripped; `None` or generic JSON if the client sent none).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, OciError> {
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| OciError::manifest_invalid(format!("manifest is not valid JSON: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| OciError::manifest_invalid("manifest must be a JSON object"))?;
    let declared = match obj.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(OciError::manifest_invalid("mediaType must be a string")),
    };
    let content_type = content_type.filter(|c| !c.is_empty() && *c != "application/json");
    if let Some(ct) = content_type {
        if ct.starts_with("application/vnd.docker.distribution.manifest.v1") {
            return Err(OciError::unsupported(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Docker schema 1 manifests are not supported; push schema 2 or OCI",
            ));
        }
    }
    if let (Some(ct), Some(d)) = (content_type, declared) {
        if ct != d {
            return Err(OciError::manifest_invalid(format!(
                "manifest mediaType {d:?} does not match Content-Type {ct:?}"
            )));
        }
    }
    let media_type = content_type.or(declared).unwrap_or(OCI_MANIFEST).to_owned();
    match obj.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            return Err(OciError::unsupported(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "schemaVersion 1 manifests are not supported",
            ))
        }
        _ => return Err(OciError::manifest_invalid("schemaVersion must be 2")),
    }

    let is_index = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // Another type (an artifact): go by shape.
        _ => obj.contains_key("manifests") && !obj.contains_key("config"),
    };
    let subject = match obj.get("subject") {
        None | Some(Value::Null) => None,
        Some(v) => Some(descriptor(v, "subject")?),
    };
    let artifact_type = match obj.get("artifactType") {
        None | Some(Value::Null) => obj
            .get("config")
            .and_then(|c| c.get("mediaType"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(OciError::manifest_invalid("artifactType must be a string")),
    };
    let mut parsed = ParsedManifest {
        media_type,
        blobs: Vec::new(),
        children: Vec::new(),
        subject,
        artifact_type,
        annotations: obj.get("annotations").filter(|a| a.is_object()).cloned(),
    };
    if is_index {
        let list = obj
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| OciError::manifest_invalid("an index needs a \"manifests\" array"))?;
        for m in list {
            parsed.children.push(descriptor(m, "manifests[]")?);
        }
    } else {
        let config = obj
            .get("config")
            .ok_or_else(|| OciError::manifest_invalid("an image manifest needs \"config\""))?;
        parsed.blobs.push(descriptor(config, "config")?);
        let layers = obj.get("layers").and_then(Value::as_array).ok_or_else(|| {
            OciError::manifest_invalid("an image manifest needs a \"layers\" array")
        })?;
        for l in layers {
            let d = descriptor(l, "layers[]")?;
            if !d.is_foreign() {
                parsed.blobs.push(d);
            }
        }
    }
    Ok(parsed)
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor, OciError> {
    Descriptor::from_json(v, what).map_err(|e| OciError::manifest_invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerlink_proto::Digest;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{D1}","size":3}},
               "layers":[{{"digest":"{D2}","size":5}},{{"digest":"{D1}","size":3,"urls":["http://x"]}}]}}"#
        );
        let p = parse(m.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(p.blobs.len(), 2, "the foreign layer is not required");
        assert_eq!(
            (p.blobs[1].digest, p.blobs[1].size),
            (Digest::parse(D2).unwrap(), 5)
        );
        // no Content-Type: the mediaType field decides
        assert_eq!(parse(m.as_bytes(), None).unwrap().media_type, OCI_MANIFEST);
        // a mismatching Content-Type is refused
        assert_eq!(
            parse(m.as_bytes(), Some(DOCKER_MANIFEST)).unwrap_err().code,
            "MANIFEST_INVALID"
        );
    }

    #[test]
    fn index_and_errors() {
        let i = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D1}","size":9}}]}}"#);
        let p = parse(i.as_bytes(), Some(DOCKER_LIST)).unwrap();
        assert_eq!((p.blobs.len(), p.children.len()), (0, 1));
        assert_eq!(
            parse(b"{not json", None).unwrap_err().code,
            "MANIFEST_INVALID"
        );
        assert_eq!(
            parse(b"{\"schemaVersion\":2}", Some(OCI_MANIFEST))
                .unwrap_err()
                .code,
            "MANIFEST_INVALID"
        );
        let bad = r#"{"schemaVersion":2,"config":{"digest":"md5:x","size":1},"layers":[]}"#;
        assert_eq!(
            parse(bad.as_bytes(), Some(OCI_MANIFEST)).unwrap_err().code,
            "MANIFEST_INVALID"
        );
        assert_eq!(
            parse(b"{\"schemaVersion\":1}", None).unwrap_err().code,
            "UNSUPPORTED"
        );
    }
}
