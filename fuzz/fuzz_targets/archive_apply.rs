//! Arbitrary bytes as a dedup archive (first byte even: the rest is taken
//! as the gzip stream; odd: the rest is gzip'd first, so the fuzzer mutates
//! the tar itself) applied into a scratch store. Apply may fail, but must
//! not panic and must not create or change anything outside the store.
#![no_main]

use flate2::write::GzEncoder;
use flate2::Compression;
use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::store::{Access, Store};
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::path::PathBuf;

fn scratch() -> PathBuf {
    let p = std::env::temp_dir().join(format!("layerlink-fuzz-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.join("sentinel")).unwrap();
    std::fs::write(p.join("sentinel/keep"), b"keep").unwrap();
    p
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(rest).unwrap();
        gz.finish().unwrap()
    };
    let root = scratch();
    {
        let store = Store::open(&root.join("store"), Access::Exclusive).unwrap();
        let mut opts = ApplyOptions::new(Vec::new());
        opts.any_layers = true;
        opts.allow_devices = mode & 2 == 0;
        opts.max_new_bytes = 16 << 20;
        opts.max_stream_bytes = 64 << 20;
        let mut a = Applier::new(&store, opts).unwrap();
        let _ = a.apply_archive(bytes.as_slice());
        drop(a);
        // Whatever was committed must pass the store's own checks.
        let mut problems = Vec::new();
        let stats = store
            .verify(|p| problems.push(p.to_owned()))
            .expect("verify runs");
        assert_eq!(stats.problems, 0, "store damaged: {problems:?}");
    }
    assert_eq!(
        names(&root),
        vec!["sentinel", "store"],
        "wrote beside the store"
    );
    assert_eq!(
        names(&root.join("sentinel")),
        vec!["keep"],
        "wrote into the sentinel"
    );
    assert_eq!(std::fs::read(root.join("sentinel/keep")).unwrap(), b"keep");
    let _ = std::fs::remove_dir_all(&root);
});
