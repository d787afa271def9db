//! The PostgreSQL connection the PostgreSQL stores share
//! ([`super::PgMetadata`], [`super::PgDevices`]): one pool per
//! [`super::Storage`], the runtime its connections live on, the retried
//! write transaction, and the per-component schema migrations
//! (`layerlink_schema`: component → version).
//!
//! **Driver and the sync/async bridge.** The store traits are blocking
//! (called from `spawn_blocking`, from CLI commands without a runtime, and
//! from tests inside `#[tokio::test]`). The sync `postgres` crate runs its
//! own runtime with `block_on` per call, which panics on a thread that is
//! inside a tokio runtime; `Handle::block_on` panics the same way on an
//! async worker thread. So [`Pg`] owns a small tokio runtime (2 threads)
//! running `tokio-postgres` connections from a `deadpool-postgres` pool (a
//! broken connection is dropped and a new one opened on the next call: a
//! database restart costs the calls in flight, not the process), and each
//! call spawns its query there and waits on a std channel — correct on any
//! thread. (`sqlx` was not chosen: a larger dependency tree and
//! compile-time query macros for a few dozen fixed statements.)
//!
//! **TLS.** `sslmode=require` in the connection string (libpq's
//! `verify-full` and `verify-ca` are read as `require`) makes every
//! connection TLS (rustls, `tokio-postgres-rustls`) and the server's
//! certificate is *always* verified — chain and host name — against the
//! CA file `sslrootcert=PATH` names, or the system's roots without it
//! (stricter than libpq's `require`, which checks nothing: a registry's
//! metadata is worth a certificate). Without `sslmode`, or with `disable`
//! or `prefer`, connections are plain (a unix socket, or a trusted network).
//!
//! **Transactions.** Every write is one transaction (READ COMMITTED),
//! retried on a deadlock or serialization failure ([`Pg::write`]).

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use layerlink_proto::Digest;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// The advisory lock key schema migrations hold ("layerlnk" in ASCII).
const SCHEMA_LOCK: i64 = 0x6c61_7965_726c_6e6b;

/// The server-side limit on one statement, unless the connection string
/// sets `options` itself.
const STATEMENT_TIMEOUT_MS: u32 = 30_000;

/// Connections per registry process.
const POOL_SIZE: usize = 16;

/// How often a write transaction is retried after a deadlock or a
/// serialization failure.
const RETRIES: usize = 5;

