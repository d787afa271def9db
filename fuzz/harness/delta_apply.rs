// Binary-delta application (archive feature `file-delta2`) on arbitrary
// patches: `agent::delta::apply` into a scratch store, against an old
// object made from the input. Byte 0 picks the case: bit 0 prefixes the
// patch with the format-2 magic; bits 1-2 pick the declared result (the
// reference result, one byte longer, one byte shorter, or the base
// itself); bit 3 leaves the base out of the store. Bytes 1-2: old length.
//
// Apply must not panic, and a result it stores must be exactly the declared
// size and hash to the declared digest: reads past the old file's end,
// seeks outside it, output longer or shorter than declared, a missing base
// and a patch naming itself as base all end as `Fallback` or an error.
//
// The body of fuzz target `delta_apply`, shared with its replay test
// (`agent/tests/fuzz_replay.rs`, every seed and regression input): both
// `include!` this file and call [`run`].

use layerlink_agent::delta::{apply, Applied};
use layerlink_agent::fsops::Meta;
use layerlink_agent::store::objects::ObjectWriter;
use layerlink_agent::store::{Access, Store};
use layerlink_proto::patch::{Reader, MAGIC};
use layerlink_proto::Digest;
use std::io::{Cursor, Read};

const MAX_OUT: u64 = 1 << 20;

/// One fuzz input.
pub fn run(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let mode = data[0];
    let old_len = (u16::from_le_bytes([data[1], data[2]]) % 4096) as usize;
    let rest = &data[3..];
    let (old, body) = rest.split_at(old_len.min(rest.len()));
    let mut patch = Vec::new();
    if mode & 1 == 1 {
        patch.extend_from_slice(&MAGIC);
    }
    patch.extend_from_slice(body);
    // What the patch reader makes of it in memory, without the agent's
    // bounds on the old file (bounded output).
    let reference = {
        let mut out = Vec::new();
        Reader::new(&patch[..], Cursor::new(old))
            .take(MAX_OUT)
            .read_to_end(&mut out)
            .ok()
            .map(|_| out)
    };
    let base = Digest::of(old);
    let (new, size) = match ((mode >> 1) & 3, &reference) {
        (0, Some(r)) => (Digest::of(r), r.len() as u64),
        (1, Some(r)) => (Digest::of(r), r.len() as u64 + 1),
        (2, Some(r)) => (Digest::of(r), (r.len() as u64).saturating_sub(1)),
        (_, None) => (Digest::of(b"x"), 1),
        // 3 (the mask leaves nothing else): the patch names its own base.
        (_, _) => (base, old.len() as u64),
    };
    if size == 0 {
        return;
    }
    let root = std::env::temp_dir().join(format!("layerlink-fuzz-delta-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    {
        let store = Store::open(&root, Access::Exclusive).unwrap();
        let mut w = ObjectWriter::new(&store);
        let meta = Meta::default();
        if mode & 8 == 0 && !old.is_empty() {
            let mut src = old;
            w.insert(
                None,
                old.len() as u64,
                &mut |b| Ok(src.read(b).unwrap()),
                &meta,
            )
            .unwrap();
        }
        let mut p = &patch[..];
        let r = apply(
            &mut w,
            &base,
            &new,
            size,
            &mut |b| Ok(p.read(b).unwrap()),
            &meta,
        );
        if let Ok(Applied::Stored) = r {
            if new != base {
                let mut f = w.open_any(&new).unwrap().expect("stored object is there");
                let mut got = Vec::new();
                f.read_to_end(&mut got).unwrap();
                assert_eq!(got.len() as u64, size, "stored a result of the wrong size");
                assert_eq!(
                    Digest::of(&got),
                    new,
                    "stored a result with the wrong digest"
                );
            }
        }
        if mode & 8 != 0 && new != base {
            assert!(!matches!(r, Ok(Applied::Stored)) || w.has(&new).unwrap());
        }
        if new == base {
            assert!(
                matches!(r, Ok(Applied::Fallback(_))),
                "a patch naming itself as base"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
