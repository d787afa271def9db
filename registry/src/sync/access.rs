//! What a device may receive: the authorization rule behind every sync
//! endpoint (`proto/SPEC.md` "Authorization").
//!
//! A device token grants read access to repositories by pattern
//! ([`Device::may_read`]). That alone is not enough, because the object
//! store and the layer index are shared by every repository: a digest named
//! in a request must also *belong* to something the device may read.
//!
//! - A **layer** is readable by a device when a repository it may read
//!   holds the layer's blob (exactly what `GET /v2/<repo>/blobs/<digest>`
//!   would serve: blobs pushed, mounted or referenced by a manifest of that
//!   repository). [`repository_layers`] lists them through the
//!   `oci_repo_blobs` links and the `index_blobs` map.
//! - An **object** is readable through repository `R` when a layer of `R`
//!   contains it ([`check_objects_in`]).
//! - **Held layers** a device reports only count (as bases for
//!   `layer-base`, as sources of held objects) when the device may read them
//!   ([`readable_holdings`]). Otherwise a device could name another
//!   tenant's layer as "held" and learn, from which entries the registry
//!   leaves out or lists as removed, what that layer contains. Loose objects
//!   a device reports need no such check: they only turn content of the
//!   requested (readable) image into references.
//!
//! Every refusal is [`ErrorCode::Forbidden`] (HTTP 401, the answer for an
//! unknown token), decided before anything is looked up about the named
//! thing itself, so the answer and its timing do not depend on whether the
//! object or layer exists elsewhere in the registry.

use crate::config::Device;
use crate::store::index::{self, open_read};
use crate::sync::plan::ImageStore;
use crate::sync::SyncError;
use layerlink_proto::msg::HeldSet;
use layerlink_proto::{Digest, ErrorCode};
use redb::ReadableDatabase as _;
use std::collections::HashSet;

/// The diff_ids of the layers whose blobs `repository` holds (ingested
/// layers only: a layer is ingested before any sync endpoint serves it).
pub fn repository_layers(
    store: &dyn ImageStore,
    repository: &str,
) -> Result<HashSet<Digest>, SyncError> {
    let blobs = store
        .repository_blobs(repository)
        .map_err(SyncError::internal)?;
    let txn = store.database().begin_read().map_err(SyncError::internal)?;
    let mut out = HashSet::new();
    let Some(t) = open_read(&txn, index::BLOBS).map_err(SyncError::internal)? else {
        return Ok(out);
    };
    for b in blobs {
        if let Some(d) = t.get(&b.0).map_err(SyncError::internal)? {
            out.insert(Digest(*d.value()));
        }
    }
    Ok(out)
}

/// `held` without the layers `device` may not read. Loose objects stay.
pub fn readable_holdings(
    store: &dyn ImageStore,
    device: &Device,
    held: &HeldSet,
) -> Result<HeldSet, SyncError> {
    let mut pending: HashSet<Digest> = held.layers.iter().copied().collect();
    if !pending.is_empty() {
        let repos = store.repositories().map_err(SyncError::internal)?;
        let readable: Vec<&String> = repos.iter().filter(|r| device.may_read(r)).collect();
        for repo in &readable {
            for l in repository_layers(store, repo)? {
                pending.remove(&l);
            }
            if pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            if let Some(shared) = store.shared_layers() {
                import_readable(store, shared, &readable, &mut pending)?;
            }
        }
    }
    if !pending.is_empty() {
        tracing::info!(
            device = device.id,
            ignored = pending.len(),
            "held layers the device may not read are ignored"
        );
    }
    Ok(HeldSet {
        layers: held
            .layers
            .iter()
            .filter(|l| !pending.contains(l))
            .copied()
            .collect(),
        objects: held.objects.clone(),
    })
}

/// Held layers this replica has not indexed but another one published
/// (replicas sharing an index: a device moved here from a replica that
/// served it another image): those in a repository the device may read
/// are imported, so their files count for dedup here too, and leave
/// `pending`.
fn import_readable(
    store: &dyn ImageStore,
    shared: &crate::store::storage::SharedLayers,
    readable: &[&String],
    pending: &mut HashSet<Digest>,
) -> Result<(), SyncError> {
    let mut blobs = Vec::new();
    for repo in readable {
        blobs.extend(store.repository_blobs(repo).map_err(SyncError::internal)?);
    }
    let published = shared
        .layers_of_blobs(&blobs)
        .map_err(SyncError::internal)?;
    let objects = store.objects();
    for (blob, diff_id) in published {
        if pending.contains(&diff_id)
            && crate::ingest::import_shared_layer(
                store.database(),
                &objects,
                shared,
                &blob,
                &diff_id,
            )
        {
            pending.remove(&diff_id);
        }
    }
    Ok(())
}

