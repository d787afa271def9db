//! Backend: one repository of the registry's store. Works offline on a
//! data directory, or beside a serving registry (redb serialises writers;
//! blobs are written temp → rename).
//!
//! Uses [`Storage::resolve_manifest`], [`Storage::blob_size`],
//! [`Storage::blobs`] (`path`), [`Storage::put_blob`],
//! [`Storage::put_manifest`] and the [`crate::store::storage::MetadataStore`]
//! methods `manifest`, `repositories`, `tagged`; new image manifests go
//! through [`crate::ingest::ingest_manifest`] first so the dedup index
//! learns the rebuilt layers.

use super::{layer_digests, Backend, Commit, EditError, Resolved, Scratch};
use crate::store::storage::Storage;
use anyhow::Context;
use layerlink_proto::limits::MAX_NAME_BYTES;
use layerlink_proto::Digest;
use std::path::PathBuf;

/// One repository of the registry store.
pub struct RegistryImage<'a> {
    storage: &'a Storage,
    repository: String,
}

/// Split `REPO:TAG` or `REPO@sha256:…` (a bare `REPO` means `latest`).
pub fn parse_image_ref(s: &str) -> Result<(String, String), EditError> {
    let (repo, reference) = if let Some((r, d)) = s.split_once('@') {
        (r, d)
    } else {
        let slash = s.rfind('/').map_or(0, |i| i + 1);
        match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, "latest"),
        }
    };
    check_repository(repo)?;
    if reference.is_empty() {
        return Err(EditError::Invalid(format!("{s:?}: empty tag")));
    }
    Ok((repo.to_owned(), reference.to_owned()))
}

/// OCI distribution repository name rules.
fn check_repository(repo: &str) -> Result<(), EditError> {
    let ok_component = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes()
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if repo.is_empty() || repo.len() > MAX_NAME_BYTES || !repo.split('/').all(ok_component) {
        return Err(EditError::Invalid(format!(
            "{repo:?} is not a repository name"
        )));
    }
    Ok(())
}

/// OCI distribution tag rules: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), EditError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(EditError::Invalid(format!("{tag:?} is not a valid tag")))
    }
}

impl<'a> RegistryImage<'a> {
    /// Edit images of `repository` in `storage`.
    pub fn new(storage: &'a Storage, repository: &str) -> Result<RegistryImage<'a>, EditError> {
        check_repository(repository)?;
        Ok(RegistryImage {
            storage,
            repository: repository.to_owned(),
        })
    }
}

impl Backend for RegistryImage<'_> {
    fn describe(&self) -> String {
        format!(
            "repository {} of {}",
            self.repository,
            self.storage.data_dir().display()
        )
    }

    fn resolve(&self, reference: &str) -> Result<Option<Resolved>, EditError> {
        let Some(m) = self.storage.resolve_manifest(&self.repository, reference)? else {
            return Ok(None);
        };
        let tag = (!reference.contains(':')).then(|| reference.to_owned());
        Ok(Some(Resolved {
            bytes: m.bytes,
            media_type: m.media_type,
            digest: m.digest,
            tag,
        }))
    }

    fn manifest(
        &self,
        digest: &Digest,
        _media_type: &str,
    ) -> Result<Option<(Vec<u8>, String)>, EditError> {
        Ok(self
            .storage
            .meta()
            .manifest(&self.repository, digest)?
            .map(|m| (m.bytes, m.media_type)))
    }

    fn blob_path(&self, digest: &Digest) -> Result<Option<PathBuf>, EditError> {
        Ok(self.storage.blobs().local_file(digest)?)
    }

    fn scratch(&self) -> Result<Scratch, EditError> {
        let tmp = self.storage.data_dir().join("tmp");
        // Scratch of edits that were killed (a live one is written to all along).
        Scratch::sweep(&tmp, "edit-", std::time::Duration::from_secs(24 * 3600));
        Ok(Scratch::create(&tmp, "edit-")?)
    }

    fn check_tag(&self, tag: &str) -> Result<(), EditError> {
        check_tag(tag)
    }

    fn blob_users(&self, blob: &Digest, skip_tags: &[&str]) -> Result<Vec<String>, EditError> {
        let mut users = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let repos = self.storage.meta().repositories(last.as_deref(), 100)?;
            if repos.is_empty() {
                break;
            }
            for repo in &repos {
                // The stored media type, not the one an index names.
                let fetch = |d: &Digest, _: &str| {
                    Ok::<_, EditError>(
                        self.storage
                            .meta()
                            .manifest(repo, d)?
                            .map(|m| (m.bytes, m.media_type)),
                    )
                };
                for (tag, digest) in self.storage.meta().tagged(repo)? {
                    if *repo == self.repository && skip_tags.contains(&tag.as_str()) {
                        continue;
                    }
                    if layer_digests(&digest, "", &fetch)?.contains(blob) {
                        users.push(format!("{repo}:{tag}"));
                    }
                }
            }
            last = repos.last().cloned();
        }
        Ok(users)
    }

    fn commit(&self, commit: Commit) -> Result<(), EditError> {
        let repo = self.repository.as_str();
        let tag_moved = || -> Result<Option<String>, EditError> {
            if commit.source_tag.as_deref() != Some(commit.tag.as_str()) {
                return Ok(None);
            }
            let now = self.storage.meta().tag(repo, &commit.tag)?;
            Ok((now != Some(commit.source_digest))
                .then(|| now.map_or("gone".into(), |d| d.to_string())))
        };
        let check_tag = || -> Result<(), EditError> {
            match tag_moved()? {
                Some(now) => Err(EditError::Conflict(format!(
                    "tag {repo}:{} changed while the edit ran (now {now}); nothing was tagged",
                    commit.tag
                ))),
                None => Ok(()),
            }
        };
        check_tag()?;
        for b in &commit.blobs {
            let f = std::fs::File::open(&b.path)
                .with_context(|| format!("opening {}", b.path.display()))?;
            self.storage.put_blob(repo, f, Some(&b.digest))?;
        }
        crate::ingest::ingest_manifest(self.storage, &commit.image.bytes, &commit.image.media_type)
            .map_err(|e| {
                let msg = format!("ingesting the edited manifest: {e}");
                if e.is_client_error() {
                    EditError::Invalid(msg)
                } else {
                    EditError::Other(anyhow::anyhow!(msg))
                }
            })?;
        // Ingesting a big layer takes a while: look again (the window left
        // is the one between this read and the tag write below).
        check_tag()?;
        let image_tag = if commit.index.is_none() {
            Some(commit.tag.as_str())
        } else {
            None
        };
        self.storage.put_manifest(
            repo,
            image_tag,
            &commit.image.media_type,
            commit.image.bytes.clone(),
            &commit.image.blobs,
        )?;
        if let Some(index) = &commit.index {
            // The other platforms' manifests are already in the repository.
            self.storage.put_manifest(
                repo,
                Some(&commit.tag),
                &index.media_type,
                index.bytes.clone(),
                &[],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        assert_eq!(
            parse_image_ref("edge/app:v1").unwrap(),
            ("edge/app".into(), "v1".into())
        );
        assert_eq!(
            parse_image_ref("edge/app").unwrap(),
            ("edge/app".into(), "latest".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_image_ref(&format!("app@{d}")).unwrap(),
            ("app".into(), d)
        );
        assert!(parse_image_ref("Bad/Name:x").is_err());
        assert!(check_tag("v1.0-rc_1").is_ok());
        assert!(check_tag("-x").is_err());
    }
}
