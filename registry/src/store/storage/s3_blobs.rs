//! Original blobs in an S3-compatible object store (`[storage] blobs =
//! "s3://bucket/prefix"`), through the `object_store` crate (Apache Arrow's
//! object-store client: S3 signing, retries, multipart uploads, streaming
//! GETs; a well-kept crate instead of a hand-written S3 client).
//!
//! ```text
//! s3://bucket/prefix/
//! ├── blobs/sha256/<hex>     original blobs, byte-identical to the push
//! ├── touched/sha256/<hex>   empty marker, rewritten when a blob is used again
//! └── objects/sha256/<hex>   a file object, as the data directory stores it
//!                            (zstd); shared by replicas when the layer index
//!                            is in PostgreSQL (`crate::store::shared`)
//! ```
//!
//! **Touch.** S3 has no "set modification time"; rewriting a layer to touch
//! it would cost its whole size. A blob used again (pushed again, mounted)
//! gets an empty marker object instead, and [`BlobStore::list`] reports the
//! later of the blob's and the marker's time, which is what the garbage
//! collector's grace period compares.
//!
//! **Sync over async.** The registry's storage code is synchronous and runs
//! on blocking threads (`spawn_blocking` in `serve`, or the main thread of
//! `gc`, `stats`, `edit`); `object_store` is async. The store owns a small
//! dedicated tokio runtime (2 worker threads) and every call is
//! `runtime.block_on(…)` on the calling blocking thread: the same code works
//! in `serve` (whose runtime is never blocked: callers are on its blocking
//! pool) and in CLI commands that have no runtime at all, and connections
//! the HTTP client spawns live on a runtime that runs as long as the store.
//! Calling a method from inside an async task would panic (tokio forbids
//! blocking a worker): every caller is already in `spawn_blocking`, as the
//! filesystem store needs too.
//!
//! **Streaming.** A read issues one ranged GET and a task on the store's
//! runtime forwards the body chunks into a channel of 4: the reader (a
//! blocking `Read` for ingest, or an async stream for an HTTP response)
//! never holds more than a few chunks of a layer. Uploads are staged in
//! `DATA/tmp/` (hashing and verifying the digest needs every byte first)
//! and then sent with one PUT up to 16 MiB, above that as a multipart
//! upload of 16 MiB parts read from the staged file (4 parts in flight).

use super::blobs::{BlobRead, BlobStore};
use crate::config::S3Config;
use anyhow::Context;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use layerlink_proto::Digest;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientConfigKey, GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart,
};
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Blobs up to this size are uploaded with one PUT; larger ones in parts of
/// this size.
const PART: usize = 16 * 1024 * 1024;

