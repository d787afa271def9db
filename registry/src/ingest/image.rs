//! The bits of OCI / Docker image JSON that ingest and planning read:
//! manifests, indexes (manifest lists) and image configs.

use layerlink_proto::msg::Platform;
use layerlink_proto::Digest;
use serde::Deserialize;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type (may be empty when the JSON omits it).
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// An image manifest: config and layers, base first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
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
}

/// One manifest of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The platform manifest.
    pub descriptor: Descriptor,
    /// Its platform, when the index says.
    pub platform: Option<Platform>,
}

/// What a manifest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedManifest {
    /// An image manifest (OCI or Docker schema 2).
    Image(ImageManifest),
    /// An image index / manifest list.
    Index(Vec<IndexEntry>),
    /// Something else (Docker schema 1, …), with a description.
    Other(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

fn descriptor(d: RawDescriptor) -> Result<(Descriptor, Option<RawPlatform>), String> {
    let digest =
        Digest::parse(&d.digest).map_err(|e| format!("descriptor digest {:?}: {e}", d.digest))?;
    Ok((
        Descriptor {
            media_type: d.media_type,
            digest,
            size: d.size,
        },
        d.platform,
    ))
}

/// Parse manifest JSON. `media_type` is the type it was pushed with (used
/// when the JSON has no `mediaType`).
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> Result<ParsedManifest, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let mt = raw.media_type.as_deref().unwrap_or(media_type);
    if raw.schema_version == Some(1) {
        return Ok(ParsedManifest::Other("Docker schema 1 manifest".into()));
    }
    if let Some(ms) = raw.manifests {
        if matches!(mt, OCI_MANIFEST | DOCKER_MANIFEST) {
            return Err(format!("manifest of type {mt} has a \"manifests\" list"));
        }
        let mut out = Vec::with_capacity(ms.len());
        for m in ms {
            let (descriptor, p) = descriptor(m)?;
            out.push(IndexEntry {
                descriptor,
                platform: p.map(|p| Platform {
                    os: p.os,
                    architecture: p.architecture,
                    variant: p.variant.filter(|v| !v.is_empty()),
                }),
            });
        }
        return Ok(ParsedManifest::Index(out));
    }
    match (raw.config, raw.layers) {
        (Some(c), layers) => {
            let (config, _) = descriptor(c)?;
            let layers = layers
                .unwrap_or_default()
                .into_iter()
                .map(|l| descriptor(l).map(|(d, _)| d))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ParsedManifest::Image(ImageManifest { config, layers }))
        }
        (None, _) => Ok(ParsedManifest::Other(format!(
            "manifest of type {mt:?} without config"
        ))),
    }
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The `rootfs.diff_ids` of an image config.
pub fn config_diff_ids(bytes: &[u8]) -> Result<Vec<Digest>, String> {
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| format!("image config is not valid JSON: {e}"))?;
    let rootfs = raw.rootfs.ok_or("image config has no rootfs")?;
    rootfs
        .diff_ids
        .iter()
        .map(|s| Digest::parse(s).map_err(|e| format!("config diff_id {s:?}: {e}")))
        .collect()
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
pub fn select_platform<'a>(entries: &'a [IndexEntry], want: &Platform) -> Option<&'a IndexEntry> {
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

    fn entry(n: u8, p: Platform) -> IndexEntry {
        IndexEntry {
            descriptor: Descriptor {
                media_type: OCI_MANIFEST.into(),
                digest: Digest([n; 32]),
                size: 1,
            },
            platform: Some(p),
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
        let pick = |p: Platform| select_platform(&idx, &p).map(|e| e.descriptor.digest.0[0]);
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
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000002","size":5}]}"#;
        let ParsedManifest::Image(im) = parse_manifest(m, "").unwrap() else {
            panic!("not an image")
        };
        assert!(im.is_container_image());
        assert_eq!(im.layers.len(), 1);
        assert_eq!(im.layers[0].size, 5);
        let c = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000003"]}}"#;
        assert_eq!(
            config_diff_ids(c).unwrap(),
            vec![Digest::parse(
                "sha256:0000000000000000000000000000000000000000000000000000000000000003"
            )
            .unwrap()]
        );
        assert!(config_diff_ids(b"{}").is_err());
        let i = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000004","size":1,"platform":{"os":"linux","architecture":"arm64"}}]}"#;
        assert!(
            matches!(parse_manifest(i, OCI_INDEX).unwrap(), ParsedManifest::Index(v) if v.len() == 1)
        );
    }
}
