//! The blob-store contract, run against both implementations: the local
//! directory (the embedded default) and a real Garage S3 server started by
//! the harness. Same assertions for both: what the registry's handlers, the
//! ingest and the garbage collector rely on.

use layerlink_proto::Digest;
use layerlink_registry::config::S3Config;
use layerlink_registry::store::storage::{BlobError, BlobStore, Blobs, S3BlobStore};
use layerlink_tests::garage::Garage;
use sha2::Digest as _;
use std::io::Read;
use std::time::Duration;

/// Deterministic incompressible-looking bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn store(
    blobs: &Blobs,
    data: &[u8],
    expected: Option<&Digest>,
) -> Result<(Digest, u64), BlobError> {
    let mut w = blobs.temp_writer().unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write_all(chunk).unwrap();
    }
    blobs.commit(w, expected, Some(data.len() as u64))
}

fn read_all(blobs: &Blobs, d: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    blobs
        .open_blob(d)
        .unwrap()
        .expect("blob present")
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn tmp_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("tmp"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count()
}

fn contract(blobs: &Blobs, data: &std::path::Path) {
    let small = b"hello, blob store".to_vec();
    let d = Digest::of(&small);

    // Absent.
    assert_eq!(blobs.size(&d).unwrap(), None);
    assert!(blobs.open_blob(&d).unwrap().is_none());
    assert!(blobs.list().unwrap().is_empty());
    blobs.remove(&d).unwrap();
    blobs.touch(&d).unwrap();
    assert!(
        blobs.list().unwrap().is_empty(),
        "touching an absent blob makes none"
    );

    // A wrong digest or size stores nothing and leaves no temp file.
    let wrong = Digest::of(b"something else");
    assert!(matches!(
        store(blobs, &small, Some(&wrong)),
        Err(BlobError::DigestMismatch { .. })
    ));
    let mut w = blobs.temp_writer().unwrap();
    w.write_all(&small).unwrap();
    assert!(matches!(
        blobs.commit(w, Some(&d), Some(3)),
        Err(BlobError::SizeMismatch { .. })
    ));
    assert_eq!(blobs.size(&d).unwrap(), None);
    assert_eq!(tmp_files(data), 0);

    // Stored: size, whole read, ranged reads, listing.
    assert_eq!(
        store(blobs, &small, Some(&d)).unwrap(),
        (d, small.len() as u64)
    );
    assert_eq!(tmp_files(data), 0);
    assert_eq!(blobs.size(&d).unwrap(), Some(small.len() as u64));
    assert_eq!(read_all(blobs, &d), small);
    let mut part = Vec::new();
    blobs
        .open_range(&d, 7, 4)
        .unwrap()
        .unwrap()
        .read_to_end(&mut part)
        .unwrap();
    assert_eq!(part, &small[7..11]);
    let listed = blobs.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].0, listed[0].1), (d, small.len() as u64));

    // Stored again: success, still one blob, and touched (younger).
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(store(blobs, &small, None).unwrap(), (d, small.len() as u64));
    let again = blobs.list().unwrap();
    assert_eq!(again.len(), 1);
    assert!(
        again[0].2 > listed[0].2,
        "storing again touches: {:?} then {:?}",
        listed[0].2,
        again[0].2
    );
    std::thread::sleep(Duration::from_millis(1100));
    blobs.touch(&d).unwrap();
    let touched = blobs.list().unwrap();
    assert!(touched[0].2 > again[0].2, "touch makes the blob younger");
    assert_eq!(touched[0].1, small.len() as u64, "touch keeps the size");

    // A large blob (several 16 MiB parts on S3) through an upload session,
    // in chunks, read back streaming.
    let big = bytes(40 * 1024 * 1024 + 12345, 7);
    let big_d = Digest::of(&big);
    blobs.create_upload("session-1").unwrap();
    for chunk in big.chunks(5 * 1024 * 1024) {
        let mut w = blobs.resume_upload("session-1", None).unwrap().unwrap();
        w.write_all(chunk).unwrap();
    }
    assert_eq!(
        blobs.upload_len("session-1").unwrap(),
        Some(big.len() as u64)
    );
    let w = blobs.resume_upload("session-1", None).unwrap().unwrap();
    assert_eq!(
        blobs.commit(w, Some(&big_d), None).unwrap().1,
        big.len() as u64
    );
    assert_eq!(blobs.upload_len("session-1").unwrap(), None);
    assert_eq!(blobs.size(&big_d).unwrap(), Some(big.len() as u64));
    let mut r = blobs.open_blob(&big_d).unwrap().unwrap();
    let (mut h, mut n, mut buf) = (sha2::Sha256::new(), 0u64, vec![0u8; 100_000]);
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    assert_eq!((Digest::from_hasher(h), n), (big_d, big.len() as u64));
    let tail_start = big.len() as u64 - 100;
    let mut tail = Vec::new();
    blobs
        .open_range(&big_d, tail_start, 100)
        .unwrap()
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    assert_eq!(tail, &big[big.len() - 100..]);

    // The async stream (HTTP bodies) gives the same bytes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let read = blobs.open_range(&big_d, 1000, 3_000_000).unwrap().unwrap();
    let streamed = rt.block_on(async move {
        use futures_util::StreamExt;
        let mut s = read.into_stream();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    });
    assert_eq!(streamed, &big[1000..3_001_000]);

    // A local file of the blob (image editing reads files).
    let f = blobs.local_file(&big_d).unwrap().unwrap();
    assert_eq!(std::fs::read(f).unwrap(), big);
    assert!(blobs.local_file(&wrong).unwrap().is_none());

    let mut all: Vec<_> = blobs
        .list()
        .unwrap()
        .iter()
        .map(|(d, s, _)| (*d, *s))
        .collect();
    all.sort();
    let mut want = vec![(d, small.len() as u64), (big_d, big.len() as u64)];
    want.sort();
    assert_eq!(all, want);

    // Removed: gone from every view; removing again is fine.
    blobs.remove(&big_d).unwrap();
    blobs.remove(&big_d).unwrap();
    assert_eq!(blobs.size(&big_d).unwrap(), None);
    assert!(blobs.open_blob(&big_d).unwrap().is_none());
    assert_eq!(blobs.list().unwrap().len(), 1);
    blobs.remove(&d).unwrap();
    assert!(blobs.list().unwrap().is_empty());
}

