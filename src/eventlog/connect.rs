//! How every connection to the log database is opened: plain or TLS as the URL's `sslmode`
//! asks ([`projections::tls::postgres_tls`]), TLS verified against the same trust as the
//! other stores' clients. The pool, the LISTEN and NOTIFY connections and the lease
//! connection all come from one [`PgConnector`].
//!
//! A pooled connection is shared by every runtime of the process (HTTP workers, actor
//! arbiters, the projectors' runtime), so its socket and its driver task live on a runtime
//! of their own, [`home`], which lasts as long as the process: the runtime that happened to
//! open it may stop first (a graceful stop ends the HTTP workers' runtimes while the
//! projectors, a rebuild and the compactor still use the pool), and a connection driven
//! there would close under whoever holds it then.

use std::str::FromStr;
use std::sync::OnceLock;

use deadpool_postgres::{Connect, Manager, ManagerConfig, Pool, Runtime};
use futures::future::BoxFuture;
use projections::tls::{self, TlsMode, TlsTrust};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::LogError;
use crate::config::StoreUrl;

/// A connection to the log database, as [`PgConnector::connect`] opens it.
pub type PgConnection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Opens connections to the log database named by one URL. Cheap to clone.
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mode: TlsMode,
}

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnector")
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PgConnector {
    /// A connector for `url`; with `sslmode=require`, `verify-ca` or `verify-full` every
    /// connection is TLS and the server's certificate must chain to a root of `trust` and
    /// name the URL's host; otherwise connections are plain.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the URL or its `sslmode` does not parse.
    pub fn new(url: &StoreUrl, trust: &TlsTrust) -> Result<PgConnector, LogError> {
        let parse_error = |message: String| LogError::Unavailable {
            operation: "parse url",
            message,
        };
        let (mode, url) = tls::postgres_tls(url.expose()).map_err(parse_error)?;
        let mut config =
            tokio_postgres::Config::from_str(&url).map_err(LogError::db("parse url"))?;
        config.ssl_mode(match mode {
            TlsMode::Plain => SslMode::Disable,
            TlsMode::Verified => SslMode::Require,
        });
        Ok(PgConnector {
            config,
            // Unused with `SslMode::Disable`.
            tls: MakeRustlsConnect::new(trust.client_config(&[]).as_ref().clone()),
            mode,
        })
    }

    /// The same server and settings, database `dbname`.
    pub fn with_dbname(&self, dbname: &str) -> PgConnector {
        let mut other = self.clone();
        other.config.dbname(dbname);
        other
    }

    /// The database the URL names (`postgres` when it names none).
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    /// Whether connections are TLS.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Opens one connection; the caller drives the returned connection future.
    ///
    /// # Errors
    /// The driver's error (a failed TLS handshake included; see [`super::db_message`]).
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }

    /// A pool of at most `size` connections.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the pool cannot be built.
    pub fn pool(&self, size: usize, manager: ManagerConfig) -> Result<Pool, LogError> {
        let connect = HomedConnect {
            tls: self.tls.clone(),
            home: home(),
        };
        let manager = Manager::from_connect(self.config.clone(), connect, manager);
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| LogError::Unavailable {
                operation: "build pool",
                message: e.to_string(),
            })
    }
}

/// The runtime that drives every pooled connection to the log: one thread of its own,
/// started on first use, that runs until the process exits.
pub fn home() -> Handle {
    static HOME: OnceLock<Handle> = OnceLock::new();
    HOME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("docledger-log-io".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the log connections' runtime");
                let _ = tx.send(runtime.handle().clone());
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("the log connections' thread");
        rx.recv().expect("the log connections' runtime handle")
    })
    .clone()
}

/// Opens a pooled connection on [`home`]: its socket is registered with that runtime's
/// reactor and its driver task runs there, whichever runtime asked for it.
struct HomedConnect {
    tls: MakeRustlsConnect,
    home: Handle,
}

impl Connect for HomedConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
    {
        let (tls, config) = (self.tls.clone(), config.clone());
        let opened = self.home.spawn(async move {
            let (client, connection) = config.connect(tls).await?;
            let driver = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %super::db_message(&e), "log connection ended");
                }
            });
            Ok((client, driver))
        });
        Box::pin(async move {
            // The home runtime never stops while the process runs, so the task ends.
            opened.await.expect("the log connections' runtime runs")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> StoreUrl {
        crate::config::Config::load(
            None,
            &[("DOCLEDGER_EVENTSTORE_URL".to_owned(), s.to_owned())].into(),
        )
        .expect("valid url")
        .eventstore_url
    }

    #[test]
    fn sslmode_becomes_the_drivers_mode() {
        let trust = TlsTrust::system();
        let plain =
            PgConnector::new(&url("postgres://u@127.0.0.1:5432/log"), &trust).expect("plain url");
        assert_eq!(plain.mode(), TlsMode::Plain);
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(plain.dbname(), "log");
        for mode in ["require", "verify-ca", "verify-full"] {
            let tls = PgConnector::new(
                &url(&format!("postgres://u@127.0.0.1/log?sslmode={mode}")),
                &trust,
            )
            .expect("tls url");
            assert_eq!(tls.mode(), TlsMode::Verified, "{mode}");
            assert_eq!(tls.config.get_ssl_mode(), SslMode::Require, "{mode}");
            assert_eq!(tls.with_dbname("postgres").dbname(), "postgres");
        }
        let err = PgConnector::new(&url("postgres://u@127.0.0.1/log?sslmode=on"), &trust)
            .expect_err("unknown sslmode");
        assert!(err.to_string().contains("sslmode"), "{err}");
    }
}
