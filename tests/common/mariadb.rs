//! A throwaway MariaDB server with TLS, for the TLS test: the shared MariaDB on this machine
//! runs without TLS (`have_ssl=DISABLED`) and must not be reconfigured or restarted. It runs
//! Debian's `mariadbd` in a temporary data directory on a free 127.0.0.1 port with the test
//! CA's server certificate, and is killed (and its directory removed) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::pki::TestPki;

/// The user docledger connects as: `REQUIRE SSL`, so the server itself refuses any
/// connection of it that is not TLS.
pub const TLS_USER: &str = "docledger_tls";
const TLS_PASSWORD: &str = "tls-user-secret";
/// How long installing and starting the server may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running throwaway server.
pub struct TlsMariadb {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl TlsMariadb {
    /// Installs a data directory and starts `mariadbd` presenting `pki`'s server certificate;
    /// creates [`TLS_USER`] with `REQUIRE SSL`. Panics (after cleaning up) when it does not
    /// come up within 30 s.
    pub async fn start(pki: &TestPki) -> TlsMariadb {
        let dir = pki.dir().join("mariadb");
        std::fs::create_dir_all(&dir).expect("mariadb dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = TlsMariadb {
            dir,
            port,
            child: None,
        };
        // Its own directory for temporary tables: a starting MariaDB server deletes the
        // `#sql*` files it finds in its tmpdir, so with the default /tmp the servers of the
        // TLS tests, starting in parallel, removed each other's bootstrap tables (seen in a
        // CI run: "Could not remove temporary table '/tmp/#sql-temptable-…', error: 2").
        std::fs::create_dir_all(server.tmp_dir()).expect("mariadb tmp dir");
        let started = Instant::now();
        let install = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", server.data_dir().display()))
            .arg(format!("--tmpdir={}", server.tmp_dir().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("mariadb-install-db runs (Debian's mariadb-server package)");
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--innodb-buffer-pool-size=16M",
                "--skip-log-bin",
            ])
            .arg(format!("--datadir={}", server.data_dir().display()))
            .arg(format!("--tmpdir={}", server.tmp_dir().display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", server.socket().display()))
            .arg(format!(
                "--pid-file={}",
                server.dir.join("mariadbd.pid").display()
            ))
            .arg(format!("--log-error={}", server.log_file().display()))
            .arg(format!("--ssl-cert={}", pki.server_cert_file().display()))
            .arg(format!("--ssl-key={}", pki.server_key_file().display()))
            .arg(format!("--ssl-ca={}", pki.ca_file().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        server.child = Some(child);
        let admin = loop {
            if let Ok(conn) = mysql_async::Conn::new(server.admin_opts()).await {
                break conn;
            }
            if started.elapsed() > START_TIMEOUT {
                let log = std::fs::read_to_string(server.log_file()).unwrap_or_default();
                panic!("the throwaway mariadbd did not start in {START_TIMEOUT:?}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut admin = admin;
        admin
            .query_drop(format!(
                "CREATE USER '{TLS_USER}'@'%' IDENTIFIED BY '{TLS_PASSWORD}' REQUIRE SSL;
                 GRANT ALL PRIVILEGES ON *.* TO '{TLS_USER}'@'%'"
            ))
            .await
            .expect("create the TLS-only user");
        let _ = admin.disconnect().await;
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("mariadbd.sock")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("mariadbd.err")
    }

    /// root over the unix socket (no TLS: administration only).
    fn admin_opts(&self) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .user(Some("root"))
            .socket(Some(self.socket().to_string_lossy().into_owned()))
            .prefer_socket(true)
            .into()
    }

    /// A root connection over the unix socket, to inspect the server.
    pub async fn admin(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.admin_opts())
            .await
            .expect("admin connection")
    }

    /// The URL of `database` for [`TLS_USER`], asking for TLS.
    pub fn tls_url(&self, database: &str) -> String {
        format!(
            "mysql://{TLS_USER}:{TLS_PASSWORD}@127.0.0.1:{}/{database}?require_ssl=true",
            self.port
        )
    }

    /// The same URL without TLS (the server must refuse it).
    pub fn plain_url(&self, database: &str) -> String {
        format!(
            "mysql://{TLS_USER}:{TLS_PASSWORD}@127.0.0.1:{}/{database}?prefer_socket=false",
            self.port
        )
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// Where it runs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TlsMariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
