//! Test support shared by every crate's tests: where the real stores are, and a clear
//! failure (with how to start them) when one is not running. Never a mock.
//!
//! Addresses come from `PG_URL`, `MYSQL_URL`, `MILVUS_URI`, `S3_ENDPOINT`, `S3_ACCESS_KEY`,
//! `S3_SECRET_KEY`, `S3_REGION`; unset ones are read from the env file that
//! `scripts/stores.sh up` writes (`$STORES_DATA/env`, default `/tmp/stores-data/env`).

use std::collections::HashMap;
use std::net::TcpStream;
use std::time::Duration;

/// How to start the stores, printed when one is missing.
pub const HOW_TO_START: &str = "start the stores with `scripts/stores.sh up` (see README)";

/// Where the real stores of this machine are.
#[derive(Debug, Clone)]
pub struct StoreEnv {
    /// PostgreSQL server URL (database part is replaced per test).
    pub pg_url: String,
    /// MySQL/MariaDB server URL.
    pub mysql_url: String,
    /// Milvus gRPC URL.
    pub milvus_uri: String,
    /// S3 endpoint.
    pub s3_endpoint: String,
    /// S3 access key.
    pub s3_access_key: String,
    /// S3 secret key.
    pub s3_secret_key: String,
    /// S3 region.
    pub s3_region: String,
}

fn env_file() -> HashMap<String, String> {
    let dir = std::env::var("STORES_DATA").unwrap_or_else(|_| "/tmp/stores-data".into());
    let Ok(text) = std::fs::read_to_string(format!("{dir}/env")) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("export ")) {
        for assignment in line.trim_start_matches("export ").split_whitespace() {
            if let Some((k, v)) = assignment.split_once('=') {
                out.insert(k.to_owned(), v.trim_matches('\'').to_owned());
            }
        }
    }
    out
}

impl StoreEnv {
    /// Reads the addresses (environment first, then the stores' env file, then defaults).
    pub fn load() -> StoreEnv {
        let file = env_file();
        let get = |k: &str, default: &str| {
            std::env::var(k)
                .ok()
                .or_else(|| file.get(k).cloned())
                .unwrap_or_else(|| default.to_owned())
        };
        StoreEnv {
            pg_url: get("PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            mysql_url: get("MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql"),
            milvus_uri: get("MILVUS_URI", "http://127.0.0.1:19530"),
            s3_endpoint: get("S3_ENDPOINT", "http://127.0.0.1:9000"),
            s3_access_key: get("S3_ACCESS_KEY", "minioadmin"),
            s3_secret_key: get("S3_SECRET_KEY", "minioadmin-secret"),
            s3_region: get("S3_REGION", "us-east-1"),
        }
    }

    /// Like [`StoreEnv::load`], but panics with how to start the stores unless every one
    /// accepts TCP connections.
    pub fn require() -> StoreEnv {
        let env = Self::load();
        for (name, url) in [
            ("PostgreSQL", &env.pg_url),
            ("MySQL/MariaDB", &env.mysql_url),
            ("Milvus", &env.milvus_uri),
            ("S3", &env.s3_endpoint),
        ] {
            let addr = host_port(url);
            let reachable = addr
                .parse()
                .ok()
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
                .is_some();
            assert!(
                reachable,
                "{name} is not reachable at {url} ({addr}): {HOW_TO_START}"
            );
        }
        env
    }

    /// `pg_url` with the database replaced.
    pub fn pg_database_url(&self, database: &str) -> String {
        with_path(&self.pg_url, database)
    }

    /// `mysql_url` with the database replaced.
    pub fn mysql_database_url(&self, database: &str) -> String {
        with_path(&self.mysql_url, database)
    }
}

fn with_path(url: &str, path: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{path}")
}

/// `host:port` of a URL like `scheme://user@host:port/db`, resolving `localhost`.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.replace("localhost", "127.0.0.1")
}

/// A name usable as a database, bucket and collection name, unique per test and run.
pub fn unique_name(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "t_{}_{}_{:x}",
        &clean[..clean.len().min(30)],
        std::process::id(),
        nanos & 0xffffff
    )
}
