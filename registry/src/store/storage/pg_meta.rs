//! [`MetadataStore`] in PostgreSQL (`[storage] metadata = "postgres://…"`):
//! several registry processes share one database.
//!
//! | table | primary key | other columns |
//! |---|---|---|
//! | `oci_repositories` | name | |
//! | `oci_manifests` | (repository, digest) | media_type, bytes, pushed (Unix s, GC grace) |
//! | `oci_tags` | (repository, tag) | digest |
//! | `oci_repo_blobs` | (repository, digest) | size |
//! | `oci_referrers` | (repository, subject, referrer) | descriptor (JSON) |
//! | `oci_uploads` | id | repository, started |
//! | `layerlink_schema` | component | version (see [`MIGRATIONS`]) |
//!
//! Names are `text COLLATE "C"` and digests `bytea`, so every listing
//! comes back in the same byte order as the redb implementation's.
//!
//! The connection, its runtime and the retried write transaction are
//! [`super::pg::Pg`]'s, shared with [`super::PgDevices`].
//!
//! **Concurrency.** Every write is one transaction (READ COMMITTED) made
//! of `INSERT … ON CONFLICT` upserts, so two replicas committing the same
//! manifest, tag or blob link both succeed and leave one row; the last
//! commit's tag wins. Rows are touched in one order (repository, manifest,
//! blob links sorted by digest, tag) so two transactions do not deadlock on
//! each other; a deadlock or serialization failure reported anyway is
//! retried.
//!
//! **Schema.** Component `oci` of [`super::pg::Pg::migrate`], migrated
//! when the store opens.

use super::meta::{MetaCounts, MetadataStore, UploadSession};
use super::pg::{digest_of, limit, to_i64, to_u64, Pg};
use super::StoredManifest;
use anyhow::Context;
use layerlink_proto::Digest;
use std::sync::Arc;

