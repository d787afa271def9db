//! [`MetadataStore`] on the embedded redb database.
//!
//! | table | key | value |
//! |---|---|---|
//! | `oci_manifests` | (repository, digest) | (media type, exact bytes) |
//! | `oci_tags` | (repository, tag) | manifest digest |
//! | `oci_repo_blobs` | (repository, blob digest) | blob size |
//! | `oci_repositories` | repository | () |
//! | `oci_uploads` | session id | (repository, start time) |
//! | `oci_manifest_times` | (repository, digest) | last push, Unix seconds (GC grace) |
//! | `oci_referrers` | (repository, subject, referrer) | the referrer's descriptor |

use super::meta::{MetaCounts, MetadataStore, UploadSession};
use super::StoredManifest;
use anyhow::Context;
use layerlink_proto::Digest;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashSet;
use std::sync::Arc;

type RepoDigest<'a> = (&'a str, &'a [u8; 32]);

const MANIFESTS: TableDefinition<RepoDigest, (&str, &[u8])> = TableDefinition::new("oci_manifests");
const TAGS: TableDefinition<(&str, &str), &[u8; 32]> = TableDefinition::new("oci_tags");
const REPO_BLOBS: TableDefinition<RepoDigest, u64> = TableDefinition::new("oci_repo_blobs");
const REPOSITORIES: TableDefinition<&str, ()> = TableDefinition::new("oci_repositories");
const UPLOADS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("oci_uploads");
const MANIFEST_TIMES: TableDefinition<RepoDigest, u64> = TableDefinition::new("oci_manifest_times");
/// (repository, subject, referrer).
type RepoSubjectReferrer<'a> = (&'a str, &'a [u8; 32], &'a [u8; 32]);
/// (repository, subject, referrer) → the referrer's descriptor (JSON).
const REFERRERS: TableDefinition<RepoSubjectReferrer, &[u8]> =
    TableDefinition::new("oci_referrers");

/// Metadata in redb tables prefixed `oci_`.
pub struct RedbMetadata {
    db: Arc<Database>,
}

impl RedbMetadata {
    /// Use `db`, creating the tables if needed.
    pub fn new(db: Arc<Database>) -> anyhow::Result<RedbMetadata> {
        let tx = db.begin_write()?;
        tx.open_table(MANIFESTS)?;
        tx.open_table(TAGS)?;
        tx.open_table(REPO_BLOBS)?;
        tx.open_table(REPOSITORIES)?;
        tx.open_table(UPLOADS)?;
        tx.open_table(REFERRERS)?;
        tx.open_table(MANIFEST_TIMES)?;
        tx.commit().context("creating the oci_* tables")?;
        Ok(RedbMetadata { db })
    }
}