/// Every digest of `digests` must be an object of a layer of `repository`;
/// the first that is not is refused as [`ErrorCode::Forbidden`], with the
/// same answer whether or not it exists elsewhere.
pub fn check_objects_in(
    store: &dyn ImageStore,
    device: &Device,
    repository: &str,
    digests: &[Digest],
) -> Result<(), SyncError> {
    let layers = repository_layers(store, repository)?;
    let txn = store.database().begin_read().map_err(SyncError::internal)?;
    let table = open_read(&txn, index::LAYER_OBJECTS).map_err(SyncError::internal)?;
    for d in digests {
        let mut found = false;
        if let Some(t) = &table {
            for l in &layers {
                if t.get(&index::layer_object_key(l, d)[..])
                    .map_err(SyncError::internal)?
                    .is_some()
                {
                    found = true;
                    break;
                }
            }
        }
        if !found {
            return Err(SyncError::new(
                ErrorCode::Forbidden,
                format!(
                    "device {} may not read object {d} through repository {repository}",
                    device.id
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::testutil::TarBuilder;
    use crate::sync::plan::MemRegistry;

    fn device(patterns: &[&str]) -> Device {
        Device {
            id: "gw".into(),
            token: "t".into(),
            repositories: patterns.iter().map(|s| s.to_string()).collect(),
            ..Device::default()
        }
    }

    fn two_tenants() -> (MemRegistry, Vec<Digest>, Vec<Digest>, Digest, Digest) {
        let r = MemRegistry::new();
        let shared = b"shared by both".to_vec();
        let public = TarBuilder::new()
            .file("etc/public", b"public file")
            .file("etc/shared", &shared)
            .finish_ref();
        let secret = TarBuilder::new()
            .file("etc/secret", b"only the secret tenant has this")
            .file("etc/shared", &shared)
            .finish_ref();
        let (_, pub_ids) = r.push("bench/app1", "v1", &[public]);
        let (_, sec_ids) = r.push("secret/app2", "v1", &[secret]);
        (
            r,
            pub_ids,
            sec_ids,
            Digest::of(b"only the secret tenant has this"),
            Digest::of(&shared),
        )
    }

    #[test]
    fn objects_of_another_repository_are_refused_like_unknown_ones() {
        let (r, _, _, secret_obj, shared_obj) = two_tenants();
        let dev = device(&["bench/*"]);
        let public_obj = Digest::of(b"public file");
        check_objects_in(&r, &dev, "bench/app1", &[public_obj, shared_obj]).unwrap();
        let e = check_objects_in(&r, &dev, "bench/app1", &[secret_obj]).unwrap_err();
        let unknown =
            check_objects_in(&r, &dev, "bench/app1", &[Digest::of(b"nowhere")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(unknown.code, ErrorCode::Forbidden);
        // The same words apart from the digest: no oracle.
        assert_eq!(
            e.message.replace(&secret_obj.to_string(), "D"),
            unknown
                .message
                .replace(&Digest::of(b"nowhere").to_string(), "D")
        );
        // Readable through its own repository.
        check_objects_in(&r, &dev, "secret/app2", &[secret_obj]).unwrap();
    }

    #[test]
    fn held_layers_the_device_may_not_read_are_ignored() {
        let (r, pub_ids, sec_ids, _, _) = two_tenants();
        let held = HeldSet {
            layers: vec![pub_ids[0], sec_ids[0], Digest::of(b"unknown layer")],
            objects: vec![Digest::of(b"loose")],
        };
        let bench = readable_holdings(&r, &device(&["bench/*"]), &held).unwrap();
        assert_eq!(bench.layers, vec![pub_ids[0]]);
        assert_eq!(bench.objects, held.objects);
        let all = readable_holdings(&r, &device(&["*"]), &held).unwrap();
        let mut want = vec![pub_ids[0], sec_ids[0]];
        want.sort();
        let mut got = all.layers.clone();
        got.sort();
        assert_eq!(got, want);
        let none = readable_holdings(&r, &device(&[]), &held).unwrap();
        assert!(none.layers.is_empty());
    }
}
