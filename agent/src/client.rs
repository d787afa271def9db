//! The thin HTTP side: four POSTs under `/layerlink/v1/`, postcard bodies,
//! streamed archive responses. Everything else talks to [`Remote`], so the
//! sync logic is testable without a server.

use crate::error::{Error, Result};
use layerlink_proto::archive::{
    Encoding, FEATURES_HEADER, FEATURE_COMPACT_META, FEATURE_FILE_DELTA2, FEATURE_LAYER_BASE,
    FEATURE_ZSTD,
};
use layerlink_proto::framing::FramingRequest;
use layerlink_proto::limits::MAX_MESSAGE_BYTES;
use layerlink_proto::msg::{
    ArchiveRequest, ObjectsRequest, PlanRequest, PlanResponse, Report, ReportAck, API_PREFIX,
    CONTENT_TYPE, HEADER_ARCHIVE_ID, HEADER_ARCHIVE_OFFSET, HEADER_NEW_BYTES, HEADER_RESUME,
};
use layerlink_proto::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// A streamed archive response.
pub struct Download {
    /// `x-layerlink-new-bytes`: uncompressed bytes of new file content.
    pub new_bytes: Option<u64>,
    /// The encoding the response's content type names (`None`: not said;
    /// the stream's magic number decides).
    pub encoding: Option<Encoding>,
    /// The compressed archive.
    pub body: Box<dyn Read>,
    /// `layerlink-archive-id`: the registry keeps this archive for a
    /// resumption ([`crate::resume`]).
    pub id: Option<String>,
    /// `layerlink-archive-offset`: the body starts at this offset of the
    /// archive `id` (a resumption was granted).
    pub offset: Option<u64>,
}

/// The `layerlink-features` value this agent sends.
pub fn features(zstd: bool, deltas: bool) -> String {
    let mut f = format!("{FEATURE_LAYER_BASE},{FEATURE_COMPACT_META}");
    if deltas {
        f.push(',');
        f.push_str(FEATURE_FILE_DELTA2);
    }
    if zstd {
        f.push(',');
        f.push_str(FEATURE_ZSTD);
    }
    f
}

/// The registry's sync API, as the agent uses it.
pub trait Remote {
    /// `POST /plan`.
    fn plan(&mut self, req: &PlanRequest) -> Result<PlanResponse>;
    /// `POST /archive`.
    fn archive(&mut self, req: &ArchiveRequest) -> Result<Download>;
    /// `POST /archive` asking for the rest of a kept archive
    /// (`layerlink-resume` value `resume`); the registry may answer with a
    /// fresh one. Default: never resumes.
    fn archive_resume(&mut self, req: &ArchiveRequest, _resume: &str) -> Result<Download> {
        self.archive(req)
    }
    /// `POST /objects`.
    fn objects(&mut self, req: &ObjectsRequest) -> Result<Download>;
    /// `POST /report`.
    fn report(&mut self, req: &Report) -> Result<ReportAck>;
    /// `POST /framing`: a layer's framing, zstd (see [`crate::tarsplit`]).
    /// Default: the registry has none (404).
    fn framing(&mut self, _req: &FramingRequest) -> Result<Download> {
        Err(Error::Server {
            status: 404,
            code: None,
            message: "this remote serves no layer framings".into(),
        })
    }
    /// `GET` a path of the registry's OCI API (`/v2/…`, for signatures:
    /// see [`crate::trust`]); `None` when it answers 404. An answer over
    /// `limit` bytes is [`Error::Untrusted`].
    fn oci_get(&mut self, path: &str, _accept: &str, _limit: u64) -> Result<Option<Vec<u8>>> {
        Err(Error::Other(format!(
            "GET {path}: this remote has no OCI API"
        )))
    }
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// `https://host[:port]` (or `http://…`), optionally with a path prefix.
    pub server: String,
    /// Bearer token of this device.
    pub token: Option<String>,
    /// PEM file with the CA certificates to trust instead of the built-in
    /// web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// Do not ask for zstd archives (`--no-zstd`).
    pub no_zstd: bool,
    /// Do not ask for binary deltas (`--no-deltas`).
    pub no_deltas: bool,
}

