//! `apply-archive --store DIR --layer sha256:HEX ARCHIVE`: apply a gzip'd
//! dedup archive from a file into an agent store with the agent library's
//! own `Applier` (the code `layerlink-agent sync` runs), then print the
//! committed layers. Exit 0 only if every expected layer was committed.

use layerlink_agent::apply::{Applier, ApplyOptions};
use layerlink_agent::store::{Access, Store};
use layerlink_proto::Digest;
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: apply-archive --store DIR --layer sha256:HEX [--layer …] ARCHIVE");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut store = None;
    let mut layers = Vec::new();
    let mut archive = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--store" => store = args.next().map(PathBuf::from),
            "--layer" => match args.next().map(|s| Digest::parse(&s)) {
                Some(Ok(d)) => layers.push(d),
                _ => return usage(),
            },
            _ if archive.is_none() && !a.starts_with('-') => archive = Some(PathBuf::from(a)),
            _ => return usage(),
        }
    }
    let (Some(store), Some(archive)) = (store, archive) else {
        return usage();
    };
    if layers.is_empty() {
        return usage();
    }
    match run(&store, &archive, layers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apply-archive: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(store: &std::path::Path, archive: &std::path::Path, layers: Vec<Digest>) -> Result<(), String> {
    let store = Store::open(store, Access::Exclusive).map_err(|e| e.to_string())?;
    let want = layers.clone();
    let mut applier = Applier::new(&store, ApplyOptions::new(layers)).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    applier.apply_archive(std::io::BufReader::with_capacity(64 * 1024, file)).map_err(|e| e.to_string())?;
    let pending = applier.pending_digests();
    if !pending.is_empty() {
        return Err(format!("{} unresolved references", pending.len()));
    }
    let committed = applier.committed();
    for (d, stats) in &committed {
        println!("committed {d}: {stats:?}");
    }
    for d in &want {
        if !store.has_layer(d).map_err(|e| e.to_string())? {
            return Err(format!("layer {d} not committed"));
        }
    }
    Ok(())
}
