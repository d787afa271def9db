//! Harness for the end-to-end tests: real processes, real images, real peers.
//!
//! | module | what it gives a test |
//! |---|---|
//! | [`bins`] | paths of the real `layerlink-registry` / `layerlink-agent` binaries (built on first use) |
//! | [`registry`] | [`Registry`]: the registry process on `127.0.0.1:0` with a temp data dir, killed on drop |
//! | [`agent`] | [`Agent`]: the agent binary with a temp store |
//! | [`oci`] | `skopeo` push/pull, `umoci unpack`, reading an OCI image layout |
//! | [`images`] | [`test_images()`]: the cached Debian test images (built by `scripts/build-test-images.sh`) |
//! | [`tree`] | [`compare_trees`]: the oracle for "this rootfs equals that one" |
//! | [`layers`] | an independent count of the files and distinct contents in layer blobs |
//! | [`proxy`] | [`CountingProxy`]: TCP bytes on the wire, both directions, optional cut |
//! | [`pump`] | the one TCP pump of the proxies (counting, fault injection, the benchmark's), each with its own per-chunk [`Tap`](pump::Tap) |
//! | [`args`] | flag parsing and MiB formatting for the harness binaries |
//! | [`http`] | a raw HTTP/1.1 client for malformed and truncated requests |
//! | [`fixture`] | a registry holding the test images; "checkout equals `umoci unpack`" |
//! | [`postgres`] | [`TestPostgres`](postgres::TestPostgres): a throwaway PostgreSQL cluster on a unix socket, removed on drop |
//! | [`garage`] | [`Garage`](garage::Garage): a throwaway single-node Garage S3 server with a key and a bucket |
//!
//! Nothing here stands in for a part under test: the oracles are skopeo,
//! umoci, the file system and code written independently of the registry.

pub mod agent;
pub mod args;
pub mod bins;
pub mod faultproxy;
pub mod fixture;
pub mod garage;
pub mod http;
pub mod images;
pub mod layers;
pub mod oci;
pub mod pki;
pub mod postgres;
pub mod proxy;
pub mod pump;
pub mod registry;
pub mod tree;

pub use agent::Agent;
pub use images::{test_images, TestImages};
pub use oci::{skopeo_pull, skopeo_push, umoci_unpack, OciLayout};
pub use proxy::CountingProxy;
pub use registry::Registry;
pub use tree::{assert_trees_equal, compare_trees, Difference};

use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex sha256 of everything `r` yields, streamed.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Lower-case hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_reader(std::fs::File::open(path)?)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run a command, panic with its full output if it fails; return its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    if !out.status.success() {
        panic!(
            "command failed ({}): {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Run a command (stdin closed) and return its output, whatever the status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}
