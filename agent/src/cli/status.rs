//! `status`: what the store holds, what it costs on disk, and how the last
//! sync went (per image), as text or `--json`.

use super::args::Args;
use crate::error::{exit, Result};
use crate::fsops::file_type;
use crate::json::Value;
use crate::progress::human;
use crate::store::record::show_image_ref;
use crate::store::{walk_tree, Access, Store};
use layerlink_proto::time::rfc3339;
use rustix::fs::FileType;

pub(super) fn cmd_status(a: &Args) -> Result<i32> {
    a.only("status", &["--store", "--json"])?;
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    let records = store.records()?;
    let layers = store.committed_layers()?;
    let (mut variants, mut loose, mut object_bytes) = (0u64, 0u64, 0u64);
    store.for_each_object(|_, _, st| {
        variants += 1;
        if st.st_nlink == 1 {
            loose += 1;
        }
        object_bytes += st.st_blocks as u64 * 512;
        Ok(())
    })?;
    let mut tree_bytes = 0u64;
    for l in &layers {
        let fd = store.open_layer(l)?;
        let mut p = Vec::new();
        walk_tree(std::os::fd::AsFd::as_fd(&fd), &mut p, &mut |_, _, st| {
            if st.st_nlink == 1 || file_type(st) == FileType::Directory {
                tree_bytes += st.st_blocks as u64 * 512;
            }
            Ok(())
        })?;
    }
    let used: std::collections::BTreeSet<_> = records
        .iter()
        .flat_map(|r| r.layers.iter().copied())
        .collect();
    let st = store.state();
    if a.has(&["--json"]) {
        let images = records
            .iter()
            .map(|r| {
                Value::obj([
                    ("image", Value::str(show_image_ref(&r.image))),
                    ("manifest_digest", Value::str(r.manifest_digest.to_string())),
                    (
                        "layers",
                        Value::Arr(r.layers.iter().map(|l| Value::str(l.to_string())).collect()),
                    ),
                    ("synced_at", Value::str(rfc3339(r.synced_at))),
                ])
            })
            .collect();
        let last = match &st.last_sync {
            Some(s) => Value::obj([
                ("at", Value::str(rfc3339(s.at))),
                ("exit_code", Value::num(s.exit_code)),
                ("message", Value::str(s.message.clone())),
                (
                    "images",
                    Value::Arr(
                        s.images
                            .iter()
                            .map(|o| {
                                Value::obj([
                                    ("image", Value::str(show_image_ref(&o.image))),
                                    ("ok", Value::Bool(o.exit_code == 0)),
                                    ("exit_code", Value::num(o.exit_code)),
                                    (
                                        "not_found",
                                        Value::Bool(o.exit_code as i32 == exit::NOT_FOUND),
                                    ),
                                    ("message", Value::str(o.message.clone())),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ]),
            None => Value::Null,
        };
        let v = Value::obj([
            ("store", Value::str(store.root().to_string_lossy())),
            ("images", Value::Arr(images)),
            ("layers", Value::num(layers.len())),
            (
                "unused_layers",
                Value::num(layers.iter().filter(|l| !used.contains(l)).count()),
            ),
            ("objects", Value::num(variants)),
            ("loose_objects", Value::num(loose)),
            ("disk_bytes", Value::num(object_bytes + tree_bytes)),
            ("last_sync", last),
        ]);
        println!("{}", v.to_compact());
        return Ok(exit::OK);
    }
    println!("store {}", store.root().display());
    println!("images:");
    if records.is_empty() {
        println!("  (none)");
    }
    for r in &records {
        println!(
            "  {}  {}  {} layers  synced {}",
            show_image_ref(&r.image),
            r.manifest_digest,
            r.layers.len(),
            rfc3339(r.synced_at)
        );
    }
    println!(
        "layers: {} committed ({} unused)",
        layers.len(),
        layers.iter().filter(|l| !used.contains(l)).count()
    );
    println!("objects: {variants} variants ({loose} loose)");
    println!("disk used: {}", human(object_bytes + tree_bytes));
    match &st.last_sync {
        Some(s) if s.exit_code == 0 => {
            println!("last sync: ok at {}: {}", rfc3339(s.at), s.message)
        }
        Some(s) => println!(
            "last sync: failed (exit {}) at {}: {}",
            s.exit_code,
            rfc3339(s.at),
            s.message
        ),
        None => println!("last sync: never"),
    }
    if let Some(s) = &st.last_sync {
        for o in s.images.iter().filter(|o| o.exit_code != 0) {
            println!(
                "  {}: failed (exit {}): {}",
                show_image_ref(&o.image),
                o.exit_code,
                o.message
            );
        }
    }
    Ok(exit::OK)
}
