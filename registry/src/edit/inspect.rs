//! The read-only passes before anything is written: check the edit
//! against the image (with [`super::scan`]), decide parent directories and
//! hard-link spooling, collect warnings.

use super::layers::{corrupt, open_layer, verify_layer};
use super::plan::Plan;
use super::scan::{self, show_path, Dangling, ShadowCheck, View};
use super::tar::{Kind, NewEntry};
use super::tar_rewrite::{ChangeSet, Put};
use super::{Backend, EditError, Warning};
use crate::oci::{ImageConfig, ImageManifest};
use std::collections::HashSet;

/// What the read-only pass found out.
#[derive(Default)]
pub(super) struct Findings {
    /// Warnings so far.
    pub warnings: Vec<Warning>,
    /// What the rewrite of the edited layer does.
    pub changes: ChangeSet,
}

/// Pass 1 (and 2): check the edit against the image, decide parent
/// directories and hard-link spooling, collect warnings.
pub(super) fn inspect(
    backend: &dyn Backend,
    plan: &Plan,
    manifest: &ImageManifest,
    config: &ImageConfig,
    puts: Vec<Put>,
) -> Result<Findings, EditError> {
    let n = manifest.layers.len();
    let mut f = Findings::default();
    f.changes.removes = plan.removes.iter().cloned().collect();
    let put_paths: HashSet<Vec<u8>> = plan.puts.iter().map(|(p, _)| p.clone()).collect();

    let min_affected = plan
        .deleted
        .iter()
        .copied()
        .chain(plan.layer.filter(|_| !plan.removes.is_empty()))
        .min();
    let first = match (plan.layer, min_affected) {
        (Some(_), _) => Some(0),
        (None, Some(m)) => Some(m + 1),
        (None, None) => None,
    };
    let mut puts = Some(puts);
    let Some(first) = first else {
        f.changes.puts = puts.unwrap_or_default();
        return Ok(f);
    };

    // Pass 1.
    let mut tracked: Vec<Vec<u8>> = Vec::new();
    for (p, _) in &plan.puts {
        tracked.push(p.clone());
        tracked.extend(scan::ancestors(p).map(<[u8]>::to_vec));
    }
    tracked.extend(plan.removes.iter().cloned());
    let mut view = View::new(tracked);
    let mut shadow = ShadowCheck::new(
        plan.puts
            .iter()
            .map(|(p, _)| (p.clone(), true))
            .chain(plan.removes.iter().map(|p| (p.clone(), false)))
            .collect(),
    );
    let mut dangling = Dangling::default();
    let mut rm_found = vec![false; plan.removes.len()];
    let mut link_targets: Vec<Vec<u8>> = Vec::new();
    for i in first..n {
        let d = &manifest.layers[i];
        let in_edit = plan.layer == Some(i);
        let below_edit = plan.layer.is_some_and(|k| i < k);
        let above_edit = plan.layer.is_some_and(|k| i > k) && !plan.deleted.contains(&i);
        let collect = min_affected.is_some_and(|m| i > m) && !plan.deleted.contains(&i);
        view.begin(i);
        let got = scan::scan_layer(open_layer(backend, i, d)?, |e| {
            let Some(path) = &e.path else { return };
            if below_edit {
                view.entry(path, e.kind, &e.whiteout);
            }
            if in_edit {
                for (j, r) in plan.removes.iter().enumerate() {
                    if path == r || (path.starts_with(r) && path.get(r.len()) == Some(&b'/')) {
                        rm_found[j] = true;
                    }
                }
                if !f.changes.is_removed(path) {
                    view.entry(path, e.kind, &e.whiteout);
                    if let Some(t) = &e.link {
                        if !put_paths.contains(path)
                            && f.changes.is_removed(t)
                            && !put_paths.contains(t)
                        {
                            link_targets.push(t.clone());
                        }
                    }
                }
            }
            if above_edit {
                shadow.entry(i, path, e.kind, &e.whiteout);
            }
            if collect {
                dangling.collect(i, e);
            }
        })
        .map_err(corrupt(i, d))?;
        verify_layer(i, d, &config.diff_ids[i], got)?;
        view.end();
        if in_edit {
            check_edit(
                plan,
                &view,
                &rm_found,
                &mut f,
                puts.take().unwrap_or_default(),
                i,
            )?;
        }
    }
    f.changes.spool = link_targets.into_iter().collect();
    if let Some(puts) = puts {
        f.changes.puts = puts;
    }
    f.warnings.append(&mut shadow.warnings);

    // Pass 2: dangling whiteouts and hard links.
    if let Some(top) = dangling.top_layer() {
        let tracked = dangling.tracked();
        let mut old = View::new(tracked.iter().cloned());
        let mut new = View::new(tracked);
        for i in 0..=top {
            let d = &manifest.layers[i];
            old.begin(i);
            new.begin(i);
            let deleted = plan.deleted.contains(&i);
            let edited = plan.layer == Some(i);
            let got = scan::scan_layer(open_layer(backend, i, d)?, |e| {
                let Some(path) = &e.path else { return };
                old.entry(path, e.kind, &e.whiteout);
                if !(deleted || edited && f.changes.is_removed(path)) {
                    new.entry(path, e.kind, &e.whiteout);
                }
            })
            .map_err(corrupt(i, d))?;
            verify_layer(i, d, &config.diff_ids[i], got)?;
            if edited {
                for put in &f.changes.puts {
                    new.entry(
                        &put.entry.path,
                        Kind::File,
                        &layerlink_proto::archive::Whiteout::None,
                    );
                }
            }
            dangling.judge(i, &old, &new, &mut f.warnings);
            old.end();
            new.end();
        }
    }
    Ok(f)
}

/// After layer k went through the view: refuse impossible puts and
/// removals, warn about removed paths lower layers still provide, and
/// decide which parent directories puts must create.
fn check_edit(
    plan: &Plan,
    view: &View,
    rm_found: &[bool],
    f: &mut Findings,
    mut puts: Vec<Put>,
    k: usize,
) -> Result<(), EditError> {
    for (j, r) in plan.removes.iter().enumerate() {
        if !rm_found[j] {
            return Err(EditError::Invalid(match view.get(r) {
                Some((_, l)) if l != k => format!(
                    "--rm {}: not in layer {k}; it comes from layer {l} (use --layer {l})",
                    show_path(r)
                ),
                _ => format!("--rm {}: no such path in layer {k}", show_path(r)),
            }));
        }
        if let Some((_, l)) = view.get(r) {
            f.warnings.push(Warning::StillVisible {
                path: show_path(r),
                layer: l,
            });
        }
    }
    for put in &mut puts {
        let p = put.entry.path.clone();
        if let Some((Kind::Dir, l)) = view.get(&p) {
            return Err(EditError::Invalid(format!(
                "--put {}: that path is a directory (from layer {l}); remove it first or put the file inside it",
                show_path(&p)
            )));
        }
        for a in scan::ancestors(&p) {
            match view.get(a) {
                Some((Kind::Dir, _)) => {}
                Some((kind, l)) => {
                    return Err(EditError::Invalid(format!(
                        "--put {}: parent {} is {} (from layer {l}), not a directory",
                        show_path(&p),
                        show_path(a),
                        kind.name()
                    )))
                }
                None => {
                    put.parents.push(NewEntry::dir(a.to_vec(), put.entry.mtime));
                }
            }
        }
    }
    f.changes.puts = puts;
    Ok(())
}