#[test]
fn local_directory_store() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::open(dir.path()).unwrap();
    assert!(blobs.store().local_path(&Digest::of(b"x")).is_some());
    contract(&blobs, dir.path());
}

fn s3_config(g: &Garage) -> S3Config {
    S3Config {
        endpoint: Some(g.endpoint.clone()),
        region: Some(g.region.clone()),
        access_key_id: Some(g.access_key_id.clone()),
        secret_access_key: Some(g.secret_access_key.clone()),
        virtual_hosted_style: false,
    }
}

#[test]
fn garage_s3_store() {
    let g = Garage::start("contract");
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3BlobStore::open("s3://contract/some/prefix", &s3_config(&g)).unwrap();
    assert_eq!(s3.location(), "s3://contract/some/prefix");
    assert!(s3.local_path(&Digest::of(b"x")).is_none());
    let blobs = Blobs::with_store(dir.path(), Box::new(s3)).unwrap();
    contract(&blobs, dir.path());
    assert!(
        !dir.path().join("blobs").exists(),
        "no local blob directory with an S3 store"
    );

    // Two prefixes in one bucket do not see each other's blobs.
    let other = S3BlobStore::open("s3://contract/other", &s3_config(&g)).unwrap();
    let mine = Blobs::with_store(dir.path(), Box::new(other)).unwrap();
    let (d, _) = store(&mine, b"only here", None).unwrap();
    let first = S3BlobStore::open("s3://contract/some/prefix", &s3_config(&g)).unwrap();
    assert_eq!(first.size(&d).unwrap(), None);
    assert_eq!(mine.size(&d).unwrap(), Some(9));
}

#[test]
fn garage_refuses_bad_credentials_and_buckets() {
    let g = Garage::start("creds");
    let mut bad = s3_config(&g);
    bad.secret_access_key = Some("0".repeat(64));
    let e = S3BlobStore::open("s3://creds", &bad).unwrap_err();
    assert!(
        format!("{e:#}").contains("listing blob store s3://creds"),
        "{e:#}"
    );
    let e = S3BlobStore::open("s3://no-such-bucket", &s3_config(&g)).unwrap_err();
    assert!(format!("{e:#}").contains("no-such-bucket"), "{e:#}");
}

/// Replicas pushing the same image store the same blob at the same time:
/// four writers (four stores, as four registry processes would have) put
/// one 40 MiB blob — a multipart upload each — at once, three rounds with
/// fresh content. Every writer succeeds and the bucket holds the bytes.
/// (Garage fails a multipart upload of a key another upload completed
/// first; the store must see that the blob is there and call it stored.)
#[test]
fn garage_same_blob_from_four_writers_at_once() {
    let g = Garage::start("racing");
    for round in 0..3u64 {
        let data = bytes(40 << 20, 1000 + round);
        let digest = Digest::of(&data);
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let results: Vec<Result<(Digest, u64), BlobError>> = std::thread::scope(|s| {
            let handles: Vec<_> = dirs
                .iter()
                .map(|dir| {
                    let (data, g) = (&data, &g);
                    s.spawn(move || {
                        let s3 = S3BlobStore::open("s3://racing/p", &s3_config(g)).unwrap();
                        let blobs = Blobs::with_store(dir.path(), Box::new(s3)).unwrap();
                        store(&blobs, data, Some(&digest))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok((d, n)) => assert_eq!((d, n), (digest, data.len() as u64)),
                Err(e) => panic!("round {round}: writer {i} failed: {e}"),
            }
        }
        let s3 = S3BlobStore::open("s3://racing/p", &s3_config(&g)).unwrap();
        let blobs = Blobs::with_store(dirs[0].path(), Box::new(s3)).unwrap();
        assert!(
            read_all(&blobs, &digest) == data,
            "round {round}: bytes differ"
        );
    }
}
