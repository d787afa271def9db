//! The edit itself ([`edit_image`]): resolve the image, check, build the
//! new layers, rewrite config and manifest (and index), commit.

use super::image::{self, Doc, Platform};
use super::inspect::inspect;
use super::layers::{build_insert, corrupt, open_layer, verify_layer};
use super::plan::{check_insert_sources, prepare_put, Plan};
use super::read_small_blob;
use super::request::EditRequest;
use super::stream::{LayerWriter, NewBlob};
use super::tar::TarReader;
use super::tar_rewrite;
use super::{Backend, Commit, EditError, EditOutcome, LayerReport, NewDoc, Warning};
use crate::compression::Compression;
use crate::oci::{self, ImageConfig};
use serde_json::{json, Value};
use std::collections::HashMap;

/// A finished layer of the new image.
enum Slot {
    Keep(usize),
    Edited(usize, NewBlob),
    Inserted(NewBlob),
}

/// Edit the image `reference` names in `backend`.
pub fn edit_image(
    backend: &dyn Backend,
    reference: &str,
    req: &EditRequest,
) -> Result<EditOutcome, EditError> {
    let plan = Plan::new(req)?;
    let platform = req.platform.as_deref().map(Platform::parse).transpose()?;

    // The image.
    let top = backend.resolve(reference)?.ok_or_else(|| {
        EditError::NotFound(format!("no image {reference:?} in {}", backend.describe()))
    })?;
    let tag = match (&req.tag, &top.tag) {
        (Some(t), _) | (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(EditError::Invalid(format!(
                "{reference} is a digest: give --tag for the edited image"
            )))
        }
    };
    backend.check_tag(&tag)?;
    let doc = image::parse_doc(&top.bytes, &top.media_type, reference)?;
    let mut warnings = Vec::new();
    let (manifest, index_pos) = match &doc {
        Doc::Image(m) => (m.clone(), None),
        Doc::Index(idx) => {
            let Some(platform) = &platform else {
                return Err(EditError::Invalid(format!(
                    "{reference} is an image index (platforms: {}); choose one with --platform os/arch[/variant]",
                    idx.platforms().join(", ")
                )));
            };
            let (pos, child) = image::pick_platform(idx, platform)?;
            let (bytes, mt) = backend
                .manifest(&child.digest, &child.media_type)?
                .ok_or_else(|| {
                    EditError::NotFound(format!(
                        "manifest {} ({platform}) is not in {}",
                        child.digest,
                        backend.describe()
                    ))
                })?;
            let Doc::Image(m) = image::parse_doc(&bytes, &mt, &format!("manifest for {platform}"))?
            else {
                return Err(EditError::Invalid(format!(
                    "the {platform} entry of {reference} is not an image manifest"
                )));
            };
            (m, Some((pos, child)))
        }
    };
    let config_bytes = read_small_blob(backend, &manifest.config.digest, "config")?;
    let config = ImageConfig::parse(&config_bytes)?;
    if let (Some(p), None) = (&platform, &index_pos) {
        let get = |k: &str| {
            config
                .json
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        let image_platform = format!("{}/{}", get("os"), get("architecture"));
        if p.os != get("os") || p.architecture != get("architecture") {
            warnings.push(Warning::PlatformMismatch {
                asked: p.to_string(),
                image: image_platform,
            });
        }
    }
    let n = manifest.layers.len();
    if config.diff_ids.len() != n {
        return Err(EditError::Corrupt(format!(
            "the config lists {} diff_ids for {n} manifest layers",
            config.diff_ids.len()
        )));
    }
    plan.check_indexes(n)?;
    let puts = plan
        .puts
        .iter()
        .map(|(p, op)| prepare_put(backend, p, op))
        .collect::<Result<Vec<_>, _>>()?;
    check_insert_sources(backend, &plan.inserts)?;

    // Read-only checks and warnings.
    let mut found = inspect(backend, &plan, &manifest, &config, puts)?;
    warnings.append(&mut found.warnings);
    if let Some(k) = plan.layer {
        let mut skip = vec![tag.as_str()];
        if let Some(t) = &top.tag {
            skip.push(t.as_str());
        }
        let users = backend.blob_users(&manifest.layers[k].digest, &skip)?;
        if !users.is_empty() {
            warnings.push(Warning::SharedBlob {
                layer: k,
                digest: manifest.layers[k].digest.to_string(),
                users,
            });
        }
    }

    // Build.
    let scratch = backend.scratch()?;
    let docker = manifest.is_docker();
    let mut edited: Option<NewBlob> = None;
    if let Some(k) = plan.layer {
        let d = &manifest.layers[k];
        let media_type = image::edited_layer_media_type(d, docker);
        let mut w = LayerWriter::create(
            scratch.file("layer"),
            Compression::of_media_type(&media_type),
        )?;
        let mut tr = TarReader::new(open_layer(backend, k, d)?);
        tar_rewrite::rewrite(&mut tr, &mut w, &found.changes, Some(&scratch), false)
            .map_err(corrupt(k, d))?;
        let got = tr.into_inner().finish()?;
        verify_layer(k, d, &config.diff_ids[k], got)?;
        edited = Some(w.finish()?);
    }
    let mut inserted: HashMap<usize, NewBlob> = HashMap::new();
    for (j, op) in plan.inserts.iter().enumerate() {
        inserted.insert(j, build_insert(backend, &scratch, op, &mut warnings)?);
    }
    let mut slots = Vec::new();
    for i in 0..=n {
        for (j, op) in plan.inserts.iter().enumerate() {
            if op.at == i {
                slots.push(Slot::Inserted(inserted.remove(&j).expect("built once")));
            }
        }
        if i < n && !plan.deleted.contains(&i) {
            if plan.layer == Some(i) {
                slots.push(Slot::Edited(i, edited.take().expect("built")));
            } else {
                slots.push(Slot::Keep(i));
            }
        }
    }

    // Config and manifest.
    let mut diff_ids = Vec::new();
    let mut layer_json = Vec::new();
    let mut layer_blobs = Vec::new();
    let mut reports = Vec::new();
    let mut new_blobs = Vec::new();
    for (index, slot) in slots.into_iter().enumerate() {
        let (change, original, digest, size, diff_id, desc) = match slot {
            Slot::Keep(i) => {
                let d = &manifest.layers[i];
                (
                    "kept",
                    Some(i),
                    d.digest,
                    d.size,
                    config.diff_ids[i],
                    d.json.clone(),
                )
            }
            Slot::Edited(i, b) => {
                let desc =
                    image::edited_layer_descriptor(&manifest.layers[i], &b.digest, b.size, docker);
                let r = ("edited", Some(i), b.digest, b.size, b.diff_id, desc);
                new_blobs.push(b);
                r
            }
            Slot::Inserted(b) => {
                let desc = json!({"mediaType": manifest.new_layer_media_type(), "digest": b.digest.to_string(), "size": b.size});
                let r = ("inserted", None, b.digest, b.size, b.diff_id, desc);
                new_blobs.push(b);
                r
            }
        };
        diff_ids.push(diff_id);
        layer_json.push(desc);
        layer_blobs.push((digest, size));
        reports.push(LayerReport {
            index,
            change,
            original,
            digest: digest.to_string(),
            diff_id: diff_id.to_string(),
        });
    }
    let history = image::rebuild_history(&config, &plan, n, &mut warnings);
    let config_blob = scratch.write_blob(
        "config",
        &oci::to_bytes(&config.rebuilt(&diff_ids, history)),
    )?;
    let config_desc = manifest
        .config
        .retarget(&config_blob.digest, config_blob.size);
    let mut refs = vec![(config_blob.digest, config_blob.size)];
    refs.extend(layer_blobs);
    new_blobs.push(config_blob);
    let image_doc = NewDoc::new(
        &manifest.rebuilt(config_desc, layer_json),
        &manifest.media_type,
        refs,
    );
    let index_doc = index_pos.map(|(pos, child)| {
        let mut v = match &doc {
            Doc::Index(idx) => idx.json.clone(),
            Doc::Image(m) => m.json.clone(),
        };
        if let Some(list) = v.get_mut("manifests").and_then(Value::as_array_mut) {
            list[pos] = child.retarget(&image_doc.digest, image_doc.bytes.len() as u64);
        }
        NewDoc::new(&v, &top.media_type, Vec::new())
    });

    let commit = Commit {
        blobs: new_blobs,
        image: image_doc,
        index: index_doc,
        tag: tag.clone(),
        source_tag: top.tag.clone(),
        source_digest: top.digest,
    };
    let outcome = EditOutcome {
        digest: commit.top().digest.to_string(),
        manifest_digest: commit.image.digest.to_string(),
        media_type: commit.top().media_type.clone(),
        tag,
        layers: reports,
        warnings,
        committed: !req.dry_run,
    };
    if !req.dry_run {
        backend.commit(commit)?;
    }
    drop(scratch);
    Ok(outcome)
}
