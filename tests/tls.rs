//! TLS to the four stores (issue 8), over real TLS connections: a CA made at test time, its
//! server certificate presented by a throwaway MariaDB started with TLS, and by TLS-terminating
//! proxies in front of PostgreSQL (speaking the protocol's SSLRequest upgrade), Milvus (ALPN
//! h2) and S3. docledger, with every store URL asking for TLS and `DOCLEDGER_TLS_CA_FILE`
//! naming the CA, must make a put ready in all three stores and pass verify; with another CA
//! or none, every client must refuse the server with an error naming the store, and nothing
//! may be written or acknowledged.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::mariadb::TlsMariadb;
use common::pki::TestPki;
use common::proxy::{host_port, ClientSide, Proxy};
use common::{service_vars, TestService};
use docledger::config::Config;
use docledger::eventlog::PgLog;
use mysql_async::prelude::Queryable;
use projections::milvus::{MilvusAccess, MilvusSink};
use projections::mysql::MysqlSink;
use projections::s3::S3Sink;
use projections::testing::StoreEnv;
use projections::{ErrorClass, Sink};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The longest any single step may take (the whole test stays far below a minute).
const STEP: Duration = Duration::from_secs(30);

/// TLS in front of every store, all presenting certificates of one test CA. Fields drop in
/// order: the MariaDB server before the CA directory it reads its certificate from.
struct TlsFront {
    mariadb: TlsMariadb,
    postgres: Proxy,
    milvus: Proxy,
    s3: Proxy,
    pki: TestPki,
}

impl TlsFront {
    async fn start(name: &str) -> TlsFront {
        let env = StoreEnv::require();
        let pki = TestPki::generate(name);
        let mariadb = TlsMariadb::start(&pki).await;
        let postgres = Proxy::start_with(
            host_port(&env.pg_url),
            ClientSide::PostgresTls(pki.acceptor(&[])),
        )
        .await;
        let milvus = Proxy::start_with(
            host_port(&env.milvus_uri),
            ClientSide::Tls(pki.acceptor(&[b"h2"])),
        )
        .await;
        let s3 = Proxy::start_with(
            host_port(&env.s3_endpoint),
            ClientSide::Tls(pki.acceptor(&[b"http/1.1"])),
        )
        .await;
        TlsFront {
            mariadb,
            postgres,
            milvus,
            s3,
            pki,
        }
    }

    /// Points the service's store URLs at the TLS endpoints, each asking for TLS, and sets
    /// `DOCLEDGER_TLS_CA_FILE` to `ca` (unset when `None`).
    fn rewrite(&self, vars: &mut HashMap<String, String>, ca: Option<&Path>) {
        let log_url = &vars["DOCLEDGER_EVENTSTORE_URL"];
        let log_url = format!("{}?sslmode=verify-full", self.postgres.url_for(log_url));
        let database = database_of(&vars["DOCLEDGER_MYSQL_URL"]);
        let mysql_url = self.mariadb.tls_url(&database);
        vars.insert("DOCLEDGER_EVENTSTORE_URL".into(), log_url);
        vars.insert("DOCLEDGER_MYSQL_URL".into(), mysql_url);
        vars.insert(
            "DOCLEDGER_MILVUS_URL".into(),
            format!("https://{}", self.milvus.addr()),
        );
        vars.insert(
            "DOCLEDGER_S3_ENDPOINT".into(),
            format!("https://{}", self.s3.addr()),
        );
        match ca {
            Some(path) => vars.insert(
                "DOCLEDGER_TLS_CA_FILE".into(),
                path.to_str().expect("utf-8 path").to_owned(),
            ),
            None => vars.remove("DOCLEDGER_TLS_CA_FILE"),
        };
    }

    /// `(handshakes, refused)` of each proxy: PostgreSQL, Milvus, S3.
    fn handshakes(&self) -> [(u64, u64); 3] {
        [&self.postgres, &self.milvus, &self.s3].map(|p| {
            (
                p.stats().tls_handshakes.load(Ordering::Relaxed),
                p.stats().tls_refused.load(Ordering::Relaxed),
            )
        })
    }
}

fn database_of(url: &str) -> String {
    url::Url::parse(url)
        .expect("store url")
        .path()
        .trim_start_matches('/')
        .to_owned()
}

fn document() -> Value {
    json!({
        "title": "TLS report",
        "source_type": "pdf",
        "attributes": {"lang": "en"},
        "blob": {"content_base64": "JVBERi0xLjc=", "content_type": "application/pdf"},
        "chunks": [
            {"text": "encrypted", "vector": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]},
            {"text": "in transit", "vector": [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]},
        ],
    })
}

