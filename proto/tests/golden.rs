//! Golden bytes: these tests fail when a wire encoding changes by accident.
//! If a change is intended, it is a protocol version change: update
//! `proto/SPEC.md` and the constants here together.

use layerlink_proto::msg::*;
use layerlink_proto::{Digest, ErrorBody, ErrorCode};

fn d(b: u8) -> Digest {
    Digest([b; 32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn digest_is_32_raw_bytes() {
    let bytes = postcard::to_allocvec(&d(0xab)).unwrap();
    assert_eq!(bytes, vec![0xab; 32]);
}

#[test]
fn plan_request_by_hash_is_compact() {
    let req = PlanRequest {
        platform: Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        },
        images: vec![ImageRef {
            repository: "edge/gw".into(),
            reference: "v1".into(),
        }],
        holdings: Holdings::Hash(d(1)),
    };
    let bytes = postcard::to_allocvec(&req).unwrap();
    let expected = concat!(
        "056c696e7578", // os "linux"
        "0561726d3634", // architecture "arm64"
        "01027638",     // Some("v8")
        "01",           // one image
        "07656467652f6777",
        "027631", // edge/gw, v1
        "01",     // Holdings::Hash
        "0101010101010101010101010101010101010101010101010101010101010101",
    );
    assert_eq!(hex(&bytes), expected);
    assert_eq!(postcard::from_bytes::<PlanRequest>(&bytes).unwrap(), req);
}

#[test]
fn held_set_encoding_and_hash() {
    let set = HeldSet {
        layers: vec![d(2), d(1)],
        objects: vec![d(3)],
    };
    let mut c = set.clone();
    c.canonicalize();
    let bytes = postcard::to_allocvec(&Holdings::Full(c.clone())).unwrap();
    assert_eq!(bytes[0], 0x00, "Holdings::Full discriminant");
    assert_eq!(bytes[1], 0x02, "two layers");
    assert_eq!(&bytes[2..34], &[1u8; 32], "sorted: smallest first");
    assert_eq!(bytes[66], 0x01, "one object");
    assert_eq!(bytes.len(), 1 + 1 + 64 + 1 + 32);
    // The hash is order-independent and stable.
    assert_eq!(set.hash(), c.hash());
    assert_eq!(
        set.hash().to_string(),
        "sha256:".to_string() + &hex(&Digest::of(&postcard::to_allocvec(&c).unwrap()).0)
    );
}

#[test]
fn plan_response_layer_states() {
    let resp = PlanResponse {
        holdings_hash: d(9),
        images: vec![ImagePlan {
            image: ImageRef {
                repository: "r".into(),
                reference: "t".into(),
            },
            manifest_digest: d(4),
            config_digest: d(5),
            layers: vec![
                LayerPlan {
                    diff_id: d(6),
                    state: LayerState::Held,
                },
                LayerPlan {
                    diff_id: d(7),
                    state: LayerState::Needed(LayerCost {
                        entries: 300,
                        new_files: 2,
                        new_bytes: 1000,
                        referenced_files: 1,
                        referenced_bytes: 5,
                    }),
                },
            ],
        }],
    };
    let bytes = postcard::to_allocvec(&resp).unwrap();
    let tail = &bytes[bytes.len() - 8..];
    // Needed(1) entries=300 (varint ac 02) new_files=2 new_bytes=1000 (e8 07)
    // referenced_files=1 referenced_bytes=5
    assert_eq!(hex(tail), "01ac0202e8070105");
    assert_eq!(postcard::from_bytes::<PlanResponse>(&bytes).unwrap(), resp);
}

#[test]
fn error_codes_are_stable() {
    let codes = [
        (ErrorCode::BadRequest, 0u8, 400u16),
        (ErrorCode::Unauthorized, 1, 401),
        (ErrorCode::Forbidden, 2, 401),
        (ErrorCode::NotFound, 3, 404),
        (ErrorCode::UnknownHoldingsSet, 4, 409),
        (ErrorCode::PlatformNotFound, 5, 404),
        (ErrorCode::TooLarge, 6, 413),
        (ErrorCode::Internal, 7, 500),
        (ErrorCode::Unavailable, 8, 503),
    ];
    for (code, disc, status) in codes {
        let body = ErrorBody {
            code,
            message: "m".into(),
        };
        assert_eq!(postcard::to_allocvec(&body).unwrap(), vec![disc, 1, b'm']);
        assert_eq!(code.http_status(), status);
    }
}

#[test]
fn archive_and_objects_requests() {
    let req = ArchiveRequest {
        repository: "r".into(),
        manifest_digest: d(1),
        layers: vec![d(2)],
        metadata: true,
        holdings: Holdings::Hash(d(3)),
    };
    let bytes = postcard::to_allocvec(&req).unwrap();
    assert_eq!(bytes.len(), 2 + 32 + 1 + 32 + 1 + 1 + 32);
    assert_eq!(bytes[0..2], [1, b'r']);
    assert_eq!(bytes[67], 1, "metadata = true");
    let obj = ObjectsRequest {
        repository: "r".into(),
        digests: vec![d(2)],
    };
    assert_eq!(postcard::to_allocvec(&obj).unwrap().len(), 2 + 1 + 32);
}

#[test]
fn archive_encodings_and_features() {
    use layerlink_proto::archive::{
        has_feature, Encoding, FEATURES_HEADER, FEATURE_LAYER_BASE, FEATURE_ZSTD, ZSTD_MAX_WINDOW,
    };
    use layerlink_proto::msg::{ARCHIVE_CONTENT_TYPE, ARCHIVE_CONTENT_TYPE_ZSTD};
    assert_eq!(FEATURES_HEADER, "layerlink-features");
    assert_eq!(FEATURE_LAYER_BASE, "layer-base");
    assert_eq!(FEATURE_ZSTD, "zstd");
    assert_eq!(
        ARCHIVE_CONTENT_TYPE,
        "application/vnd.layerlink.archive.v1.tar+gzip"
    );
    assert_eq!(
        ARCHIVE_CONTENT_TYPE_ZSTD,
        "application/vnd.layerlink.archive.v1.tar+zstd"
    );
    assert_eq!(ZSTD_MAX_WINDOW, 256 * 1024);
    assert_eq!(Encoding::Gzip.content_type(), ARCHIVE_CONTENT_TYPE);
    assert_eq!(Encoding::Zstd.content_type(), ARCHIVE_CONTENT_TYPE_ZSTD);
    for (v, e) in [
        (ARCHIVE_CONTENT_TYPE, Some(Encoding::Gzip)),
        (ARCHIVE_CONTENT_TYPE_ZSTD, Some(Encoding::Zstd)),
        (
            "Application/vnd.layerlink.archive.v1.tar+zstd; x=1",
            Some(Encoding::Zstd),
        ),
        ("application/octet-stream", None),
        ("", None),
    ] {
        assert_eq!(Encoding::from_content_type(v), e, "{v}");
    }
    assert_eq!(Encoding::sniff(&[0x1f, 0x8b, 8, 0]), Some(Encoding::Gzip));
    assert_eq!(
        Encoding::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
        Some(Encoding::Zstd)
    );
    assert_eq!(Encoding::sniff(b"tar\0"), None);
    // The agent's header value; registries match names exactly after trimming.
    assert!(has_feature("layer-base,zstd", "zstd"));
    assert!(has_feature(" layer-base , zstd ", "layer-base"));
    assert!(!has_feature("layer-base,zstd2", "zstd"));
    assert!(!has_feature("", "zstd"));
}

/// Binary deltas (`proto/SPEC.md`, "Binary deltas"): the feature name, the
/// PAX keys of a delta entry and the patch header are wire format.
#[test]
fn file_delta_names_and_patch_header() {
    use layerlink_proto::archive::*;
    assert_eq!(FEATURE_FILE_DELTA, "file-delta");
    assert_eq!(PAX_DELTA_BASE, "LAYERLINK.delta-base");
    assert_eq!(PAX_DELTA_SIZE, "LAYERLINK.delta-size");
    assert_eq!(PAX_DIGEST, "LAYERLINK.digest");
    assert_eq!(hex(&DELTA_PATCH_HEADER), "dfb1000000100000");
    assert_eq!(
        u32::from_le_bytes(DELTA_PATCH_HEADER[..4].try_into().unwrap()),
        0xB1DF
    );
    assert_eq!(
        u32::from_le_bytes(DELTA_PATCH_HEADER[4..].try_into().unwrap()),
        0x1000
    );
}

/// Patch format 2 (`proto/SPEC.md`, "Binary deltas"): the feature name and
/// the block layout are wire format.
#[test]
fn patch_format_2_bytes() {
    use layerlink_proto::archive::FEATURE_FILE_DELTA2;
    use layerlink_proto::patch::{Encoder, Reader, MAGIC, MAX_CTRL, MAX_EXTRA};
    use std::io::Read;
    assert_eq!(FEATURE_FILE_DELTA2, "file-delta2");
    assert_eq!(&MAGIC, b"LLP2");
    assert_eq!((MAX_CTRL, MAX_EXTRA), (16384, 65536));
    // "hello world" -> "hello!world": add 5 (zero differences), copy "!",
    // seek +1 over the space, add 5.
    let mut e = Encoder::new();
    e.push(&[0; 5], b"!", 1);
    e.push(&[0; 5], b"", 0);
    let p = e.finish();
    assert_eq!(
        hex(&p),
        concat!(
            "4c4c5032",             // LLP2
            "06010a",               // ctrl_len 6, extra_len 1, diff_len 10
            "050102",               // add 5, copy 1, seek +1 (zigzag 2)
            "050000",               // add 5, copy 0, seek 0
            "21",                   // extra: "!"
            "00000000000000000000"  // diff: ten zeros
        )
    );
    let mut out = Vec::new();
    Reader::new(&p[..], std::io::Cursor::new(&b"hello world"[..]))
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, b"hello!world");
    // A literal run longer than a block's literal section spans blocks:
    // the first pieces seek 0, the last carries the seek.
    let mut e = Encoder::new();
    e.push(&[], &vec![7u8; MAX_EXTRA + 1], -3);
    let p = e.finish();
    // Block 1: ctrl_len 5, extra_len 65536, diff_len 0; add 0, copy
    // 65536, seek 0.
    assert_eq!(hex(&p[..14]), "4c4c503205808004000080800400");
    // Block 2: ctrl_len 3, extra_len 1, diff_len 0; add 0, copy 1, seek −3
    // (zigzag 5); the byte.
    assert_eq!(hex(&p[14 + MAX_EXTRA..]), "03010000010507");
}

/// Compact metadata (`proto/SPEC.md`, "Compact metadata"): names, the
/// record encoding and the tree order are wire format.
#[test]
fn compact_meta_records() {
    use layerlink_proto::archive::*;
    use layerlink_proto::compact::*;
    assert_eq!(FEATURE_COMPACT_META, "compact-meta");
    assert_eq!(PAX_META, "LAYERLINK.meta");
    assert_eq!(PAX_META_SIZE, "LAYERLINK.meta-size");
    assert_eq!(PAX_BASE_ORDER, "LAYERLINK.base-order");
    let rec = |index, mtime, mode, uid, gid| MetaRecord {
        index,
        mtime,
        mode,
        uid,
        gid,
    };
    let recs = [
        rec(2, Some(1_700_000_000), None, None, None),
        rec(3, Some(1_700_000_000), None, None, None),
        rec(4, Some(1_699_999_999), None, None, None),
        rec(300, None, Some(0o755), None, None),
        rec(301, Some(1_700_000_064), None, Some(1000), Some(70_000)),
    ];
    let mut e = MetaEncoder::new();
    for r in &recs {
        e.push(r);
    }
    let expected = concat!(
        "21",         // gap 2, mtime
        "80c49fd50c", // zigzag(1_700_000_000) = 3_400_000_000
        "01",         // gap 0, mtime
        "00",         // same mtime
        "01",         // gap 0, mtime
        "01",         // −1 s
        "f224",       // gap 295 (295 << 4 | 2), mode
        "ed03",       // 0o755
        "0d",         // gap 0, mtime + uid + gid
        "8201",       // +65 s
        "e807",       // uid 1000
        "f0a204",     // gid 70000
    );
    assert_eq!(hex(&e.out), expected);
    assert_eq!(e.count, 5);
    assert_eq!(decode_all(&e.out, 5).unwrap(), recs);
    // Tree order: component by component.
    let mut paths: Vec<&[u8]> = vec![b"usr/lib", b"usr", b"usr-x", b"usr/bin/sh", b"usr/bin"];
    paths.sort_by(|a, b| tree_order(a, b));
    assert_eq!(
        paths,
        [&b"usr"[..], b"usr/bin", b"usr/bin/sh", b"usr/lib", b"usr-x"]
    );
}

/// Layer framing (`proto/SPEC.md`, "Layer framing"): the request, the
/// content type and the record bytes are wire format.
#[test]
fn layer_framing_records() {
    use layerlink_proto::framing::*;
    assert_eq!(CONTENT_TYPE, "application/vnd.layerlink.framing.v1+zstd");
    let req = FramingRequest {
        repository: "edge/gw".into(),
        manifest_digest: d(1),
        layer: d(2),
    };
    let bytes = postcard::to_allocvec(&req).unwrap();
    assert_eq!(
        hex(&bytes),
        concat!(
            "07656467652f6777", // repository
            "0101010101010101010101010101010101010101010101010101010101010101",
            "0202020202020202020202020202020202020202020202020202020202020202",
        )
    );
    let mut out = Vec::new();
    write_start(&mut out, &d(3));
    write_header(&mut out, b"HDR");
    write_content(&mut out, 300, None);
    write_content(&mut out, 1, Some(&d(5)));
    write_end(&mut out, 1024, None);
    write_end(&mut out, 2, Some(b"\0x"));
    let expected = concat!(
        "4c4c4652414d4531", // "LLFRAME1"
        "0303030303030303030303030303030303030303030303030303030303030303",
        "0103484452", // header, 3 bytes
        "02ac02",     // content, 300 bytes
        "00",         // flags: read from the tree
        "0201",       // content, 1 byte
        "03",         // flags: shadowed, digest follows
        "0505050505050505050505050505050505050505050505050505050505050505",
        "03800800",   // end: 1024 zero bytes
        "0302010078", // end: 2 bytes that follow
    );
    assert_eq!(hex(&out), expected);
}