/// Original blobs in a bucket.
#[derive(Debug)]
pub struct S3BlobStore {
    store: Arc<AmazonS3>,
    url: String,
    blobs: String,
    touched: String,
    objects: String,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Object transfers in flight at once ([`S3BlobStore::put_objects`],
/// [`S3BlobStore::get_objects`]): a layer has thousands of small files and
/// each is one request.
const OBJECT_REQUESTS: usize = 16;

impl Drop for S3BlobStore {
    fn drop(&mut self) {
        // The store may be dropped inside `serve`'s runtime, where a
        // blocking shutdown would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn io_err(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        e => io::Error::other(e),
    }
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl S3BlobStore {
    /// Connect to `url` (`s3://bucket[/prefix]`) with `config`; settings it
    /// leaves out come from the usual `AWS_*` environment variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT`, …). Checks that the bucket answers.
    pub fn open(url: &str, config: &S3Config) -> anyhow::Result<S3BlobStore> {
        let (bucket, prefix) = crate::config::parse_s3_url(url)?;
        // The client's default 30 s limit covers a whole request, body
        // included: a layer streamed to a slow client (the channel applies
        // backpressure) must not be cut after 30 s.
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "1h");
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let Some(r) = &config.region {
            b = b.with_region(r);
        }
        if let Some(k) = &config.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &config.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        if config.virtual_hosted_style {
            b = b.with_virtual_hosted_style_request(true);
        }
        let store = Arc::new(b.build().with_context(|| format!("blob store {url}"))?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-blobs")
            .enable_all()
            .build()
            .context("starting the object-store runtime")?;
        let join = |p: &str| {
            if prefix.is_empty() {
                p.to_owned()
            } else {
                format!("{prefix}/{p}")
            }
        };
        let s = S3BlobStore {
            store,
            url: url.to_owned(),
            blobs: join("blobs/sha256"),
            touched: join("touched/sha256"),
            objects: join("objects/sha256"),
            runtime: Some(runtime),
        };
        // Fail at start-up, not at the first push, when the bucket or the
        // credentials are wrong.
        let probe = ObjPath::from(s.blobs.as_str());
        let store = s.store.clone();
        s.block_on(async move {
            let mut l = store.list(Some(&probe));
            match l.next().await {
                Some(Err(e)) => Err(e),
                _ => Ok(()),
            }
        })
        .with_context(|| format!("listing blob store {url}"))?;
        Ok(s)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the store")
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt().block_on(f)
    }

    fn blob_key(&self, d: &Digest) -> ObjPath {
        ObjPath::from(format!("{}/{}", self.blobs, d.hex()))
    }

    fn touch_key(&self, d: &Digest) -> ObjPath {
        ObjPath::from(format!("{}/{}", self.touched, d.hex()))
    }

    /// Every object key under the blob prefix with its size (tests: to
    /// check what is in the bucket).
    pub fn list_keys(&self) -> io::Result<Vec<(String, u64)>> {
        let store = self.store.clone();
        let prefix = ObjPath::from(self.blobs.as_str());
        self.block_on(async move {
            let mut out = Vec::new();
            let mut l = store.list(Some(&prefix));
            while let Some(m) = l.next().await {
                let m = m.map_err(io_err)?;
                out.push((m.location.to_string(), m.size));
            }
            Ok(out)
        })
    }

    fn object_key(&self, d: &Digest) -> ObjPath {
        ObjPath::from(format!("{}/{}", self.objects, d.hex()))
    }

    /// Upload file objects: each `(digest, file)` is stored under
    /// `objects/sha256/<hex>` with the file's bytes as they are (the data
    /// directory's zstd form). Several requests in flight.
    pub fn put_objects(&self, items: Vec<(Digest, PathBuf)>) -> io::Result<()> {
        let keyed: Vec<_> = items
            .into_iter()
            .map(|(d, p)| (self.object_key(&d), p))
            .collect();
        let store = self.store.clone();
        self.block_on(async move {
            futures_util::stream::iter(keyed)
                .map(|(key, path)| {
                    let store = store.clone();
                    async move {
                        let size = tokio::fs::metadata(&path).await?.len();
                        match Self::upload(store.clone(), key.clone(), path, size).await {
                            Ok(()) => Ok(()),
                            // Stored meanwhile by another replica
                            // publishing the same object (see `put_staged`).
                            Err(e) => match store.head(&key).await {
                                Ok(m) if m.size == size => Ok(()),
                                _ => Err(e),
                            },
                        }
                    }
                })
                .buffer_unordered(OBJECT_REQUESTS)
                .collect::<Vec<io::Result<()>>>()
                .await
                .into_iter()
                .collect()
        })
    }

    /// Download file objects: each `(digest, file)` is written to `file`
    /// (created) as stored. An absent object is a `NotFound` error.
    pub fn get_objects(&self, items: Vec<(Digest, PathBuf)>) -> io::Result<u64> {
        let keyed: Vec<_> = items
            .into_iter()
            .map(|(d, p)| (self.object_key(&d), p))
            .collect();
        let store = self.store.clone();
        self.block_on(async move {
            let sizes = futures_util::stream::iter(keyed)
                .map(|(key, path)| {
                    let store = store.clone();
                    async move {
                        use tokio::io::AsyncWriteExt;
                        let got = store.get(&key).await.map_err(io_err)?;
                        let mut body = got.into_stream();
                        let mut f = tokio::fs::File::create(&path).await?;
                        let mut n = 0u64;
                        while let Some(chunk) = body.next().await {
                            let chunk = chunk.map_err(io_err)?;
                            n += chunk.len() as u64;
                            f.write_all(&chunk).await?;
                        }
                        f.flush().await?;
                        Ok::<u64, io::Error>(n)
                    }
                })
                .buffer_unordered(OBJECT_REQUESTS)
                .collect::<Vec<io::Result<u64>>>()
                .await;
            sizes.into_iter().sum()
        })
    }

    /// Every file object in the bucket: digest, size, last write.
    pub fn list_objects(&self) -> io::Result<Vec<(Digest, u64, SystemTime)>> {
        let mut out: Vec<_> = self
            .times(&self.objects)?
            .into_iter()
            .map(|(d, (size, t))| (d, size, t))
            .collect();
        out.sort_by_key(|(d, _, _)| *d);
        Ok(out)
    }

    /// Delete file objects (absent ones are fine).
    pub fn remove_objects(&self, digests: &[Digest]) -> io::Result<()> {
        let keys: Vec<_> = digests.iter().map(|d| self.object_key(d)).collect();
        let store = self.store.clone();
        self.block_on(async move {
            futures_util::stream::iter(keys)
                .map(|key| {
                    let store = store.clone();
                    async move {
                        match store.delete(&key).await {
                            Ok(()) => Ok(()),
                            Err(e) if not_found(&e) => Ok(()),
                            Err(e) => Err(io_err(e)),
                        }
                    }
                })
                .buffer_unordered(OBJECT_REQUESTS)
                .collect::<Vec<io::Result<()>>>()
                .await
                .into_iter()
                .collect()
        })
    }

    fn times(&self, prefix: &str) -> io::Result<HashMap<Digest, (u64, SystemTime)>> {
        let store = self.store.clone();
        let prefix = ObjPath::from(prefix);
        self.block_on(async move {
            let mut out = HashMap::new();
            let mut l = store.list(Some(&prefix));
            while let Some(m) = l.next().await {
                let m = m.map_err(io_err)?;
                let Some(name) = m.location.filename() else {
                    continue;
                };
                let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                    continue;
                };
                out.insert(d, (m.size, m.last_modified.into()));
            }
            Ok(out)
        })
    }

    async fn upload(
        store: Arc<AmazonS3>,
        key: ObjPath,
        staged: PathBuf,
        size: u64,
    ) -> io::Result<()> {
        let mut file = tokio::fs::File::open(&staged).await?;
        if size <= PART as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).await?;
            store
                .put(&key, PutPayload::from(buf))
                .await
                .map_err(io_err)?;
            return Ok(());
        }
        let upload = store.put_multipart(&key).await.map_err(io_err)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 1024 * 1024];
        let sent: io::Result<()> = async {
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                w.wait_for_capacity(4).await.map_err(io_err)?;
                w.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => w.finish().await.map(|_| ()).map_err(io_err),
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }
}