/// [`Remote`] over HTTP(S) with `ureq`.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
    features: String,
}

/// Where the system CA bundle usually is (Debian/Ubuntu/Alpine/OpenWrt,
/// Fedora/RHEL, openSUSE, BSD-style); `SSL_CERT_FILE` comes first.
#[cfg(feature = "tls")]
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[cfg(feature = "tls")]
fn tls_config(cfg: &ClientConfig) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    // ring is the only provider compiled in; make it the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = match &cfg.ca_file {
        Some(p) => p.clone(),
        None => {
            let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            env.into_iter()
                .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    Error::Usage(
                        "no CA certificates: pass --ca-file PEM (no system CA bundle found)".into(),
                    )
                })?
        }
    };
    let pem = std::fs::read(&path)
        .map_err(|e| Error::Usage(format!("reading CA file {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(Error::Usage(format!("CA file {}: {e}", path.display()))),
        }
    }
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "CA file {} has no certificate",
            path.display()
        )));
    }
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&certs))
        .build())
}

impl Client {
    /// A client for `cfg` (no connection is made yet).
    pub fn new(cfg: &ClientConfig) -> Result<Client> {
        let base = cfg.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!(
                "server URL {:?} must start with https:// (or http://)",
                cfg.server
            )));
        }
        #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
        let mut b = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept(ureq::config::AutoHeaderValue::None)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            .input_buffer_size(32 * 1024)
            .output_buffer_size(16 * 1024)
            .max_idle_connections(1)
            .max_idle_connections_per_host(1);
        if base.starts_with("https://") {
            #[cfg(feature = "tls")]
            {
                b = b.tls_config(tls_config(cfg)?);
            }
            #[cfg(not(feature = "tls"))]
            return Err(Error::Usage(format!(
                "{base}: this agent was built without TLS; use an http:// URL"
            )));
        }
        Ok(Client {
            agent: b.build().into(),
            base,
            auth: cfg.token.as_ref().map(|t| format!("Bearer {}", t.trim())),
            features: features(!cfg.no_zstd, !cfg.no_deltas),
        })
    }

    fn post(&self, path: &str, body: &[u8]) -> Result<ureq::http::Response<ureq::Body>> {
        self.post_with(path, body, None)
    }

    fn post_with(
        &self,
        path: &str,
        body: &[u8],
        resume: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{API_PREFIX}{path}", self.base);
        let mut req = self
            .agent
            .post(&url)
            .header("content-type", CONTENT_TYPE)
            .header(FEATURES_HEADER, &self.features);
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if let Some(r) = resume {
            req = req.header(HEADER_RESUME, r);
        }
        let resp = req.send(body).map_err(|e| transport_error(&url, e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let mut resp = resp;
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        let decoded: Option<ErrorBody> = postcard::from_bytes(&body).ok();
        let message = match &decoded {
            Some(b) => format!("{} ({url})", b.message),
            None => format!("HTTP {status} from {url}"),
        };
        let code = decoded.map(|b| b.code);
        Err(match status {
            401 | 403 => Error::Auth(message),
            500..=599 | 429 | 408 => Error::Transient(message),
            _ => Error::Server {
                status,
                code,
                message,
            },
        })
    }

    fn call<Q: Serialize, A: DeserializeOwned>(&self, path: &str, req: &Q) -> Result<A> {
        let body = postcard::to_allocvec(req)
            .map_err(|e| Error::Other(format!("encoding request: {e}")))?;
        let mut resp = self.post(path, &body)?;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MESSAGE_BYTES as u64)
            .read_to_vec()
            .map_err(|e| transport_error(path, e))?;
        postcard::from_bytes(&bytes).map_err(|e| Error::Server {
            status: 200,
            code: None,
            message: format!("undecodable answer to {path}: {e}"),
        })
    }

    fn download<Q: Serialize>(
        &self,
        path: &str,
        req: &Q,
        resume: Option<&str>,
    ) -> Result<Download> {
        let body = postcard::to_allocvec(req)
            .map_err(|e| Error::Other(format!("encoding request: {e}")))?;
        // Not generic from here on: one copy for the three request types.
        self.download_body(path, &body, resume)
    }

    fn download_body(&self, path: &str, body: &[u8], resume: Option<&str>) -> Result<Download> {
        let resp = self.post_with(path, body, resume)?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        let id = header(HEADER_ARCHIVE_ID).filter(|v| v.len() <= 64);
        let offset = header(HEADER_ARCHIVE_OFFSET).and_then(|v| v.parse().ok());
        let new_bytes = header(HEADER_NEW_BYTES).and_then(|v| v.parse().ok());
        let encoding = header("content-type").and_then(|v| Encoding::from_content_type(&v));
        Ok(Download {
            new_bytes,
            encoding,
            body: Box::new(resp.into_body().into_reader()),
            id,
            offset,
        })
    }
}