/// Runs the `docledger` binary's `verify` with exactly `vars`; returns (success, stderr).
async fn cli_verify(vars: &HashMap<String, String>) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCLEDGER_")) {
        command.env_remove(key);
    }
    let output = tokio::time::timeout(
        STEP,
        command
            .arg("verify")
            .envs(vars)
            .env("DOCLEDGER_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("docledger verify ends within the step timeout")
    .expect("docledger verify runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn every_store_is_reached_over_verified_tls_with_the_configured_ca() {
    let front = TlsFront::start("ok").await;
    let ca = front.pki.ca_file();
    let svc =
        TestService::start_rewritten("tls_all_stores", &[], |vars| front.rewrite(vars, Some(&ca)))
            .await;
    assert!(
        svc.config.tls.has_extra(),
        "the CA file is part of the configuration"
    );

    let http = reqwest::Client::new();
    let doc = "tls/report-1";
    let response = tokio::time::timeout(
        STEP,
        http.put(svc.doc_url(doc, "?consistency=applied&timeout_ms=20000"))
            .json(&document())
            .send(),
    )
    .await
    .expect("the put answers in time")
    .expect("the put is answered");
    let status = response.status().as_u16();
    let put: Value = response.json().await.expect("json answer");
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["consistent"], true, "{put}");
    assert_eq!(put["stores"], json!({"mysql": 1, "milvus": 1, "s3": 1}));

    // The catalogue row is ready, read through docledger's own MySQL client over TLS; the
    // server says that connection is encrypted.
    let mysql =
        MysqlSink::with_tls(svc.config.mysql_url.expose(), &svc.config.tls).expect("mysql url");
    let row = mysql.row(doc).await.expect("read row").expect("row exists");
    assert_eq!((row.version, row.status.as_str()), (1, "ready"));
    let mut conn = mysql.pool().get_conn().await.expect("tls connection");
    let cipher: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await
        .expect("ssl status");
    let cipher = cipher.map(|(_, c)| c).unwrap_or_default();
    assert!(
        !cipher.is_empty(),
        "docledger's MySQL connection is not TLS"
    );
    drop(conn);
    // The server itself refuses the same user without TLS (REQUIRE SSL): every row docledger
    // wrote came over TLS.
    let plain = mysql_async::Conn::new(
        mysql_async::Opts::from_url(
            &front
                .mariadb
                .plain_url(&database_of(svc.config.mysql_url.expose())),
        )
        .expect("plain url"),
    )
    .await;
    assert!(
        plain.is_err(),
        "the TLS-only user connected without TLS: {}",
        front.mariadb.log()
    );

    // Every store agrees with the log: in-process and through the command line, both reading
    // the stores over TLS with the configured CA.
    let outcome = tokio::time::timeout(STEP, docledger::cli::verify::run(&svc.config, false))
        .await
        .expect("verify ends in time")
        .expect("verify reaches every store");
    assert!(outcome.matches(), "{}", outcome.report.summary());
    let (ok, stderr) = cli_verify(&svc.vars).await;
    assert!(ok, "docledger verify failed: {stderr}");

    // PostgreSQL, Milvus and S3 were only reached through completed TLS handshakes, and a
    // PostgreSQL client that does not ask for TLS is turned away by the proxy.
    for (store, (handshakes, refused)) in
        ["postgres", "milvus", "s3"].iter().zip(front.handshakes())
    {
        assert!(handshakes > 0, "{store}: no TLS handshake");
        assert_eq!(refused, 0, "{store}: a client was refused");
    }
    let plain_pg = front.postgres.url_for(&svc.env.pg_database_url("postgres"));
    assert!(
        tokio_postgres::connect(&plain_pg, tokio_postgres::NoTls)
            .await
            .is_err(),
        "the PostgreSQL proxy let a plain client through"
    );
    assert_eq!(front.handshakes()[0].1, 1);

    svc.stop().await;
}

#[actix_rt::test]
async fn an_untrusted_certificate_is_refused_naming_the_store_and_nothing_is_written() {
    let front = TlsFront::start("refused").await;
    let stranger = TestPki::generate("stranger");
    let (env, name, plain_vars) = service_vars("tls_refused", &[]);
    let mut vars = plain_vars.clone();

    for ca in [Some(stranger.ca_file()), None] {
        vars.clone_from(&plain_vars);
        front.rewrite(&mut vars, ca.as_deref());
        let config = Config::load(None, &vars).expect("valid configuration");

        // The service does not start: the log database refuses first, nothing listens.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = tokio::time::timeout(
            STEP,
            docledger::serve(config.clone(), listener, CancellationToken::new()),
        )
        .await
        .expect("serve gives up in time");
        let err = served
            .expect_err("serve must refuse an untrusted log database")
            .to_string();
        assert!(
            err.contains("PostgreSQL TLS: certificate not trusted"),
            "{ca:?}: {err}"
        );
        let put = reqwest::Client::new()
            .put(format!("http://{addr}/v1/documents/tls-refused"))
            .json(&document())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(put.is_err(), "a request was answered: {put:?}");

        // docledger verify (the binary) refuses the same way.
        let (ok, stderr) = cli_verify(&vars).await;
        assert!(!ok, "verify passed against untrusted stores");
        assert!(
            stderr.contains("PostgreSQL TLS: certificate not trusted"),
            "{stderr}"
        );

        // Each store's client on its own: a transient connection failure that names the
        // store and says why.
        let trust = config.tls.clone();
        let log = PgLog::connect_with_tls(&config.eventstore_url, 1, &trust)
            .await
            .expect_err("untrusted log database");
        assert!(
            log.to_string()
                .contains("PostgreSQL TLS: certificate not trusted"),
            "{log}"
        );
        let mysql = MysqlSink::with_tls(config.mysql_url.expose(), &trust).expect("mysql url");
        let err = mysql.prepare().await.expect_err("untrusted MySQL");
        assert_eq!(err.class, ErrorClass::Transient, "{err}");
        assert!(
            err.message
                .starts_with("MySQL TLS: certificate not trusted"),
            "{err}"
        );
        let access = MilvusAccess {
            trust: trust.clone(),
            ..config.milvus_access()
        };
        let err = MilvusSink::connect(&access, &config.milvus_collection, config.vector_dim)
            .await
            .expect_err("untrusted Milvus");
        assert_eq!(err.class, ErrorClass::Transient, "{err}");
        assert!(
            err.message
                .starts_with("Milvus TLS: certificate not trusted"),
            "{err}"
        );
        let s3 = S3Sink::with_tls(
            config.s3_endpoint.expose(),
            &config.s3_credentials,
            &config.s3_region,
            &config.s3_bucket,
            &trust,
        )
        .expect("s3 endpoint");
        let err = s3.prepare().await.expect_err("untrusted S3");
        assert_eq!(err.class, ErrorClass::Transient, "{err}");
        assert!(
            err.message.starts_with("S3 TLS: certificate not trusted"),
            "{err}"
        );
    }

    // Every handshake was refused by the client; nothing reached a store: no log database,
    // no catalogue database, no bucket.
    for (store, (handshakes, refused)) in
        ["postgres", "milvus", "s3"].iter().zip(front.handshakes())
    {
        assert_eq!(handshakes, 0, "{store}: a handshake completed");
        assert!(refused > 0, "{store}: no client tried");
    }
    let (pg, conn) =
        tokio_postgres::connect(&env.pg_database_url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("plain PostgreSQL for the check");
    let conn = tokio::spawn(conn);
    let log_db = pg
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("look up the log database");
    assert!(log_db.is_none(), "the log database was created");
    drop(pg);
    let _ = conn.await;
    let mut admin = front.mariadb.admin().await;
    let catalogue: Option<String> = admin
        .exec_first(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
            (database_of(&vars["DOCLEDGER_MYSQL_URL"]),),
        )
        .await
        .expect("look up the catalogue database");
    assert_eq!(catalogue, None, "the catalogue database was created");
    let plain_s3 = S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        &vars["DOCLEDGER_S3_BUCKET"],
    );
    let listed = plain_s3.list_keys("").await;
    assert!(
        listed
            .as_ref()
            .is_err_and(|e| e.message.contains("NoSuchBucket")),
        "the bucket was created: {listed:?}"
    );

    // The host name is verified too: `sslmode=require` (which does not check it in libpq)
    // refuses a certificate of a trusted CA that names another host.
    let misnamed = TestPki::generate_for("misnamed", &["db.example.invalid"]);
    let proxy = Proxy::start_with(
        host_port(&env.pg_url),
        ClientSide::PostgresTls(misnamed.acceptor(&[])),
    )
    .await;
    let url = format!(
        "{}?sslmode=require",
        proxy.url_for(&env.pg_database_url(&name))
    );
    let config = Config::load(
        None,
        &[
            ("DOCLEDGER_EVENTSTORE_URL".to_owned(), url),
            (
                "DOCLEDGER_TLS_CA_FILE".to_owned(),
                misnamed.ca_file().to_str().expect("utf-8 path").to_owned(),
            ),
        ]
        .into(),
    )
    .expect("valid configuration");
    let err = PgLog::connect_with_tls(&config.eventstore_url, 1, &config.tls)
        .await
        .expect_err("a certificate for another host");
    assert!(
        err.to_string()
            .contains("PostgreSQL TLS: certificate does not name this host"),
        "{err}"
    );
    assert_eq!(proxy.stats().tls_handshakes.load(Ordering::Relaxed), 0);
}
