//! A throwaway PostgreSQL server for tests: `initdb` into a temp dir, the
//! postmaster listening only on a unix socket in that dir, stopped
//! (`pg_ctl stop -m fast`) and deleted on drop.
//!
//! The server binaries come from the Debian packages `scripts/install-deps.sh`
//! installs (`postgresql`); they are found through `LAYERLINK_PG_BINDIR`,
//! else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
//! A missing server is a test failure, not a skip.
//!
//! PostgreSQL refuses to run as root. Run as root (CI), the harness runs
//! `initdb`, `pg_ctl` and `createdb` as the `postgres` user the Debian
//! package creates (else `nobody`) through `setpriv`, and hands the temp
//! dir to that user. Clients connect as the database superuser `postgres`
//! with `trust` authentication on the socket.
//!
//! This file is also compiled into the registry's unit tests
//! (`registry/src/store/storage/pg_meta.rs`, by `#[path]`): one harness for
//! both crates. It uses `std` only.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A running throwaway PostgreSQL cluster.
pub struct TestPostgres {
    root: PathBuf,
    bindir: PathBuf,
    /// `Some((uid, gid, name))` when the server runs as another user.
    run_as: Option<(u32, u32, String)>,
    /// Set when the server was started (stop it on drop).
    started: bool,
    next_db: std::sync::atomic::AtomicU32,
    /// The TCP port of a server listening with TLS ([`TestPostgres::enable_tls`]).
    tls_port: Option<u16>,
}

impl TestPostgres {
    /// Start a new cluster; panics with the reason (and the server log) if it
    /// cannot.
    pub fn start() -> TestPostgres {
        let bindir = bindir();
        let root =
            std::env::temp_dir().join(format!("layerlink-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        let run_as = if is_root() {
            let user = ["postgres", "nobody"]
                .into_iter()
                .find_map(|u| Some((id_of(u, "-u")?, id_of(u, "-g")?, u.to_owned())))
                .expect("neither a `postgres` nor a `nobody` user to run PostgreSQL as");
            std::os::unix::fs::chown(&root, Some(user.0), Some(user.1))
                .unwrap_or_else(|e| panic!("chown {}: {e}", root.display()));
            Some(user)
        } else {
            None
        };
        let mut pg = TestPostgres {
            root,
            bindir,
            run_as,
            started: false,
            next_db: std::sync::atomic::AtomicU32::new(0),
            tls_port: None,
        };
        std::fs::create_dir(pg.socket_dir()).expect("socket dir");
        if let Some((uid, gid, _)) = &pg.run_as {
            std::os::unix::fs::chown(pg.socket_dir(), Some(*uid), Some(*gid)).expect("chown");
        }
        let data = pg.root.join("data");
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        pg.start_server();
        pg
    }

    /// Start the (stopped) server again, on the same socket and data.
    pub fn start_server(&mut self) {
        // Only the socket; no fsync (throwaway data); enough connections
        // for several pools.
        let listen = match self.tls_port {
            None => "-c listen_addresses=''".to_owned(),
            Some(port) => format!("-c listen_addresses='127.0.0.1' -c port={port} -c ssl=on"),
        };
        let options = format!(
            "-k {} {listen} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB",
            self.socket_dir().display()
        );
        let data = self.root.join("data");
        let log = self.root.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
        self.started = true;
    }

    /// Stop the server (`pg_ctl stop -m fast`: clients are disconnected);
    /// [`TestPostgres::start_server`] brings it back with its data.
    pub fn stop_server(&mut self) {
        let data = self.root.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        self.started = false;
    }

    /// Restart the server listening on 127.0.0.1 (a free port, returned)
    /// with TLS on, presenting `cert` and `key` (PEM files), and accepting
    /// TCP connections only over TLS (`hostssl` in `pg_hba.conf`; the unix
    /// socket stays open for the harness's own tools).
    pub fn enable_tls(&mut self, cert: &std::path::Path, key: &std::path::Path) -> u16 {
        use std::os::unix::fs::PermissionsExt as _;
        if self.started {
            self.stop_server();
        }
        let data = self.root.join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let to = data.join(to);
            std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid, _)) = &self.run_as {
                std::os::unix::fs::chown(&to, Some(*uid), Some(*gid)).unwrap();
            }
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        self.tls_port = Some(port);
        self.start_server();
        port
    }

    /// The directory holding the server's socket (`.s.PGSQL.5432`, or
    /// the TLS port's number after [`TestPostgres::enable_tls`]).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Connection URL of database `db` (user `postgres`, over the socket).
    pub fn url(&self, db: &str) -> String {
        let port = self
            .tls_port
            .map(|p| format!("&port={p}"))
            .unwrap_or_default();
        format!(
            "postgresql://postgres@/{db}?host={}{port}",
            self.socket_dir().display()
        )
    }

    /// Create a new, empty database (named `test0`, `test1`, …; default
    /// collation ICU `en`) and return its URL.
    pub fn create_database(&self) -> String {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("test{n}");
        let sock = self.socket_dir();
        // An ICU default collation where "a" sorts before "B" (unlike the
        // byte order of the C locale): code that relies on the database's
        // default collation for its ordering is caught.
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                sock.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--template=template0".as_ref(),
                "--locale-provider=icu".as_ref(),
                "--icu-locale=en".as_ref(),
                name.as_ref(),
            ],
        );
        self.url(&name)
    }

    /// Run SQL with `psql` on database `db`; its stdout (unaligned, tuples
    /// only). Panics if psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let sock = self.socket_dir();
        self.run(
            "psql",
            &[
                "-h".as_ref(),
                sock.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-d".as_ref(),
                db.as_ref(),
                "-v".as_ref(),
                "ON_ERROR_STOP=1".as_ref(),
                "-At".as_ref(),
                "-c".as_ref(),
                sql.as_ref(),
            ],
        )
    }

    /// Run `tool` from the server's bindir (as the server's user), panic
    /// with its output and the server log if it fails.
    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> String {
        let exe = self.bindir.join(tool);
        let mut cmd = match &self.run_as {
            Some((uid, gid, _)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir(&self.root)
            .env("LC_ALL", "C")
            .env("PGTZ", "UTC")
            .stdin(Stdio::null());
        if let Some(port) = self.tls_port {
            cmd.env("PGPORT", port.to_string());
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        if !out.status.success() {
            panic!(
                "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- server log\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.started {
            let data = self.root.join("data");
            let exe = self.bindir.join("pg_ctl");
            let mut cmd = match &self.run_as {
                Some((uid, gid, _)) => {
                    let mut c = Command::new("setpriv");
                    c.arg(format!("--reuid={uid}"))
                        .arg(format!("--regid={gid}"))
                        .arg("--clear-groups")
                        .arg("--")
                        .arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            let _ = cmd
                .args(["-D".as_ref(), data.as_os_str()])
                .args(["-m", "immediate", "-w", "stop"])
                .current_dir(&self.root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The server binaries' directory.
fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAYERLINK_PG_BINDIR") {
        return dir.into();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server found (no /usr/lib/postgresql/*/bin/initdb, no pg_config, \
             LAYERLINK_PG_BINDIR unset): run scripts/install-deps.sh"
        ),
    }
}

fn is_root() -> bool {
    id_of("", "-u") == Some(0)
}

/// `id -u USER` / `id -g USER` (the current user for "").
fn id_of(user: &str, flag: &str) -> Option<u32> {
    let mut cmd = Command::new("id");
    cmd.arg(flag);
    if !user.is_empty() {
        cmd.arg(user);
    }
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(nanos) << 16) | N.fetch_add(1, Ordering::Relaxed)
}