/// A connection pool to one PostgreSQL database and the runtime its
/// connections live on, shared by the stores of one [`super::Storage`].
pub struct Pg {
    pool: Pool,
    /// The runtime the connections live on (`Option` so `Drop` can shut it
    /// down without blocking: dropping a runtime inside another one's async
    /// context would panic).
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Pg {
    /// Connect to `url` (`postgres://user:password@host:port/db`, or
    /// key=value form; `?host=/run/postgresql` for a unix socket), create or
    /// check that the database answers. Fails if it cannot be reached.
    pub fn connect(url: &str) -> anyhow::Result<Arc<Pg>> {
        let (url, root_cert) = take_sslrootcert(url);
        let url = url
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let mut config: tokio_postgres::Config = url
            .parse()
            .context("the PostgreSQL connection string does not parse")?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("layerlink-registry");
        }
        if config.get_options().is_none() {
            // A statement stuck on a lock or a sick server gives its pool
            // connection back after this instead of holding it (and the
            // request) forever; `?options=` in the URL overrides it.
            config.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("layerlink-pg")
            .enable_all()
            .build()
            .context("starting the PostgreSQL runtime")?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = tls_connector(root_cert.as_deref())?;
            Manager::from_config(config, tls, manager_config)
        } else {
            anyhow::ensure!(
                root_cert.is_none(),
                "the PostgreSQL connection string names sslrootcert but not sslmode=require"
            );
            Manager::from_config(config, NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .context("building the PostgreSQL connection pool")?;
        let pg = Pg { pool, rt: Some(rt) };
        pg.run(|pool| async move {
            drop(pool.get().await.context("connecting to PostgreSQL")?);
            Ok(())
        })?;
        Ok(Arc::new(pg))
    }

    /// Run `f` on the store's runtime and wait for its result. Safe on
    /// any thread (the caller only blocks on a std channel).
    pub fn run<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
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
    pub fn write<T, D, F>(&self, data: D, body: F) -> anyhow::Result<T>
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
    pub fn read<T, P, M>(&self, sql: &'static str, params: P, map: M) -> anyhow::Result<T>
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
    /// Create the version table and apply the migrations of `component`
    /// the database lacks (`migrations[i]` makes version `i + 1`), under a
    /// transaction-level advisory lock: replicas starting together migrate
    /// once. A database migrated by a newer registry is refused.
    pub fn migrate(
        &self,
        component: &'static str,
        migrations: &'static [&'static str],
    ) -> anyhow::Result<()> {
        self.run(move |pool| async move {
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
                    "SELECT version FROM layerlink_schema WHERE component = $1",
                    &[&component],
                )
                .await?
                .map(|r| r.get(0))
                .unwrap_or(0);
            let known = i32::try_from(migrations.len()).unwrap_or(i32::MAX);
            anyhow::ensure!(
                have <= known,
                "the database's {component} schema is version {have}, newer than this registry \
                 knows ({known}): upgrade the registry"
            );
            for (i, sql) in migrations
                .iter()
                .enumerate()
                .skip(usize::try_from(have).unwrap_or(0))
            {
                tx.batch_execute(sql)
                    .await
                    .with_context(|| format!("{component} schema migration {}", i + 1))?;
            }
            if have < known {
                tx.execute(
                    "INSERT INTO layerlink_schema (component, version) VALUES ($1, $2)
                     ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                    &[&component, &known],
                )
                .await?;
                tracing::info!(
                    component,
                    from = have,
                    to = known,
                    "PostgreSQL schema migrated"
                );
            }
            tx.commit().await?;
            Ok(())
        })
        .with_context(|| format!("preparing the PostgreSQL schema ({component})"))
    }
}

/// `url` without its `sslrootcert` parameter (which `tokio-postgres` does
/// not know), and that parameter's value. Both forms: a URL's query
/// (`…?sslmode=require&sslrootcert=/etc/ca.pem`) and `key=value` words.
fn take_sslrootcert(url: &str) -> (String, Option<std::path::PathBuf>) {
    const KEY: &str = "sslrootcert=";
    let mut found = None;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|p| match p.strip_prefix(KEY) {
                Some(v) => {
                    found = Some(std::path::PathBuf::from(v));
                    false
                }
                None => true,
            })
            .collect();
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (url, found);
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|w| match w.strip_prefix(KEY) {
            Some(v) => {
                found = Some(std::path::PathBuf::from(v));
                false
            }
            None => true,
        })
        .collect();
    (kept.join(" "), found)
}

/// The TLS connector for `sslmode=require`: the certificates of
/// `root_cert` (PEM) or the system's roots.
fn tls_connector(
    root_cert: Option<&std::path::Path>,
) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls_pki_types::pem::PemObject as _;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading sslrootcert {}", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "sslrootcert {} holds no certificate",
                path.display()
            );
            for c in certs {
                roots
                    .add(c)
                    .with_context(|| format!("a certificate of {}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                let _ = roots.add(c);
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "sslmode=require without sslrootcert, and no system root certificates were found"
            );
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The future of one transaction body.
pub type TxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// Owned query parameters (they travel to the runtime's task).
pub trait Params: Send + 'static {
    /// The parameters as `tokio_postgres` takes them.
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

pub fn digest_of(bytes: Vec<u8>) -> anyhow::Result<Digest> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("a stored digest has {} bytes, not 32", b.len()))?;
    Ok(Digest(arr))
}

pub fn to_i64(v: u64) -> anyhow::Result<i64> {
    i64::try_from(v).map_err(|_| anyhow::anyhow!("{v} does not fit in a PostgreSQL bigint"))
}

pub fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::take_sslrootcert;
    use std::path::PathBuf;

    #[test]
    fn sslrootcert_is_taken_out_of_both_forms() {
        assert_eq!(
            take_sslrootcert("postgresql://u@db:5432/x?sslmode=require&sslrootcert=/etc/ca.pem"),
            (
                "postgresql://u@db:5432/x?sslmode=require".to_owned(),
                Some(PathBuf::from("/etc/ca.pem"))
            )
        );
        assert_eq!(
            take_sslrootcert("postgres://u@db/x?sslrootcert=/ca.pem"),
            (
                "postgres://u@db/x".to_owned(),
                Some(PathBuf::from("/ca.pem"))
            )
        );
        assert_eq!(
            take_sslrootcert("host=db sslrootcert=/ca.pem sslmode=require"),
            (
                "host=db sslmode=require".to_owned(),
                Some(PathBuf::from("/ca.pem"))
            )
        );
        let plain = "postgresql://u@/x?host=/run/postgresql";
        assert_eq!(take_sslrootcert(plain), (plain.to_owned(), None));
    }
}
