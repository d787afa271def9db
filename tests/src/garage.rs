//! A throwaway single-node Garage (a real S3-compatible object store),
//! started for one test: config in a temp dir, sqlite metadata, free ports,
//! layout assigned and applied, one key and one bucket; killed and deleted
//! on drop.
//!
//! The binary is the one `scripts/install-deps.sh` installs:
//! `$LAYERLINK_GARAGE`, else
//! `${LAYERLINK_CACHE:-/var/cache/layerlink}/garage-2.5.0/bin/garage`. A
//! missing binary fails the test (it is not skipped).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Garage binary the tests use.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LAYERLINK_GARAGE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("LAYERLINK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/layerlink"));
    cache.join("garage-2.5.0/bin/garage")
}

/// A running Garage node with one bucket.
pub struct Garage {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Region Garage signs with.
    pub region: String,
    /// Access key id of the test key.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// The bucket the key may read and write.
    pub bucket: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Garage {
    /// Start a node and create bucket `bucket` with a read/write key.
    pub fn start(bucket: &str) -> Garage {
        let bin = garage_bin();
        assert!(
            bin.is_file(),
            "Garage not installed at {} (run scripts/install-deps.sh)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("layerlink-garage-")
            .tempdir()
            .expect("temp dir");
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let secret: String = (0..32).map(|i| format!("{:02x}", i * 7 + 3)).collect();
        let config = dir.path().join("garage.toml");
        let text = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
        );
        std::fs::write(&config, text).expect("write garage config");
        let log = std::fs::File::create(dir.path().join("garage.log")).expect("log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut g = Garage {
            child,
            dir,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "garage".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            bucket: bucket.to_owned(),
        };
        let id = g.retry("node id", &["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap_or_default().to_owned();
        g.retry(
            "layout assign",
            &["layout", "assign", "-z", "dc1", "-c", "1G", &id],
        );
        g.retry("layout apply", &["layout", "apply", "--version", "1"]);
        let key = g.retry("key create", &["key", "create", "layerlink-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name:?} in `garage key create` output:\n{key}"))
        };
        g.access_key_id = field("Key ID:");
        g.secret_access_key = field("Secret key:");
        g.retry("bucket create", &["bucket", "create", bucket]);
        g.retry(
            "bucket allow",
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                bucket,
                "--key",
                "layerlink-test",
            ],
        );
        g
    }

    /// Run `garage -c CONFIG args…`; its stdout, or the error with stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {}: {}\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The daemon takes a moment to answer RPC and to apply a new layout.
    fn retry(&mut self, what: &str, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            match self.cli(args) {
                Ok(out) => return out,
                Err(e) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("garage server exited ({status}):\n{}", self.log());
                    }
                    if start.elapsed() > Duration::from_secs(60) {
                        panic!("{what}: {e}\nserver log:\n{}", self.log());
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// The node's directory (config, metadata, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// [`Self::storage_toml`] with the metadata (and device records) in the
    /// PostgreSQL database at `metadata_url`: the production backends.
    pub fn storage_toml_with_metadata(&self, prefix: &str, metadata_url: &str) -> String {
        self.storage_toml(prefix).replacen(
            "[storage]\n",
            &format!("[storage]\nmetadata = \"{metadata_url}\"\n"),
            1,
        )
    }

    /// A registry `[storage]` section keeping blobs in `s3://BUCKET/prefix`.
    pub fn storage_toml(&self, prefix: &str) -> String {
        format!(
            "[storage]\nblobs = \"s3://{}/{prefix}\"\n\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            self.bucket, self.endpoint, self.region, self.access_key_id, self.secret_access_key
        )
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
