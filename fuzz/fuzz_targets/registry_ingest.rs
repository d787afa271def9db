//! Arbitrary bytes as a pushed layer blob, ingested into a temp data dir.
//! Must return Ok or Err, never panic. First byte picks the media type.
#![no_main]

use layerlink_proto::Digest;
use layerlink_registry::ingest::ingest_layer;
use layerlink_registry::store::objects::ObjectStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, blob)) = data.split_first() else {
        return;
    };
    let media = match mode % 3 {
        0 => "application/vnd.oci.image.layer.v1.tar",
        1 => "application/vnd.oci.image.layer.v1.tar+gzip",
        _ => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    let dir = std::env::temp_dir().join(format!("layerlink-fuzz-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = redb::Database::create(dir.join("index.redb")).unwrap();
    let store = ObjectStore::new(dir.join("objects"));
    let blob_digest = Digest::of(blob);
    // For a plain tar the blob's digest is its diff_id, so the whole
    // ingest (including the commit) runs; otherwise it fails at the end.
    let diff_id = blob_digest;
    let _ = ingest_layer(&db, &store, &blob_digest, media, &diff_id, blob);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
});