impl MetadataStore for RedbMetadata {
    fn manifest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> anyhow::Result<Option<StoredManifest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MANIFESTS)?;
        Ok(t.get((repository, &digest.0))?.map(|v| {
            let (media_type, bytes) = v.value();
            StoredManifest {
                digest: *digest,
                media_type: media_type.to_owned(),
                bytes: bytes.to_vec(),
            }
        }))
    }

    fn tag(&self, repository: &str, tag: &str) -> anyhow::Result<Option<Digest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TAGS)?;
        Ok(t.get((repository, tag))?.map(|v| Digest(*v.value())))
    }

    fn commit_manifest(
        &self,
        repository: &str,
        manifest: &StoredManifest,
        tag: Option<&str>,
        blobs: &[(Digest, u64)],
    ) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut m = tx.open_table(MANIFESTS)?;
            m.insert(
                (repository, &manifest.digest.0),
                (manifest.media_type.as_str(), manifest.bytes.as_slice()),
            )?;
            tx.open_table(MANIFEST_TIMES)?
                .insert((repository, &manifest.digest.0), crate::clock::now_secs())?;
            let mut b = tx.open_table(REPO_BLOBS)?;
            for (d, size) in blobs {
                b.insert((repository, &d.0), size)?;
            }
            if let Some(tag) = tag {
                tx.open_table(TAGS)?
                    .insert((repository, tag), &manifest.digest.0)?;
            }
            tx.open_table(REPOSITORIES)?.insert(repository, ())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn manifests_of(&self, repository: &str) -> anyhow::Result<Vec<(Digest, u64)>> {
        let tx = self.db.begin_read()?;
        let m = tx.open_table(MANIFESTS)?;
        let times = tx.open_table(MANIFEST_TIMES)?;
        let mut out = Vec::new();
        for entry in m.range((repository, &[0u8; 32])..=(repository, &[0xffu8; 32]))? {
            let (k, _) = entry?;
            let (_, d) = k.value();
            let at = times.get((repository, d))?.map(|v| v.value()).unwrap_or(0);
            out.push((Digest(*d), at));
        }
        Ok(out)
    }

    fn delete_manifest(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool> {
        let tx = self.db.begin_write()?;
        let found;
        {
            let mut m = tx.open_table(MANIFESTS)?;
            found = m.remove((repository, &digest.0))?.is_some();
            tx.open_table(MANIFEST_TIMES)?
                .remove((repository, &digest.0))?;
            let mut t = tx.open_table(TAGS)?;
            let mut doomed = Vec::new();
            for entry in t.range((repository, "")..)? {
                let (k, v) = entry?;
                let (repo, tag) = k.value();
                if repo != repository {
                    break;
                }
                if v.value() == &digest.0 {
                    doomed.push(tag.to_owned());
                }
            }
            for tag in doomed {
                t.remove((repository, tag.as_str()))?;
            }
            let mut r = tx.open_table(REFERRERS)?;
            let mut doomed = Vec::new();
            for entry in r.range(
                (repository, &[0u8; 32], &[0u8; 32])..=(repository, &[0xffu8; 32], &[0xffu8; 32]),
            )? {
                let (k, _) = entry?;
                let (_, subject, referrer) = k.value();
                if referrer == &digest.0 {
                    doomed.push(*subject);
                }
            }
            for subject in doomed {
                r.remove((repository, &subject, &digest.0))?;
            }
        }
        tx.commit()?;
        Ok(found)
    }

    fn delete_tag(&self, repository: &str, tag: &str) -> anyhow::Result<bool> {
        let tx = self.db.begin_write()?;
        let found = tx.open_table(TAGS)?.remove((repository, tag))?.is_some();
        tx.commit()?;
        Ok(found)
    }

    fn tags(&self, repository: &str, last: Option<&str>, n: usize) -> anyhow::Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TAGS)?;
        let mut out = Vec::new();
        for entry in t.range((repository, last.unwrap_or(""))..)? {
            if out.len() >= n {
                break;
            }
            let (k, _) = entry?;
            let (repo, tag) = k.value();
            if repo != repository {
                break;
            }
            if Some(tag) != last {
                out.push(tag.to_owned());
            }
        }
        Ok(out)
    }

    fn tagged(&self, repository: &str) -> anyhow::Result<Vec<(String, Digest)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TAGS)?;
        let mut out = Vec::new();
        for entry in t.range((repository, "")..)? {
            let (k, v) = entry?;
            let (repo, tag) = k.value();
            if repo != repository {
                break;
            }
            out.push((tag.to_owned(), Digest(*v.value())));
        }
        Ok(out)
    }

    fn repository_exists(&self, repository: &str) -> anyhow::Result<bool> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(REPOSITORIES)?.get(repository)?.is_some())
    }

    fn repositories(&self, last: Option<&str>, n: usize) -> anyhow::Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REPOSITORIES)?;
        let mut out = Vec::new();
        for entry in t.range(last.unwrap_or("")..)? {
            if out.len() >= n {
                break;
            }
            let (k, _) = entry?;
            if Some(k.value()) != last {
                out.push(k.value().to_owned());
            }
        }
        Ok(out)
    }

    fn link_blob(&self, repository: &str, digest: &Digest, size: u64) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(REPO_BLOBS)?
            .insert((repository, &digest.0), size)?;
        tx.open_table(REPOSITORIES)?.insert(repository, ())?;
        tx.commit()?;
        Ok(())
    }

    fn blob_linked(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .open_table(REPO_BLOBS)?
            .get((repository, &digest.0))?
            .is_some())
    }

    fn repository_blobs(&self, repository: &str) -> anyhow::Result<Vec<Digest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REPO_BLOBS)?;
        let mut out = Vec::new();
        for entry in t.range((repository, &[0u8; 32])..=(repository, &[0xffu8; 32]))? {
            let (k, _) = entry?;
            out.push(Digest(*k.value().1));
        }
        Ok(out)
    }

    fn add_referrer(
        &self,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &[u8],
    ) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(REFERRERS)?
            .insert((repository, &subject.0, &referrer.0), descriptor)?;
        tx.commit()?;
        Ok(())
    }

    fn referrers(&self, repository: &str, subject: &Digest) -> anyhow::Result<Vec<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REFERRERS)?;
        let mut out = Vec::new();
        for entry in
            t.range((repository, &subject.0, &[0u8; 32])..=(repository, &subject.0, &[0xffu8; 32]))?
        {
            let (_, v) = entry?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    fn unlink_blob(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool> {
        let tx = self.db.begin_write()?;
        let found = tx
            .open_table(REPO_BLOBS)?
            .remove((repository, &digest.0))?
            .is_some();
        tx.commit()?;
        Ok(found)
    }

    fn create_upload(&self, session: &UploadSession) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(UPLOADS)?.insert(
            session.id.as_str(),
            (session.repository.as_str(), session.started),
        )?;
        tx.commit()?;
        Ok(())
    }

    fn upload(&self, id: &str) -> anyhow::Result<Option<UploadSession>> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(UPLOADS)?.get(id)?.map(|v| {
            let (repository, started) = v.value();
            UploadSession {
                id: id.to_owned(),
                repository: repository.to_owned(),
                started,
            }
        }))
    }

    fn delete_upload(&self, id: &str) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(UPLOADS)?.remove(id)?;
        tx.commit()?;
        Ok(())
    }

    fn uploads(&self) -> anyhow::Result<Vec<UploadSession>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(UPLOADS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            let (repository, started) = v.value();
            out.push(UploadSession {
                id: k.value().to_owned(),
                repository: repository.to_owned(),
                started,
            });
        }
        Ok(out)
    }

    fn counts(&self) -> anyhow::Result<MetaCounts> {
        let tx = self.db.begin_read()?;
        let tags = tx.open_table(TAGS)?;
        let mut tagged = HashSet::new();
        for entry in tags.iter()? {
            let (k, v) = entry?;
            tagged.insert((k.value().0.to_owned(), *v.value()));
        }
        Ok(MetaCounts {
            repositories: tx.open_table(REPOSITORIES)?.len()?,
            manifests: tx.open_table(MANIFESTS)?.len()?,
            tags: tags.len()?,
            tagged_images: tagged.len() as u64,
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        self.db.begin_read()?;
        Ok(())
    }
}
