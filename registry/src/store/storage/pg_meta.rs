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
//! **Driver and the sync/async bridge.** The trait is blocking (called
//! from `spawn_blocking`, from CLI commands without a runtime, and from
//! tests inside `#[tokio::test]`). The sync `postgres` crate runs its own
//! runtime with `block_on` per call, which panics on a thread that is
//! inside a tokio runtime; `Handle::block_on` panics the same way on an
//! async worker thread. So the store owns a small tokio runtime (2
//! threads) running `tokio-postgres` connections from a `deadpool-postgres`
//! pool (a broken connection is dropped and a new one opened on the next
//! call: a database restart costs the calls in flight, not the process),
//! and each method spawns its query there and waits on a std channel —
//! correct on any thread. (`sqlx` was not chosen: a larger dependency tree
//! and compile-time query macros for ~20 fixed statements.)
//!
//! **Concurrency.** Every write is one transaction (READ COMMITTED) made
//! of `INSERT … ON CONFLICT` upserts, so two replicas committing the same
//! manifest, tag or blob link both succeed and leave one row; the last
//! commit's tag wins. Rows are touched in one order (repository, manifest,
//! blob links sorted by digest, tag) so two transactions do not deadlock on
//! each other; a deadlock or serialization failure reported anyway is
//! retried.
//!
//! **Schema.** Created and migrated when the store opens, under a
//! transaction-level advisory lock (replicas starting together migrate
//! once); a database migrated by a newer registry is refused.

use super::meta::{MetaCounts, MetadataStore, UploadSession};
use super::StoredManifest;
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use layerlink_proto::Digest;
use std::future::Future;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

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

/// The advisory lock key schema migrations hold ("layerlnk" in ASCII).
const SCHEMA_LOCK: i64 = 0x6c61_7965_726c_6e6b;

/// Connections per registry process.
const POOL_SIZE: usize = 16;

/// How often a write transaction is retried after a deadlock or a
/// serialization failure.
const RETRIES: usize = 5;

/// Metadata in a PostgreSQL database.
pub struct PgMetadata {
    pool: Pool,
    /// The runtime the connections live on (`Option` so `Drop` can shut it
    /// down without blocking: dropping a runtime inside another one's async
    /// context would panic).
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for PgMetadata {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgMetadata {
    /// Connect to `url` (`postgres://user:password@host:port/db`, or
    /// key=value form; `?host=/run/postgresql` for a unix socket), create or
    /// migrate the schema. Fails if the database cannot be reached.
    pub fn connect(url: &str) -> anyhow::Result<PgMetadata> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .context("the PostgreSQL connection string does not parse")?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("layerlink-registry");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("layerlink-pg")
            .enable_all()
            .build()
            .context("starting the PostgreSQL runtime")?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .context("building the PostgreSQL connection pool")?;
        let store = PgMetadata { pool, rt: Some(rt) };
        store
            .run(|pool| async move { migrate(&pool).await })
            .context("preparing the PostgreSQL schema")?;
        Ok(store)
    }

    /// Run `f` on the store's runtime and wait for its result. Safe on
    /// any thread (the caller only blocks on a std channel).
    fn run<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.pool.clone();
        let rt = self.rt.as_ref().expect("runtime present until drop");
        rt.spawn(async move {
            let _ = tx.send(f(pool).await);
        });
        rx.recv()
            .context("the PostgreSQL task ended without an answer")?
    }

    /// Run one write transaction built by `body` over `data`, retried on
    /// deadlock or serialization failure.
    fn write<T, D, F>(&self, data: D, body: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        D: Send + Sync + 'static,
        F: for<'a> Fn(&'a deadpool_postgres::Transaction<'a>, &'a D) -> TxFuture<'a, T>
            + Send
            + Sync
            + 'static,
    {
        self.run(move |pool| async move {
            let mut client = pool.get().await.context("connecting to PostgreSQL")?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let tx = client.transaction().await?;
                let result = match body(&tx, &data).await {
                    Ok(v) => tx.commit().await.map(|()| v).map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match result {
                    Err(e) if attempt < RETRIES && retryable(&e) => {
                        tracing::debug!(attempt, error = %e, "PostgreSQL transaction retried");
                        continue;
                    }
                    other => return other,
                }
            }
        })
    }

    /// Run one read query (`sql` with `params`) and map its rows.
    fn read<T, P, M>(&self, sql: &'static str, params: P, map: M) -> anyhow::Result<T>
    where
        T: Send + 'static,
        P: Params,
        M: FnOnce(Vec<tokio_postgres::Row>) -> anyhow::Result<T> + Send + 'static,
    {
        self.run(move |pool| async move {
            let client = pool.get().await.context("connecting to PostgreSQL")?;
            let stmt = client.prepare_cached(sql).await?;
            let rows = client.query(&stmt, &params.refs()).await?;
            map(rows)
        })
    }
}

/// The future of one transaction body.
type TxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// Owned query parameters (they travel to the runtime's task).
trait Params: Send + 'static {
    fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)>;
}

