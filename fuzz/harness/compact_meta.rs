// Compact metadata records (feature `compact-meta`) from arbitrary bytes.
//
// The proto decoder: whatever decodes re-encodes to a list that decodes to
// the same records. The agent: the bytes become the records of a base
// marker (the first byte is the announced count) on a small held layer;
// the apply may fail, but must not panic, must leave a store that passes
// `verify`, and must never change the held layer.
//
// The body of fuzz target `compact_meta`, shared with its replay test
// (`agent/tests/fuzz_replay.rs`, every seed and regression input): both
// `include!` this file and call [`run`].

use flate2::write::GzEncoder;
use flate2::Compression;
use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::store::{Access, Store};
use layerlink_proto::compact::{decode_all, MetaEncoder};
use layerlink_proto::Digest;
use std::io::Write;
use std::path::PathBuf;

fn header(out: &mut Vec<u8>, name: &str, kind: u8, size: usize, link: &str, pax: &[(&str, &[u8])]) {
    if !pax.is_empty() {
        let mut body = Vec::new();
        for (k, v) in pax {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        header(out, "pax", b'x', body.len(), "", &[]);
        data(out, &body);
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, w: usize, v: u64| {
        let s = format!("{v:0w$o}", w = w - 1);
        h[at..at + w - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, if kind == b'5' { 0o755 } else { 0o644 });
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 1_600_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h, 148, 7, u64::from(sum));
    out.extend_from_slice(&h);
}

fn data(out: &mut Vec<u8>, d: &[u8]) {
    out.extend_from_slice(d);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn marker(out: &mut Vec<u8>, kind: &str, keys: &[(&str, &[u8])], content: &[u8]) {
    let mut pax: Vec<(&str, &[u8])> = vec![("LAYERLINK.marker", kind.as_bytes())];
    pax.extend_from_slice(keys);
    header(
        out,
        &format!(".layerlink/{kind}"),
        b'0',
        content.len(),
        "",
        &pax,
    );
    data(out, content);
}

fn gz(tar: &[u8]) -> Vec<u8> {
    let mut g = GzEncoder::new(Vec::new(), Compression::fast());
    g.write_all(tar).unwrap();
    g.finish().unwrap()
}

const FILE: &[u8] = b"content of a/f\n";

/// The held layer: `./`, `a/`, `a/f`, `a/l -> f`, `e` (empty), `.wh.w`.
fn base_archive(b: &Digest) -> Vec<u8> {
    let mut t = Vec::new();
    let id = b.to_string();
    marker(
        &mut t,
        "layer",
        &[("LAYERLINK.diff_id", id.as_bytes())],
        b"",
    );
    header(&mut t, "./", b'5', 0, "", &[]);
    header(&mut t, "a/", b'5', 0, "", &[]);
    let hex = Digest::of(FILE).hex();
    header(
        &mut t,
        "a/f",
        b'0',
        FILE.len(),
        "",
        &[("LAYERLINK.digest", hex.as_bytes())],
    );
    data(&mut t, FILE);
    header(&mut t, "a/l", b'2', 0, "f", &[]);
    header(&mut t, "e", b'0', 0, "", &[]);
    header(&mut t, ".wh.w", b'0', 0, "", &[]);
    marker(
        &mut t,
        "layer-end",
        &[
            ("LAYERLINK.diff_id", id.as_bytes()),
            ("LAYERLINK.entries", b"6"),
        ],
        b"",
    );
    marker(&mut t, "end", &[], b"");
    t.extend_from_slice(&[0u8; 1024]);
    gz(&t)
}

fn scratch() -> PathBuf {
    let p = std::env::temp_dir().join(format!("layerlink-fuzz-compact-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// One fuzz input.
pub fn run(input: &[u8]) {
    let Some((&count, records)) = input.split_first() else {
        return;
    };
    if let Ok(recs) = decode_all(records, u64::from(count)) {
        let mut e = MetaEncoder::new();
        for r in &recs {
            e.push(r);
        }
        assert!(e.out.len() <= records.len(), "re-encoding grew");
        assert_eq!(decode_all(&e.out, e.count).unwrap(), recs);
    }

    let (b, l) = (Digest::of(b"base"), Digest::of(b"layer"));
    let root = scratch();
    {
        let store = Store::open(&root.join("store"), Access::Exclusive).unwrap();
        let mut a = Applier::new(&store, ApplyOptions::new(vec![b])).unwrap();
        a.apply_archive(base_archive(&b).as_slice())
            .expect("the base applies");
        drop(a);
        let before = std::fs::read(store.layer_path(&b).join("a/f")).unwrap();

        let order = Digest::of(b"a\0a/f\0a/l\0e\0w\0").hex();
        let (n, size) = (count.to_string(), records.len().to_string());
        let (bid, lid) = (b.to_string(), l.to_string());
        let mut t = Vec::new();
        marker(
            &mut t,
            "layer",
            &[("LAYERLINK.diff_id", lid.as_bytes())],
            b"",
        );
        marker(
            &mut t,
            "base",
            &[
                ("LAYERLINK.diff_id", bid.as_bytes()),
                ("LAYERLINK.entries", b"0"),
                ("LAYERLINK.meta", n.as_bytes()),
                ("LAYERLINK.meta-size", size.as_bytes()),
                ("LAYERLINK.base-order", order.as_bytes()),
            ],
            records,
        );
        marker(
            &mut t,
            "layer-end",
            &[
                ("LAYERLINK.diff_id", lid.as_bytes()),
                ("LAYERLINK.entries", b"0"),
            ],
            b"",
        );
        marker(&mut t, "end", &[], b"");
        t.extend_from_slice(&[0u8; 1024]);
        let mut a = Applier::new(&store, ApplyOptions::new(vec![l])).unwrap();
        let ok = a.apply_archive(gz(&t).as_slice()).is_ok();
        drop(a);
        assert_eq!(store.has_layer(&l).unwrap(), ok);
        let mut problems = Vec::new();
        let stats = store
            .verify(|p| problems.push(p.to_owned()))
            .expect("verify runs");
        assert_eq!(stats.problems, 0, "store damaged: {problems:?}");
        assert_eq!(
            std::fs::read(store.layer_path(&b).join("a/f")).unwrap(),
            before
        );
        if ok {
            assert_eq!(
                std::fs::read(store.layer_path(&l).join("a/f")).unwrap(),
                FILE
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