/// Schema migrations of the `oci` component, in order: version `i + 1` is
/// `MIGRATIONS[i]`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the module doc.
    r#"
    CREATE TABLE oci_repositories (
        name text COLLATE "C" PRIMARY KEY
    );
    CREATE TABLE oci_manifests (
        repository text COLLATE "C" NOT NULL,
        digest bytea NOT NULL,
        media_type text NOT NULL,
        bytes bytea NOT NULL,
        pushed bigint NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    CREATE TABLE oci_tags (
        repository text COLLATE "C" NOT NULL,
        tag text COLLATE "C" NOT NULL,
        digest bytea NOT NULL,
        PRIMARY KEY (repository, tag)
    );
    CREATE INDEX oci_tags_by_digest ON oci_tags (repository, digest);
    CREATE TABLE oci_repo_blobs (
        repository text COLLATE "C" NOT NULL,
        digest bytea NOT NULL,
        size bigint NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    CREATE TABLE oci_referrers (
        repository text COLLATE "C" NOT NULL,
        subject bytea NOT NULL,
        referrer bytea NOT NULL,
        descriptor bytea NOT NULL,
        PRIMARY KEY (repository, subject, referrer)
    );
    CREATE INDEX oci_referrers_by_referrer ON oci_referrers (repository, referrer);
    CREATE TABLE oci_uploads (
        id text COLLATE "C" PRIMARY KEY,
        repository text NOT NULL,
        started bigint NOT NULL
    );
    "#,
];

/// Metadata in a PostgreSQL database.
pub struct PgMetadata {
    pg: Arc<Pg>,
}

impl PgMetadata {
    /// Connect to `url` (`postgres://user:password@host:port/db`, or
    /// key=value form; `?host=/run/postgresql` for a unix socket), create or
    /// migrate the schema. Fails if the database cannot be reached.
    pub fn connect(url: &str) -> anyhow::Result<PgMetadata> {
        Self::open(Pg::connect(url)?)
    }

    /// The metadata in the database `pg` is connected to (schema created
    /// or migrated now).
    pub fn open(pg: Arc<Pg>) -> anyhow::Result<PgMetadata> {
        pg.migrate("oci", MIGRATIONS)?;
        Ok(PgMetadata { pg })
    }
}

impl MetadataStore for PgMetadata {
    fn manifest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> anyhow::Result<Option<StoredManifest>> {
        let d = *digest;
        self.pg.read(
            "SELECT media_type, bytes FROM oci_manifests WHERE repository = $1 AND digest = $2",
            (repository.to_owned(), digest.0.to_vec()),
            move |rows| {
                Ok(rows.into_iter().next().map(|r| StoredManifest {
                    digest: d,
                    media_type: r.get(0),
                    bytes: r.get(1),
                }))
            },
        )
    }

    fn tag(&self, repository: &str, tag: &str) -> anyhow::Result<Option<Digest>> {
        self.pg.read(
            "SELECT digest FROM oci_tags WHERE repository = $1 AND tag = $2",
            (repository.to_owned(), tag.to_owned()),
            |rows| {
                rows.into_iter()
                    .next()
                    .map(|r| digest_of(r.get(0)))
                    .transpose()
            },
        )
    }

    fn commit_manifest(
        &self,
        repository: &str,
        manifest: &StoredManifest,
        tag: Option<&str>,
        blobs: &[(Digest, u64)],
    ) -> anyhow::Result<()> {
        let repository = repository.to_owned();
        let digest = manifest.digest.0.to_vec();
        let media_type = manifest.media_type.clone();
        let bytes = manifest.bytes.clone();
        let tag = tag.map(str::to_owned);
        // Sorted and deduplicated: one lock order for every transaction,
        // and ON CONFLICT DO UPDATE may not touch a row twice.
        let mut links: Vec<(Digest, u64)> = blobs.to_vec();
        links.sort_by_key(|(d, _)| *d);
        links.dedup_by_key(|(d, _)| *d);
        let link_digests: Vec<Vec<u8>> = links.iter().map(|(d, _)| d.0.to_vec()).collect();
        let link_sizes = links
            .iter()
            .map(|(_, s)| to_i64(*s))
            .collect::<anyhow::Result<Vec<i64>>>()?;
        let now = to_i64(crate::clock::now_secs())?;
        let data = (
            repository,
            digest,
            media_type,
            bytes,
            tag,
            link_digests,
            link_sizes,
            now,
        );
        self.pg.write(data, |tx, data| {
            let (repository, digest, media_type, bytes, tag, link_digests, link_sizes, now) = data;
            Box::pin(async move {
                let s = tx
                    .prepare_cached(
                        "INSERT INTO oci_repositories (name) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .await?;
                tx.execute(&s, &[repository]).await?;
                let s = tx
                    .prepare_cached(
                        "INSERT INTO oci_manifests (repository, digest, media_type, bytes, pushed)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (repository, digest) DO UPDATE SET
                           media_type = EXCLUDED.media_type, bytes = EXCLUDED.bytes,
                           pushed = EXCLUDED.pushed",
                    )
                    .await?;
                tx.execute(&s, &[repository, digest, media_type, bytes, now])
                    .await?;
                if !link_digests.is_empty() {
                    let s = tx
                        .prepare_cached(
                            "INSERT INTO oci_repo_blobs (repository, digest, size)
                             SELECT $1, d, s FROM UNNEST($2::bytea[], $3::int8[]) AS t (d, s)
                             ON CONFLICT (repository, digest) DO UPDATE SET size = EXCLUDED.size",
                        )
                        .await?;
                    tx.execute(&s, &[repository, link_digests, link_sizes])
                        .await?;
                }
                if let Some(tag) = tag {
                    let s = tx
                        .prepare_cached(
                            "INSERT INTO oci_tags (repository, tag, digest) VALUES ($1, $2, $3)
                             ON CONFLICT (repository, tag) DO UPDATE SET digest = EXCLUDED.digest",
                        )
                        .await?;
                    tx.execute(&s, &[repository, tag, digest]).await?;
                }
                Ok(())
            })
        })
    }

    fn manifests_of(&self, repository: &str) -> anyhow::Result<Vec<(Digest, u64)>> {
        self.pg.read(
            "SELECT digest, pushed FROM oci_manifests WHERE repository = $1 ORDER BY digest",
            (repository.to_owned(),),
            |rows| {
                rows.into_iter()
                    .map(|r| Ok((digest_of(r.get(0))?, to_u64(r.get(1)))))
                    .collect()
            },
        )
    }

    fn delete_manifest(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool> {
        let repository = repository.to_owned();
        let digest = digest.0.to_vec();
        self.pg
            .write((repository, digest), |tx, (repository, digest)| {
                Box::pin(async move {
                    let found = tx
                        .execute(
                            "DELETE FROM oci_manifests WHERE repository = $1 AND digest = $2",
                            &[repository, digest],
                        )
                        .await?
                        > 0;
                    tx.execute(
                        "DELETE FROM oci_tags WHERE repository = $1 AND digest = $2",
                        &[repository, digest],
                    )
                    .await?;
                    tx.execute(
                        "DELETE FROM oci_referrers WHERE repository = $1 AND referrer = $2",
                        &[repository, digest],
                    )
                    .await?;
                    Ok(found)
                })
            })
    }

    fn delete_tag(&self, repository: &str, tag: &str) -> anyhow::Result<bool> {
        let (repository, tag) = (repository.to_owned(), tag.to_owned());
        self.pg.write((repository, tag), |tx, (repository, tag)| {
            Box::pin(async move {
                Ok(tx
                    .execute(
                        "DELETE FROM oci_tags WHERE repository = $1 AND tag = $2",
                        &[repository, tag],
                    )
                    .await?
                    > 0)
            })
        })
    }

    fn tags(&self, repository: &str, last: Option<&str>, n: usize) -> anyhow::Result<Vec<String>> {
        self.pg.read(
            "SELECT tag FROM oci_tags WHERE repository = $1 AND ($2::text IS NULL OR tag > $2)
             ORDER BY tag LIMIT $3",
            (repository.to_owned(), last.map(str::to_owned), limit(n)),
            |rows| Ok(rows.into_iter().map(|r| r.get(0)).collect()),
        )
    }

    fn tagged(&self, repository: &str) -> anyhow::Result<Vec<(String, Digest)>> {
        self.pg.read(
            "SELECT tag, digest FROM oci_tags WHERE repository = $1 ORDER BY tag",
            (repository.to_owned(),),
            |rows| {
                rows.into_iter()
                    .map(|r| Ok((r.get(0), digest_of(r.get(1))?)))
                    .collect()
            },
        )
    }

    fn repository_exists(&self, repository: &str) -> anyhow::Result<bool> {
        self.pg.read(
            "SELECT 1 FROM oci_repositories WHERE name = $1",
            (repository.to_owned(),),
            |rows| Ok(!rows.is_empty()),
        )
    }

    fn repositories(&self, last: Option<&str>, n: usize) -> anyhow::Result<Vec<String>> {
        self.pg.read(
            "SELECT name FROM oci_repositories WHERE ($1::text IS NULL OR name > $1)
             ORDER BY name LIMIT $2",
            (last.map(str::to_owned), limit(n)),
            |rows| Ok(rows.into_iter().map(|r| r.get(0)).collect()),
        )
    }

    fn link_blob(&self, repository: &str, digest: &Digest, size: u64) -> anyhow::Result<()> {
        let repository = repository.to_owned();
        let digest = digest.0.to_vec();
        let size = to_i64(size)?;
        self.pg.write(
            (repository, digest, size),
            |tx, (repository, digest, size)| {
                Box::pin(async move {
                    let s = tx
                    .prepare_cached(
                        "INSERT INTO oci_repositories (name) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .await?;
                    tx.execute(&s, &[repository]).await?;
                    let s = tx
                    .prepare_cached(
                        "INSERT INTO oci_repo_blobs (repository, digest, size) VALUES ($1, $2, $3)
                         ON CONFLICT (repository, digest) DO UPDATE SET size = EXCLUDED.size",
                    )
                    .await?;
                    tx.execute(&s, &[repository, digest, size]).await?;
                    Ok(())
                })
            },
        )
    }

    fn blob_linked(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool> {
        self.pg.read(
            "SELECT 1 FROM oci_repo_blobs WHERE repository = $1 AND digest = $2",
            (repository.to_owned(), digest.0.to_vec()),
            |rows| Ok(!rows.is_empty()),
        )
    }

    fn repository_blobs(&self, repository: &str) -> anyhow::Result<Vec<Digest>> {
        self.pg.read(
            "SELECT digest FROM oci_repo_blobs WHERE repository = $1 ORDER BY digest",
            (repository.to_owned(),),
            |rows| rows.into_iter().map(|r| digest_of(r.get(0))).collect(),
        )
    }

    fn unlink_blob(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool> {
        let repository = repository.to_owned();
        let digest = digest.0.to_vec();
        self.pg
            .write((repository, digest), |tx, (repository, digest)| {
                Box::pin(async move {
                    Ok(tx
                        .execute(
                            "DELETE FROM oci_repo_blobs WHERE repository = $1 AND digest = $2",
                            &[repository, digest],
                        )
                        .await?
                        > 0)
                })
            })
    }

    fn add_referrer(
        &self,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
        descriptor: &[u8],
    ) -> anyhow::Result<()> {
        let repository = repository.to_owned();
        let (subject, referrer) = (subject.0.to_vec(), referrer.0.to_vec());
        let descriptor = descriptor.to_vec();
        self.pg.write(
            (repository, subject, referrer, descriptor),
            |tx, (repository, subject, referrer, descriptor)| {
                Box::pin(async move {
                    tx.execute(
                        "INSERT INTO oci_referrers (repository, subject, referrer, descriptor)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (repository, subject, referrer)
                     DO UPDATE SET descriptor = EXCLUDED.descriptor",
                        &[repository, subject, referrer, descriptor],
                    )
                    .await?;
                    Ok(())
                })
            },
        )
    }

    fn referrers(&self, repository: &str, subject: &Digest) -> anyhow::Result<Vec<Vec<u8>>> {
        self.pg.read(
            "SELECT descriptor FROM oci_referrers WHERE repository = $1 AND subject = $2
             ORDER BY referrer",
            (repository.to_owned(), subject.0.to_vec()),
            |rows| Ok(rows.into_iter().map(|r| r.get(0)).collect()),
        )
    }

    fn create_upload(&self, session: &UploadSession) -> anyhow::Result<()> {
        let id = session.id.clone();
        let repository = session.repository.clone();
        let started = to_i64(session.started)?;
        self.pg.write(
            (id, repository, started),
            |tx, (id, repository, started)| {
                Box::pin(async move {
                    tx.execute(
                        "INSERT INTO oci_uploads (id, repository, started) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO UPDATE SET
                       repository = EXCLUDED.repository, started = EXCLUDED.started",
                        &[id, repository, started],
                    )
                    .await?;
                    Ok(())
                })
            },
        )
    }

    fn upload(&self, id: &str) -> anyhow::Result<Option<UploadSession>> {
        let owned = id.to_owned();
        self.pg.read(
            "SELECT repository, started FROM oci_uploads WHERE id = $1",
            (id.to_owned(),),
            move |rows| {
                Ok(rows.into_iter().next().map(|r| UploadSession {
                    id: owned,
                    repository: r.get(0),
                    started: to_u64(r.get(1)),
                }))
            },
        )
    }

    fn delete_upload(&self, id: &str) -> anyhow::Result<()> {
        let id = id.to_owned();
        self.pg.write(id, |tx, id| {
            Box::pin(async move {
                tx.execute("DELETE FROM oci_uploads WHERE id = $1", &[id])
                    .await?;
                Ok(())
            })
        })
    }

    fn uploads(&self) -> anyhow::Result<Vec<UploadSession>> {
        self.pg.read(
            "SELECT id, repository, started FROM oci_uploads ORDER BY id",
            (),
            |rows| {
                Ok(rows
                    .into_iter()
                    .map(|r| UploadSession {
                        id: r.get(0),
                        repository: r.get(1),
                        started: to_u64(r.get(2)),
                    })
                    .collect())
            },
        )
    }

    fn counts(&self) -> anyhow::Result<MetaCounts> {
        self.pg.read(
            "SELECT (SELECT count(*) FROM oci_repositories),
                    (SELECT count(*) FROM oci_manifests),
                    (SELECT count(*) FROM oci_tags),
                    (SELECT count(*) FROM (SELECT DISTINCT repository, digest FROM oci_tags) t)",
            (),
            |rows| {
                let r = rows.first().context("no row from the counts query")?;
                Ok(MetaCounts {
                    repositories: to_u64(r.get(0)),
                    manifests: to_u64(r.get(1)),
                    tags: to_u64(r.get(2)),
                    tagged_images: to_u64(r.get(3)),
                })
            },
        )
    }

    fn check(&self) -> anyhow::Result<()> {
        self.pg.read("SELECT 1", (), |_| Ok(()))
    }
}