impl Params for () {
    fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        Vec::new()
    }
}

impl<A: tokio_postgres::types::ToSql + Sync + Send + 'static> Params for (A,) {
    fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![&self.0]
    }
}

impl<A, B> Params for (A, B)
where
    A: tokio_postgres::types::ToSql + Sync + Send + 'static,
    B: tokio_postgres::types::ToSql + Sync + Send + 'static,
{
    fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![&self.0, &self.1]
    }
}

impl<A, B, C> Params for (A, B, C)
where
    A: tokio_postgres::types::ToSql + Sync + Send + 'static,
    B: tokio_postgres::types::ToSql + Sync + Send + 'static,
    C: tokio_postgres::types::ToSql + Sync + Send + 'static,
{
    fn refs(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![&self.0, &self.1, &self.2]
    }
}

/// A deadlock or serialization failure: the transaction may simply be
/// run again.
fn retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .is_some_and(|code| {
                *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
            })
    })
}

/// Create the version table and apply the migrations the database lacks.
async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS layerlink_schema (
            component text PRIMARY KEY,
            version integer NOT NULL
        )",
    )
    .await?;
    let have: i32 = tx
        .query_opt(
            "SELECT version FROM layerlink_schema WHERE component = 'oci'",
            &[],
        )
        .await?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    anyhow::ensure!(
        have <= known,
        "the database's oci schema is version {have}, newer than this registry knows \
         ({known}): upgrade the registry"
    );
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("schema migration {}", i + 1))?;
    }
    if have < known {
        tx.execute(
            "INSERT INTO layerlink_schema (component, version) VALUES ('oci', $1)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[&known],
        )
        .await?;
        tracing::info!(from = have, to = known, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

fn digest_of(bytes: Vec<u8>) -> anyhow::Result<Digest> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("a stored digest has {} bytes, not 32", b.len()))?;
    Ok(Digest(arr))
}

fn to_i64(v: u64) -> anyhow::Result<i64> {
    i64::try_from(v).map_err(|_| anyhow::anyhow!("{v} does not fit in a PostgreSQL bigint"))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl MetadataStore for PgMetadata {
    fn manifest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> anyhow::Result<Option<StoredManifest>> {
        let d = *digest;
        self.read(
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
        self.read(
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
        self.write(data, |tx, data| {
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
        self.read(
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
        self.write((repository, digest), |tx, (repository, digest)| {
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
        self.write((repository, tag), |tx, (repository, tag)| {
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
        self.read(
            "SELECT tag FROM oci_tags WHERE repository = $1 AND ($2::text IS NULL OR tag > $2)
             ORDER BY tag LIMIT $3",
            (repository.to_owned(), last.map(str::to_owned), limit(n)),
            |rows| Ok(rows.into_iter().map(|r| r.get(0)).collect()),
        )
    }

    fn tagged(&self, repository: &str) -> anyhow::Result<Vec<(String, Digest)>> {
        self.read(
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
        self.read(
            "SELECT 1 FROM oci_repositories WHERE name = $1",
            (repository.to_owned(),),
            |rows| Ok(!rows.is_empty()),
        )
    }

    fn repositories(&self, last: Option<&str>, n: usize) -> anyhow::Result<Vec<String>> {
        self.read(
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
        self.write(
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
        self.read(
            "SELECT 1 FROM oci_repo_blobs WHERE repository = $1 AND digest = $2",
            (repository.to_owned(), digest.0.to_vec()),
            |rows| Ok(!rows.is_empty()),
        )
    }

    fn repository_blobs(&self, repository: &str) -> anyhow::Result<Vec<Digest>> {
        self.read(
            "SELECT digest FROM oci_repo_blobs WHERE repository = $1 ORDER BY digest",
            (repository.to_owned(),),
            |rows| rows.into_iter().map(|r| digest_of(r.get(0))).collect(),
        )
    }

    fn unlink_blob(&self, repository: &str, digest: &Digest) -> anyhow::Result<bool> {
        let repository = repository.to_owned();
        let digest = digest.0.to_vec();
        self.write((repository, digest), |tx, (repository, digest)| {
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
        self.write(
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
        self.read(
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
        self.write(
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
        self.read(
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
        self.write(id, |tx, id| {
            Box::pin(async move {
                tx.execute("DELETE FROM oci_uploads WHERE id = $1", &[id])
                    .await?;
                Ok(())
            })
        })
    }

    fn uploads(&self) -> anyhow::Result<Vec<UploadSession>> {
        self.read(
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
        self.read(
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
        self.read("SELECT 1", (), |_| Ok(()))
    }
}
