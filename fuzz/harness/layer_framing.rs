// Layer framings (`tarsplit`) from arbitrary bytes, verified against a
// small built tree whose file `a` was tampered with ("HELLO" where the layer
// has "hello").
//
// Input: first byte bit 0 clear = the magic and the layer's diff_id are
// prepended (the fuzzer mutates the records), set = the rest is the whole
// framing. Verification may fail, but must not
// panic, must not change the tree, and must never come out as the layer's
// diff_id: no framing can make the tampered tree pass.
//
// The body of fuzz target `layer_framing`, shared with its replay test
// (`agent/tests/hostile.rs`, every seed and regression input): both
// `include!` this file and call [`run`].

use layerlink_agent::fsops;
use layerlink_agent::store::{Access, Store};
use layerlink_agent::tarsplit::verify_tree;
use layerlink_proto::framing as lfr;
use layerlink_proto::Digest;
use std::os::fd::AsFd;

/// A ustar header block for `name` (type `kind`, `size` content bytes).
pub fn ustar(name: &str, kind: u8, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8], at: usize, w: usize, v: u64| {
        let s = format!("{v:0w$o}", w = w - 1);
        h[at..at + w - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, if kind == b'5' { 0o755 } else { 0o644 });
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_600_000_000);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The layer: `d/`, `a` = "hello"; its tar and the honest framing.
pub fn reference() -> (Vec<u8>, Vec<u8>) {
    let mut tar = ustar("d/", b'5', 0);
    let a = ustar("a", b'0', 5);
    tar.extend_from_slice(&a);
    tar.extend_from_slice(b"hello");
    tar.resize(tar.len() + 507 + 1024, 0);
    let diff_id = Digest::of(&tar);
    let mut f = Vec::new();
    lfr::write_start(&mut f, &diff_id);
    lfr::write_header(&mut f, &ustar("d/", b'5', 0));
    lfr::write_header(&mut f, &a);
    lfr::write_content(&mut f, 5, None);
    lfr::write_end(&mut f, 1024, None);
    (tar, f)
}

pub fn run(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let (tar, _) = reference();
    let diff_id = Digest::of(&tar);
    let dir = std::env::temp_dir().join(format!(
        "layerlink-fuzz-framing-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tree/d")).unwrap();
    std::fs::write(dir.join("tree/a"), b"HELLO").unwrap();
    let store = Store::open(&dir.join("store"), Access::Exclusive).unwrap();
    let root = fsops::open_dir_path(&dir.join("tree")).unwrap();
    let mut framing = Vec::new();
    if mode & 1 == 0 {
        lfr::write_start(&mut framing, &diff_id);
    }
    framing.extend_from_slice(rest);
    if let Ok(v) = verify_tree(&store, &diff_id, root.as_fd(), &framing[..]) {
        assert_ne!(v.digest, diff_id, "a tampered tree verified");
    }
    assert_eq!(std::fs::read(dir.join("tree/a")).unwrap(), b"HELLO");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