impl BlobStore for S3BlobStore {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let (store, key) = (self.store.clone(), self.blob_key(digest));
        match self.block_on(async move { store.head(&key).await }) {
            Ok(m) => Ok(Some(m.size)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    fn open(&self, digest: &Digest, start: u64, len: Option<u64>) -> io::Result<Option<BlobRead>> {
        let (store, key) = (self.store.clone(), self.blob_key(digest));
        let range = match len {
            Some(0) => {
                // An empty range is not expressible in HTTP; nothing to read.
                return Ok(self.size(digest)?.map(|_| {
                    let (_, rx) = mpsc::channel(1);
                    BlobRead::Remote(RemoteRead::new(rx, 0))
                }));
            }
            Some(n) => Some(GetRange::Bounded(start..start + n)),
            None if start > 0 => Some(GetRange::Offset(start)),
            None => None,
        };
        let got = self.block_on(async move {
            store
                .get_opts(
                    &key,
                    GetOptions {
                        range,
                        ..GetOptions::default()
                    },
                )
                .await
        });
        let got = match got {
            Ok(g) => g,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let expected = got.range.end - got.range.start;
        let (tx, rx) = mpsc::channel(4);
        self.rt().spawn(async move {
            let mut body = got.into_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(io_err);
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break; // reader gone, or error delivered
                }
            }
        });
        Ok(Some(BlobRead::Remote(RemoteRead::new(rx, expected))))
    }

    fn put_staged(&self, digest: &Digest, staged: &Path, size: u64) -> io::Result<()> {
        if self.size(digest)?.is_some() {
            return self.touch(digest);
        }
        let fut = Self::upload(
            self.store.clone(),
            self.blob_key(digest),
            staged.to_owned(),
            size,
        );
        match self.block_on(fut) {
            Ok(()) => Ok(()),
            // Two replicas storing the same blob at once: the S3 server
            // may fail one multipart upload of a key when the other
            // completes first (Garage drops it). The name is the content's
            // digest, so the blob the other one stored is this one.
            Err(e) if self.size(digest)? == Some(size) => {
                tracing::info!(%digest, error = %e, "blob stored by another writer meanwhile");
                self.touch(digest)
            }
            Err(e) => Err(e),
        }
    }

    fn touch(&self, digest: &Digest) -> io::Result<()> {
        let (store, key) = (self.store.clone(), self.touch_key(digest));
        self.block_on(async move { store.put(&key, PutPayload::new()).await })
            .map(|_| ())
            .map_err(io_err)
    }

    fn list(&self) -> io::Result<Vec<(Digest, u64, SystemTime)>> {
        let touched = self.times(&self.touched)?;
        let mut out: Vec<_> = self
            .times(&self.blobs)?
            .into_iter()
            .map(|(d, (size, t))| {
                let t = match touched.get(&d) {
                    Some((_, t2)) if *t2 > t => *t2,
                    _ => t,
                };
                (d, size, t)
            })
            .collect();
        out.sort_by_key(|(d, _, _)| *d);
        Ok(out)
    }

    fn remove(&self, digest: &Digest) -> io::Result<()> {
        let store = self.store.clone();
        let (blob, mark) = (self.blob_key(digest), self.touch_key(digest));
        self.block_on(async move {
            for key in [blob, mark] {
                match store.delete(&key).await {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(io_err(e)),
                }
            }
            Ok(())
        })
    }

    fn local_path(&self, _digest: &Digest) -> Option<PathBuf> {
        None
    }
}

/// The body of a GET, chunk by chunk from the task that reads it; a body
/// shorter than the response announced is an error, not a silent EOF.
#[derive(Debug)]
pub struct RemoteRead {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
    left: u64,
}

impl RemoteRead {
    fn new(rx: mpsc::Receiver<io::Result<Bytes>>, len: u64) -> RemoteRead {
        RemoteRead {
            rx,
            cur: Bytes::new(),
            left: len,
        }
    }

    fn cut_short(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("object-store body ended {} bytes early", self.left),
        )
    }

    /// The rest of the body as an async stream.
    pub fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        futures_util::stream::unfold(self, |mut r| async move {
            loop {
                if !r.cur.is_empty() {
                    let b = std::mem::take(&mut r.cur);
                    r.left = r.left.saturating_sub(b.len() as u64);
                    return Some((Ok(b), r));
                }
                match r.rx.recv().await {
                    Some(Ok(b)) => r.cur = b,
                    Some(Err(e)) => {
                        r.left = 0;
                        return Some((Err(e), r));
                    }
                    None if r.left > 0 => {
                        let e = r.cut_short();
                        r.left = 0;
                        return Some((Err(e), r));
                    }
                    None => return None,
                }
            }
        })
        .boxed()
    }
}

impl Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.cur.is_empty() {
                let n = buf.len().min(self.cur.len());
                buf[..n].copy_from_slice(&self.cur.split_to(n));
                self.left = self.left.saturating_sub(n as u64);
                return Ok(n);
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None if self.left > 0 => return Err(self.cut_short()),
                None => return Ok(0),
            }
        }
    }
}