fn transport_error(url: &str, e: ureq::Error) -> Error {
    match e {
        ureq::Error::BadUri(m) => Error::Usage(format!("bad server URL {url}: {m}")),
        ureq::Error::RequireHttpsOnly(m) => Error::Usage(m),
        ureq::Error::Tls(m) => Error::Server {
            status: 0,
            code: None,
            message: format!("TLS: {m} ({url})"),
        },
        #[cfg(feature = "tls")]
        ureq::Error::Rustls(e) => Error::Server {
            status: 0,
            code: None,
            message: format!("TLS: {e} ({url})"),
        },
        // rustls reports a refused certificate (and other handshake
        // failures) as InvalidData: retrying will not change it.
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => Error::Server {
            status: 0,
            code: None,
            message: format!("TLS: {io} ({url})"),
        },
        e => Error::Transient(format!("{url}: {e}")),
    }
}

impl Remote for Client {
    fn plan(&mut self, req: &PlanRequest) -> Result<PlanResponse> {
        self.call("/plan", req)
    }
    fn archive(&mut self, req: &ArchiveRequest) -> Result<Download> {
        self.download("/archive", req, None)
    }
    fn archive_resume(&mut self, req: &ArchiveRequest, resume: &str) -> Result<Download> {
        self.download("/archive", req, Some(resume))
    }
    fn objects(&mut self, req: &ObjectsRequest) -> Result<Download> {
        self.download("/objects", req, None)
    }
    fn report(&mut self, req: &Report) -> Result<ReportAck> {
        self.call("/report", req)
    }
    fn framing(&mut self, req: &FramingRequest) -> Result<Download> {
        self.download("/framing", req, None)
    }
    fn oci_get(&mut self, path: &str, accept: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url).header("accept", accept);
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        let mut resp = req.call().map_err(|e| transport_error(&url, e))?;
        let status = resp.status().as_u16();
        let message = format!("HTTP {status} from {url}");
        match status {
            200 => {}
            404 => return Ok(None),
            401 | 403 => return Err(Error::Auth(message)),
            500..=599 | 429 | 408 => return Err(Error::Transient(message)),
            _ => {
                return Err(Error::Server {
                    status,
                    code: None,
                    message,
                })
            }
        }
        match resp.body_mut().with_config().limit(limit).read_to_vec() {
            Ok(b) => Ok(Some(b)),
            Err(ureq::Error::BodyExceedsLimit(_)) => Err(Error::Untrusted(format!(
                "{url}: answer larger than {limit} bytes"
            ))),
            Err(e) => Err(transport_error(&url, e)),
        }
    }
}

/// Whether `e` is the registry's "unknown holdings set" answer (409).
pub fn is_unknown_holdings(e: &Error) -> bool {
    matches!(
        e,
        Error::Server {
            code: Some(ErrorCode::UnknownHoldingsSet),
            ..
        }
    ) || matches!(e, Error::Server { status: 409, .. })
}
