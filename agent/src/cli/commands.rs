//! The store commands: `checkout`, `layers`, `gc`, `verify` (without
//! `--repair`, which syncs: [`super::sync`]), `remove`, `apply-archive`.

use super::args::Args;
use super::sync::{cmd_repair, SYNC_FLAGS};
use super::{image_arg, usage};
use crate::apply::{Applier, ApplyOptions};
use crate::checkout;
use crate::error::{exit, Error, Result};
use crate::progress::human;
use crate::store::record::show_image_ref;
use crate::store::{Access, Store};
use std::path::Path;

pub(super) fn cmd_checkout(a: &Args) -> Result<i32> {
    a.only("checkout", &["--store", "--read-only"])?;
    let [image, dest] = a.positional.as_slice() else {
        return Err(usage("checkout needs IMAGE and DEST"));
    };
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    checkout::checkout(
        &store,
        &image_arg(image)?,
        Path::new(dest),
        a.has(&["--read-only"]),
    )?;
    Ok(exit::OK)
}

pub(super) fn cmd_layers(a: &Args) -> Result<i32> {
    a.only("layers", &["--store"])?;
    let [image] = a.positional.as_slice() else {
        return Err(usage("layers needs IMAGE"));
    };
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    println!("{}", checkout::lowerdir(&store, &image_arg(image)?)?);
    Ok(exit::OK)
}

pub(super) fn cmd_gc(a: &Args) -> Result<i32> {
    a.only("gc", &["--store"])?;
    let store = Store::open(&a.store()?, Access::Exclusive)?;
    gc_and_report(&store)
}

pub(super) fn cmd_verify(a: &Args) -> Result<i32> {
    if a.has(&["--repair"]) {
        let mut flags = SYNC_FLAGS.to_vec();
        flags.push("--repair");
        a.only("verify --repair", &flags)?;
        return cmd_repair(a);
    }
    a.only("verify", &["--store"])?;
    let store = Store::open(&a.store()?, Access::ReadOnly)?;
    verify_and_report(&store, "", exit::OK)
}

/// Check the store, print each problem and a summary line (ending in
/// `suffix`), and exit with [`exit::INTEGRITY`] if anything is wrong, else
/// `ok` (`verify`, and `verify --repair` after its repairing sync).
pub(super) fn verify_and_report(store: &Store, suffix: &str, ok: i32) -> Result<i32> {
    let s = store.verify(|p| eprintln!("problem: {p}"))?;
    println!(
        "checked {} object(s), {} layer(s), {} image(s): {} problem(s){suffix}",
        s.objects, s.layers, s.images, s.problems
    );
    Ok(if s.problems > 0 { exit::INTEGRITY } else { ok })
}

/// `remove IMAGE...`: forget the images, then gc what no other image uses.
pub(super) fn cmd_remove(a: &Args) -> Result<i32> {
    a.only("remove", &["--store"])?;
    if a.positional.is_empty() {
        return Err(usage("remove needs IMAGE..."));
    }
    let images = a
        .positional
        .iter()
        .map(|s| image_arg(s))
        .collect::<Result<Vec<_>>>()?;
    let store = Store::open(&a.store()?, Access::Exclusive)?;
    for i in &images {
        if store.remove_record(i)? {
            println!("removed {}", show_image_ref(i));
        } else {
            println!("{} is not in the store", show_image_ref(i));
        }
    }
    gc_and_report(&store)
}

pub(super) fn cmd_apply_archive(a: &Args) -> Result<i32> {
    a.only(
        "apply-archive",
        &["--store", "--no-devices", "--quiet", "-q"],
    )?;
    let [file] = a.positional.as_slice() else {
        return Err(usage("apply-archive needs FILE (or - for stdin)"));
    };
    let store = Store::open(&a.store()?, Access::Exclusive)?;
    let mut opts = ApplyOptions::new(Vec::new());
    opts.any_layers = true;
    opts.allow_devices = !a.has(&["--no-devices"]);
    opts.progress = !a.has(&["--quiet", "-q"]);
    let mut applier = Applier::new(&store, opts)?;
    if file == "-" {
        applier.apply_archive(std::io::stdin().lock())?;
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io(format!("opening {file}"), e))?;
        applier.apply_archive(std::io::BufReader::with_capacity(64 * 1024, f))?;
    }
    let pending = applier.pending_digests();
    if !pending.is_empty() {
        return Err(Error::integrity(format!(
            "{} referenced object(s) are not in the store (first: {}); layers left uncommitted",
            pending.len(),
            pending[0]
        )));
    }
    for (d, s) in applier.committed() {
        println!(
            "{d}: {} entries, {} new files, {} referenced",
            s.entries, s.new_files, s.referenced_files
        );
    }
    Ok(exit::OK)
}

/// Run `gc` and print what it freed (the `gc` and `remove` commands).
fn gc_and_report(store: &Store) -> Result<i32> {
    let s = store.gc()?;
    println!(
        "removed {} layer(s) and {} object(s), freed {} ({} bytes)",
        s.layers_removed,
        s.objects_removed,
        human(s.bytes_freed),
        s.bytes_freed
    );
    if s.layers_mounted > 0 {
        println!(
            "kept {} unused layer(s) a mounted read-only checkout uses (umount it, then gc)",
            s.layers_mounted
        );
    }
    Ok(exit::OK)
}
