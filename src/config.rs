//! docledger's configuration: defaults < TOML file < `DOCLEDGER_*` environment.
//!
//! Every key is parsed into its type at load and a bad value fails fast naming the key.
//! `Config::load` takes the environment as a map so tests never touch the process's own.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use projections::milvus::MilvusAccess;
use projections::s3::S3Credentials;
use projections::tls::TlsTrust;

/// Prefix of every environment variable.
pub const ENV_PREFIX: &str = "DOCLEDGER_";

/// `(key, default)`; the key is the environment variable without [`ENV_PREFIX`], lowercase in
/// the TOML file. `None` = unset by default.
const KEYS: &[(&str, Option<&str>)] = &[
    ("LISTEN", Some("127.0.0.1:8080")),
    (
        "EVENTSTORE_URL",
        Some("postgres://postgres@127.0.0.1:5432/docledger"),
    ),
    ("MYSQL_URL", Some("mysql://root@127.0.0.1:3306/docledger")),
    ("MILVUS_URL", Some("http://127.0.0.1:19530")),
    ("MILVUS_COLLECTION", Some("doc_chunks")),
    // Milvus authentication: a token (`user:password`, or a Zilliz Cloud API key), or a
    // user and password; unset = none. The database holding the collection; unset = `default`.
    ("MILVUS_TOKEN", None),
    ("MILVUS_USER", None),
    ("MILVUS_PASSWORD", None),
    ("MILVUS_DATABASE", None),
    ("S3_ENDPOINT", Some("http://127.0.0.1:9000")),
    ("S3_BUCKET", Some("documents")),
    // Static S3 keys; both unset = the AWS SDK's default credential chain (environment,
    // profile files, web identity / IRSA, ECS and instance metadata).
    ("S3_ACCESS_KEY", None),
    ("S3_SECRET_KEY", None),
    ("S3_REGION", Some("us-east-1")),
    ("VECTOR_DIM", Some("384")),
    ("API_TOKENS", None),
    // Tokens that open only the read-only views (`/`, `/metrics`), e.g. for Prometheus.
    ("READ_TOKENS", None),
    ("MAX_BODY_BYTES", Some("104857600")),
    ("MAX_BLOB_BYTES", Some("67108864")),
    // PEM file of CA certificates trusted, beside the system's roots, by every store client
    // whose URL asks for TLS.
    ("TLS_CA_FILE", None),
    // Tuning knobs (not part of the contract; documented in the README).
    // Projector partitions per store (1..=1024); every process on one log should use the
    // same count (a new count takes over once no process of the old one holds a lease).
    ("PARTITIONS", Some("2")),
    ("BATCH_SIZE", Some("500")),
    // Events a rebuild reads per page of the log.
    ("REBUILD_PAGE_EVENTS", Some("5000")),
    ("IDLE_POLL_MS", Some("500")),
    // After a batch that was not full, a projector's next read waits until this long after
    // its previous one (0 = no wait): single commands are applied in fewer, larger batches.
    ("PROJECTOR_LINGER_MS", Some("50")),
    ("RETRY_BASE_MS", Some("50")),
    ("RETRY_MAX_MS", Some("10000")),
    // How often a process tries to take free projector partition leases (and pings the
    // connection holding its own): a dead owner's partitions move within about this long.
    ("LEASE_POLL_MS", Some("1000")),
    ("LOG_POOL_SIZE", Some("16")),
    // Group commit of plain appends: most commands per statement (1 = off), appender
    // tasks, and a group's byte budget (blobs, vectors, payloads).
    ("APPEND_GROUP", Some("32")),
    ("APPEND_GROUP_TASKS", Some("4")),
    ("APPEND_GROUP_BYTES", Some("8388608")),
    ("MAILBOX_CAPACITY", Some("64")),
    ("ACTOR_IDLE_SECS", Some("60")),
    ("MAX_LIVE_ACTORS", Some("100000")),
    ("MAX_CHUNKS", Some("10000")),
    // Largest NDJSON batch line; unset = MAX_BODY_BYTES (a line is a PUT body plus routing).
    ("MAX_BATCH_LINE_BYTES", None),
    // HTTP server limits (see HttpConfig).
    ("REQUEST_TIMEOUT_MS", Some("5000")),
    ("BODY_TIMEOUT_MS", Some("60000")),
    ("BODY_IDLE_TIMEOUT_MS", Some("15000")),
    ("KEEP_ALIVE_MS", Some("5000")),
    ("DISCONNECT_TIMEOUT_MS", Some("1000")),
    ("MAX_CONNECTIONS", Some("1024")),
    // HTTP worker threads; unset = the number of cores.
    ("HTTP_WORKERS", None),
    // Background verifier: seconds between sample runs (0 = off) and documents per run.
    ("VERIFY_INTERVAL_SECS", Some("300")),
    ("VERIFY_SAMPLE", Some("100")),
    // The log's life: idempotency keys are kept at least this long, and the compaction
    // pass that removes what is past its time runs this often in `serve` (0 = off).
    ("IDEMPOTENCY_TTL_SECS", Some("86400")),
    // Retention: each document's newest versions, and every version younger than the days,
    // keep their content; older ones keep their metadata. Resolved compensations are kept
    // the days too.
    ("RETAIN_VERSIONS", Some("3")),
    ("RETAIN_DAYS", Some("7")),
    ("COMPACT_INTERVAL_SECS", Some("3600")),
];

/// Every configuration key, without [`ENV_PREFIX`] (`LISTEN`, `EVENTSTORE_URL`, ...), in the
/// order of [`KEYS`]: what `tests/docs.rs` checks `docs/configuration.md` against.
pub fn keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|(key, _)| *key)
}

/// Longest projector linger, in milliseconds: a longer one would only hold changes back.
const MAX_LINGER_MS: u64 = 60_000;

/// The settings that may carry a secret: each can also come from a file named by
/// `DOCLEDGER_<KEY>_FILE` (a mounted Kubernetes or Docker secret).
const SECRET_KEYS: [&str; 9] = [
    "EVENTSTORE_URL",
    "MYSQL_URL",
    "MILVUS_URL",
    "MILVUS_TOKEN",
    "MILVUS_PASSWORD",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "API_TOKENS",
    "READ_TOKENS",
];

/// Most projector partitions per store (the lease lock's key holds the count in 10 bits).
pub const MAX_PARTITIONS: u32 = 1024;

/// A secret whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A URL whose password (if any) is hidden when printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(url::Url);

impl StoreUrl {
    /// The full URL, password included.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

/// Query parameters that carry credentials (`?password=…` is accepted by the PostgreSQL
/// and MySQL clients): hidden when a URL is printed.
fn is_secret_param(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut u = self.0.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        if u.query_pairs().any(|(k, _)| is_secret_param(&k)) {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret_param(&k) {
                        "***".into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        write!(f, "{u}")
    }
}

/// Projection tuning.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// Partitions per store.
    pub partitions: NonZeroU32,
    /// Most events of the log a projector reads per batch (of any partition and type).
    pub batch_size: usize,
    /// Events a rebuild reads per page of the log.
    pub rebuild_page_events: usize,
    /// Poll interval when no NOTIFY arrives.
    pub idle_poll: Duration,
    /// Least time between a projector's reads after a batch that was not full.
    pub linger: Duration,
    /// First backoff ceiling.
    pub retry_base: Duration,
    /// Largest backoff ceiling.
    pub retry_max: Duration,
    /// Interval of the partition lease loop.
    pub lease_poll: Duration,
}

/// Actor tuning.
#[derive(Debug, Clone)]
pub struct ActorConfig {
    /// Bounded mailbox of each document actor.
    pub mailbox_capacity: usize,
    /// An actor idle this long is passivated.
    pub idle_timeout: Duration,
    /// Most live actors; beyond it the idlest are passivated.
    pub max_live: usize,
}

/// Limits of the HTTP server: how long a client may take and how many may be connected.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Time allowed to receive a request's head (line and headers); then 408 and close.
    pub request_timeout: Duration,
    /// Time allowed to receive the whole body of a PUT or DELETE; then 408 and close.
    /// A batch streams for as long as its lines keep arriving and has no total deadline.
    pub body_timeout: Duration,
    /// Longest pause between two pieces of any request body, batches included; then 408
    /// (a batch: a last result line) and close.
    pub body_idle_timeout: Duration,
    /// An idle keep-alive connection is closed after this long; `None` = no keep-alive.
    pub keep_alive: Option<Duration>,
    /// Time a closing connection gets to shut down cleanly before it is dropped.
    pub disconnect_timeout: Duration,
    /// Most open connections of the process; beyond it new connections wait in the listen
    /// backlog until one closes. Enforced per worker as `max_connections / workers`.
    pub max_connections: usize,
    /// HTTP worker threads (at most `max_connections`).
    pub workers: usize,
}

impl HttpConfig {
    /// The connection limit of each worker: `max_connections / workers`, rounded down, so
    /// the process never holds more than `max_connections`.
    pub fn max_connections_per_worker(&self) -> usize {
        self.max_connections / self.workers
    }
}

/// Group commit of the log's plain appends (no idempotency key, no parked change to resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendGroupConfig {
    /// Most commands per group statement; 1 = no grouping.
    pub max_commands: usize,
    /// Appender tasks, each writing one group at a time on one pooled connection.
    pub tasks: usize,
    /// Bytes a group may carry; a larger command is a group of its own.
    pub max_bytes: usize,
}

impl Default for AppendGroupConfig {
    /// The defaults of [`KEYS`].
    fn default() -> Self {
        Config::defaults()
            .expect("the default configuration is valid")
            .append_group
    }
}

/// Background verifier tuning.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Time between sample runs; `None` = the background verifier is off.
    pub interval: Option<Duration>,
    /// Documents verified per run.
    pub sample: u32,
}

/// What the compaction pass removes from the log, and how often `serve` runs it.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// Idempotency keys are kept at least this long.
    pub idempotency_ttl: Duration,
    /// Versions younger than this keep their content; settled records (resolved
    /// compensations) are kept at least this long.
    pub retain: Duration,
    /// Each live document's newest versions that keep their content (at least 1).
    pub retain_versions: u64,
    /// Time between passes in `serve`; `None` = only `docledger compact` runs one.
    pub interval: Option<Duration>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// The log database.
    pub eventstore_url: StoreUrl,
    /// The MySQL catalogue.
    pub mysql_url: StoreUrl,
    /// Milvus.
    pub milvus_url: StoreUrl,
    /// Milvus collection.
    pub milvus_collection: String,
    /// Milvus authentication (`user:password` or an API key); `None` = none.
    pub milvus_token: Option<Secret>,
    /// Milvus database holding the collection; `None` = `default`.
    pub milvus_database: Option<String>,
    /// S3 endpoint.
    pub s3_endpoint: StoreUrl,
    /// Bucket.
    pub s3_bucket: String,
    /// Static keys, or the AWS SDK's default credential chain.
    pub s3_credentials: S3Credentials,
    /// Region.
    pub s3_region: String,
    /// Dimension of every vector.
    pub vector_dim: usize,
    /// Bearer tokens; empty = no authentication.
    pub api_tokens: Vec<Secret>,
    /// Tokens for the read-only views only (`/`, `/metrics`).
    pub read_tokens: Vec<Secret>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest blob.
    pub max_blob_bytes: usize,
    /// Most chunks per document.
    pub max_chunks: usize,
    /// Largest line of an NDJSON batch.
    pub max_batch_line_bytes: usize,
    /// HTTP server limits.
    pub http: HttpConfig,
    /// Connections to the log database.
    pub log_pool_size: usize,
    /// Group commit of plain appends.
    pub append_group: AppendGroupConfig,
    /// Projection tuning.
    pub projection: ProjectionConfig,
    /// Actor tuning.
    pub actors: ActorConfig,
    /// Background verifier tuning.
    pub verify: VerifyConfig,
    /// The log's compaction.
    pub compaction: CompactionConfig,
    /// What the store clients trust when their URL asks for TLS: the system's roots plus
    /// the certificates of `DOCLEDGER_TLS_CA_FILE`.
    pub tls: TlsTrust,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value does not parse.
    #[error("configuration key {key}: {message}")]
    Invalid {
        /// `DOCLEDGER_…` name.
        key: String,
        /// Why.
        message: String,
    },
    /// The file cannot be read or parsed.
    #[error("configuration file {path}: {message}")]
    File {
        /// Path.
        path: String,
        /// Why.
        message: String,
    },
}

struct Values(BTreeMap<&'static str, Option<String>>);

impl Values {
    fn raw(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.as_deref())
    }

    fn get<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let raw = self
            .raw(key)
            .ok_or_else(|| invalid(key, "is required".into()))?;
        parse(raw.trim()).map_err(|m| invalid(key, m))
    }

    fn num<T: std::str::FromStr>(&self, key: &'static str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.get(key, |s| {
            s.parse::<T>()
                .map_err(|e| format!("{s:?} is not a valid number: {e}"))
        })
    }

    fn url(&self, key: &'static str, schemes: &[&str]) -> Result<StoreUrl, ConfigError> {
        self.get(key, |s| {
            let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
            if !schemes.contains(&u.scheme()) {
                return Err(format!(
                    "scheme must be one of {schemes:?}, got {:?}",
                    u.scheme()
                ));
            }
            Ok(StoreUrl(u))
        })
    }

    fn name(&self, key: &'static str) -> Result<String, ConfigError> {
        self.get(key, |s| {
            let ok = !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if ok {
                Ok(s.to_owned())
            } else {
                Err(format!("{s:?} must be 1-63 characters of [A-Za-z0-9_.-]"))
            }
        })
    }
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: format!("{ENV_PREFIX}{key}"),
        message,
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `DOCLEDGER_*` entries of `env`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad key.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut values = Values(
            KEYS.iter()
                .map(|(k, d)| (*k, d.map(str::to_owned)))
                .collect(),
        );
        if let Some(path) = file {
            let file_err = |message: String| ConfigError::File {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
            for (k, v) in table {
                let upper = k.to_ascii_uppercase();
                let Some((key, _)) = KEYS.iter().find(|(key, _)| *key == upper) else {
                    return Err(file_err(format!("unknown key {k:?}")));
                };
                let s = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Array(a) => a
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                values.0.insert(key, Some(s));
            }
        }
        for (k, v) in env {
            let Some(suffix) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if suffix == "CONFIG" || suffix == "LOG" || suffix == "LOG_FORMAT" {
                continue; // read by main, not configuration keys
            }
            if is_service_link(suffix, v) {
                continue; // Kubernetes', for a Service named docledger(-…): not ours
            }
            let known = KEYS.iter().any(|(key, _)| *key == suffix);
            if let Some(secret) = suffix.strip_suffix("_FILE").filter(|_| !known) {
                let Some(key) = SECRET_KEYS.iter().find(|key| **key == secret) else {
                    return Err(invalid(
                        suffix,
                        format!(
                            "unknown variable (typo?); only secrets are read from files: {}",
                            SECRET_KEYS
                                .map(|k| format!("{ENV_PREFIX}{k}_FILE"))
                                .join(", ")
                        ),
                    ));
                };
                if env.contains_key(&format!("{ENV_PREFIX}{key}")) {
                    return Err(invalid(
                        suffix,
                        format!("set either {ENV_PREFIX}{key} or {ENV_PREFIX}{key}_FILE, not both"),
                    ));
                }
                let text = std::fs::read_to_string(v)
                    .map_err(|e| invalid(suffix, format!("cannot read {v:?}: {e}")))?;
                // A file written by a secret manager or `echo` ends with a newline.
                values
                    .0
                    .insert(key, Some(text.trim_end_matches(['\r', '\n']).to_owned()));
                continue;
            }
            let Some((key, _)) = KEYS.iter().find(|(key, _)| *key == suffix) else {
                return Err(invalid(suffix, "unknown variable (typo?)".into()));
            };
            values.0.insert(key, Some(v.clone()));
        }
        Self::from_values(&values)
    }

    fn from_values(v: &Values) -> Result<Config, ConfigError> {
        let positive = |key: &'static str| -> Result<usize, ConfigError> {
            let n: usize = v.num(key)?;
            if n == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
            Ok(n)
        };
        let tokens = |key: &'static str| -> Vec<Secret> {
            v.raw(key)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Secret(t.to_owned()))
                .collect()
        };
        let api_tokens = tokens("API_TOKENS");
        let read_tokens = tokens("READ_TOKENS");
        let vector_dim = positive("VECTOR_DIM")?;
        if vector_dim > 32_768 {
            return Err(invalid(
                "VECTOR_DIM",
                "must be at most 32768 (Milvus' limit)".into(),
            ));
        }
        let partitions = v.num::<u32>("PARTITIONS")?;
        let max_body_bytes = positive("MAX_BODY_BYTES")?;
        let millis = |key: &'static str| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(positive(key)? as u64))
        };
        let max_connections = positive("MAX_CONNECTIONS")?;
        let workers = match v.raw("HTTP_WORKERS") {
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
            Some(_) => positive("HTTP_WORKERS")?,
        };
        let http = HttpConfig {
            request_timeout: millis("REQUEST_TIMEOUT_MS")?,
            body_timeout: millis("BODY_TIMEOUT_MS")?,
            body_idle_timeout: millis("BODY_IDLE_TIMEOUT_MS")?,
            keep_alive: Some(v.num::<u64>("KEEP_ALIVE_MS")?)
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            disconnect_timeout: millis("DISCONNECT_TIMEOUT_MS")?,
            max_connections,
            // Fewer connections than workers: one connection per worker, never more in all.
            workers: workers.min(max_connections),
        };
        Ok(Config {
            listen: v.get("LISTEN", |s| {
                s.parse()
                    .map_err(|e| format!("{s:?} is not host:port: {e}"))
            })?,
            eventstore_url: v.url("EVENTSTORE_URL", &["postgres", "postgresql"])?,
            mysql_url: v.url("MYSQL_URL", &["mysql"])?,
            milvus_url: v.url("MILVUS_URL", &["http", "https"])?,
            milvus_collection: v.name("MILVUS_COLLECTION")?,
            milvus_token: milvus_token(v)?,
            milvus_database: match v.raw("MILVUS_DATABASE") {
                None => None,
                Some(_) => Some(v.name("MILVUS_DATABASE")?),
            },
            s3_endpoint: v.url("S3_ENDPOINT", &["http", "https"])?,
            s3_bucket: v.name("S3_BUCKET")?,
            s3_credentials: s3_credentials(v)?,
            s3_region: v.get("S3_REGION", |s| Ok(s.to_owned()))?,
            vector_dim,
            api_tokens,
            read_tokens,
            max_body_bytes,
            max_blob_bytes: positive("MAX_BLOB_BYTES")?,
            max_chunks: positive("MAX_CHUNKS")?,
            max_batch_line_bytes: match v.raw("MAX_BATCH_LINE_BYTES") {
                None => max_body_bytes,
                Some(_) => positive("MAX_BATCH_LINE_BYTES")?,
            },
            http,
            log_pool_size: positive("LOG_POOL_SIZE")?,
            append_group: AppendGroupConfig {
                max_commands: positive("APPEND_GROUP")?,
                tasks: positive("APPEND_GROUP_TASKS")?,
                max_bytes: positive("APPEND_GROUP_BYTES")?,
            },
            projection: ProjectionConfig {
                partitions: NonZeroU32::new(partitions)
                    .filter(|p| p.get() <= MAX_PARTITIONS)
                    .ok_or_else(|| {
                        invalid(
                            "PARTITIONS",
                            format!("must be between 1 and {MAX_PARTITIONS}"),
                        )
                    })?,
                batch_size: positive("BATCH_SIZE")?,
                rebuild_page_events: positive("REBUILD_PAGE_EVENTS")?,
                idle_poll: Duration::from_millis(positive("IDLE_POLL_MS")? as u64),
                linger: Duration::from_millis(match v.num::<u64>("PROJECTOR_LINGER_MS")? {
                    ms if ms > MAX_LINGER_MS => {
                        return Err(invalid(
                            "PROJECTOR_LINGER_MS",
                            format!("must be at most {MAX_LINGER_MS} (a minute)"),
                        ))
                    }
                    ms => ms,
                }),
                retry_base: Duration::from_millis(positive("RETRY_BASE_MS")? as u64),
                retry_max: Duration::from_millis(positive("RETRY_MAX_MS")? as u64),
                lease_poll: Duration::from_millis(positive("LEASE_POLL_MS")? as u64),
            },
            actors: ActorConfig {
                mailbox_capacity: positive("MAILBOX_CAPACITY")?,
                idle_timeout: Duration::from_secs(positive("ACTOR_IDLE_SECS")? as u64),
                max_live: positive("MAX_LIVE_ACTORS")?,
            },
            verify: VerifyConfig {
                interval: Some(v.num::<u64>("VERIFY_INTERVAL_SECS")?)
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
                sample: u32::try_from(positive("VERIFY_SAMPLE")?)
                    .map_err(|_| invalid("VERIFY_SAMPLE", "must fit 32 bits".into()))?,
            },
            compaction: CompactionConfig {
                idempotency_ttl: Duration::from_secs(positive("IDEMPOTENCY_TTL_SECS")? as u64),
                retain: Duration::from_secs(v.num::<u64>("RETAIN_DAYS")?.saturating_mul(86_400)),
                retain_versions: positive("RETAIN_VERSIONS")? as u64,
                interval: Some(v.num::<u64>("COMPACT_INTERVAL_SECS")?)
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs),
            },
            tls: match v.raw("TLS_CA_FILE").map(str::trim) {
                None | Some("") => TlsTrust::system(),
                Some(_) => v.get("TLS_CA_FILE", |s| TlsTrust::from_pem_file(Path::new(s)))?,
            },
        })
    }

    /// The configuration from defaults only.
    ///
    /// # Errors
    /// Never in practice (defaults are valid); kept fallible for symmetry with [`Config::load`].
    pub fn defaults() -> Result<Config, ConfigError> {
        Self::load(None, &HashMap::new())
    }
}

/// Whether `DOCLEDGER_{suffix}={value}` is one of the variables Kubernetes injects into every
/// pod of a namespace for a Service named `docledger` (or `docledger-…`): `SERVICE_HOST`,
/// `SERVICE_PORT[_NAME]`, `PORT=tcp://…` and `PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`, each
/// with the value Kubernetes gives it. Anything else, a misspelt key of ours included, is
/// not.
fn is_service_link(suffix: &str, value: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let protocol = |s: &str| matches!(s, "TCP" | "UDP" | "SCTP");
    let address = |s: &str| {
        s.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "tcp" | "udp" | "sctp")
                && rest
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && digits(port))
        })
    };
    let host = |s: &str| !s.is_empty() && !s.bytes().any(|b| b.is_ascii_whitespace());
    // The service's own name may add words: DOCLEDGER_METRICS_SERVICE_HOST.
    let name_words = |prefix: &str| {
        prefix.is_empty()
            || prefix.strip_suffix('_').is_some_and(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
    };
    let service_host = || {
        suffix
            .strip_suffix("SERVICE_HOST")
            .is_some_and(|prefix| name_words(prefix) && host(value))
    };
    let service_port = || {
        suffix
            .split_once("SERVICE_PORT")
            .is_some_and(|(prefix, port_name)| {
                name_words(prefix)
                    && (port_name.is_empty() || port_name.starts_with('_'))
                    && digits(value)
            })
    };
    let service_address = || {
        suffix
            .strip_suffix("PORT")
            .is_some_and(|prefix| name_words(prefix) && address(value))
    };
    let port_detail = || {
        let Some((prefix, rest)) = suffix.rsplit_once("PORT_") else {
            return false;
        };
        let mut parts = rest.split('_');
        let (Some(port), Some(proto)) = (parts.next(), parts.next()) else {
            return false;
        };
        name_words(prefix)
            && digits(port)
            && protocol(proto)
            && match (parts.next(), parts.next()) {
                (None, _) => address(value),
                (Some("PROTO"), None) => matches!(value, "tcp" | "udp" | "sctp"),
                (Some("PORT"), None) => digits(value),
                (Some("ADDR"), None) => host(value),
                _ => false,
            }
    };
    // PORT_8080_TCP_PORT ends in PORT too: every shape is tried.
    service_host() || service_port() || service_address() || port_detail()
}

impl Config {
    /// How the Milvus client reaches Milvus (URL, token, database, TLS trust).
    pub fn milvus_access(&self) -> MilvusAccess {
        MilvusAccess {
            url: self.milvus_url.expose().trim_end_matches('/').to_owned(),
            token: self.milvus_token.as_ref().map(|t| t.expose().to_owned()),
            database: self.milvus_database.clone(),
            trust: self.tls.clone(),
        }
    }
}

/// Milvus' token: `MILVUS_TOKEN`, or `MILVUS_USER` and `MILVUS_PASSWORD` joined as Milvus
/// expects (`user:password`); never both ways, never half a pair.
fn milvus_token(v: &Values) -> Result<Option<Secret>, ConfigError> {
    let set = |key| v.raw(key).filter(|s| !s.is_empty());
    match (
        set("MILVUS_TOKEN"),
        set("MILVUS_USER"),
        set("MILVUS_PASSWORD"),
    ) {
        (None, None, None) => Ok(None),
        (Some(token), None, None) => Ok(Some(Secret(token.to_owned()))),
        (Some(_), _, _) => Err(invalid(
            "MILVUS_TOKEN",
            "set either a token or DOCLEDGER_MILVUS_USER and DOCLEDGER_MILVUS_PASSWORD, not both"
                .into(),
        )),
        (None, Some(user), Some(password)) if !user.contains(':') => {
            Ok(Some(Secret(format!("{user}:{password}"))))
        }
        (None, Some(_), Some(_)) => Err(invalid("MILVUS_USER", "must not contain ':'".into())),
        (None, Some(_), None) => Err(invalid(
            "MILVUS_PASSWORD",
            "is required with DOCLEDGER_MILVUS_USER".into(),
        )),
        (None, None, Some(_)) => Err(invalid(
            "MILVUS_USER",
            "is required with DOCLEDGER_MILVUS_PASSWORD".into(),
        )),
    }
}

/// S3's credentials: both static keys, or neither (the AWS SDK's default chain).
fn s3_credentials(v: &Values) -> Result<S3Credentials, ConfigError> {
    let set = |key| v.raw(key).filter(|s| !s.is_empty());
    match (set("S3_ACCESS_KEY"), set("S3_SECRET_KEY")) {
        (Some(access_key), Some(secret_key)) => Ok(S3Credentials::Static {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        }),
        (None, None) => Ok(S3Credentials::DefaultChain),
        (Some(_), None) => Err(invalid(
            "S3_SECRET_KEY",
            "is required with DOCLEDGER_S3_ACCESS_KEY (or unset both for the AWS default credential chain)".into(),
        )),
        (None, Some(_)) => Err(invalid(
            "S3_ACCESS_KEY",
            "is required with DOCLEDGER_S3_SECRET_KEY (or unset both for the AWS default credential chain)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_named_by_their_file_variable() {
        let dir = std::env::temp_dir().join(format!("docledger-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write secret");
            path.to_string_lossy().into_owned()
        };
        let url = file("url", "postgres://app:s3cr%40t@db.example:5432/log\n");
        let key = file("key", "the-secret-key\r\n");
        let tokens = file("tokens", "t1,t2");
        let password = file("password", "pw:with:colons\n");
        let c = Config::load(
            None,
            &env(&[
                ("DOCLEDGER_EVENTSTORE_URL_FILE", &url),
                ("DOCLEDGER_S3_ACCESS_KEY", "ak"),
                ("DOCLEDGER_S3_SECRET_KEY_FILE", &key),
                ("DOCLEDGER_API_TOKENS_FILE", &tokens),
                ("DOCLEDGER_MILVUS_USER", "reader"),
                ("DOCLEDGER_MILVUS_PASSWORD_FILE", &password),
            ]),
        )
        .expect("secrets from files");
        assert_eq!(
            c.eventstore_url.expose(),
            "postgres://app:s3cr%40t@db.example:5432/log"
        );
        assert!(
            matches!(&c.s3_credentials, S3Credentials::Static { access_key, secret_key }
                if access_key == "ak" && secret_key == "the-secret-key"),
            "{:?}",
            c.s3_credentials
        );
        assert_eq!(c.api_tokens.len(), 2);
        assert_eq!(
            c.milvus_access().token.as_deref(),
            Some("reader:pw:with:colons")
        );
        for (vars, says) in [
            (
                vec![
                    ("DOCLEDGER_S3_SECRET_KEY", "x"),
                    ("DOCLEDGER_S3_SECRET_KEY_FILE", key.as_str()),
                ],
                "not both",
            ),
            (
                vec![("DOCLEDGER_S3_SECRET_KEY_FILE", "/nonexistent/secret")],
                "cannot read",
            ),
            (
                vec![("DOCLEDGER_PARTITIONS_FILE", key.as_str())],
                "only secrets",
            ),
        ] {
            let err = Config::load(None, &env(&vars))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(says), "{vars:?}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kubernetes_service_links_never_stop_the_service_but_typos_still_do() {
        let links = [
            ("DOCLEDGER_SERVICE_HOST", "10.96.12.7"),
            ("DOCLEDGER_SERVICE_PORT", "8080"),
            ("DOCLEDGER_SERVICE_PORT_HTTP", "8080"),
            ("DOCLEDGER_PORT", "tcp://10.96.12.7:8080"),
            ("DOCLEDGER_PORT_8080_TCP", "tcp://10.96.12.7:8080"),
            ("DOCLEDGER_PORT_8080_TCP_PROTO", "tcp"),
            ("DOCLEDGER_PORT_8080_TCP_PORT", "8080"),
            ("DOCLEDGER_PORT_8080_TCP_ADDR", "10.96.12.7"),
            ("DOCLEDGER_METRICS_SERVICE_HOST", "10.96.12.8"),
            ("DOCLEDGER_METRICS_PORT_9090_TCP", "tcp://10.96.12.8:9090"),
        ];
        let c = Config::load(None, &env(&links)).expect("service links are not ours");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080", "and change nothing");
        for (key, value) in [
            ("DOCLEDGER_PARTITONS", "4"),
            ("DOCLEDGER_PORT", "8080"),
            ("DOCLEDGER_SERVICE_PORT", "http"),
            ("DOCLEDGER_PORT_8080_TCP_PROTO", "http"),
            ("DOCLEDGER_PORT_8080_HTTP", "tcp://10.96.12.7:8080"),
            ("DOCLEDGER_SERVICE_HOSTS", "10.96.12.7"),
            ("DOCLEDGER_lower_SERVICE_HOST", "10.96.12.7"),
        ] {
            let mut vars = links.to_vec();
            vars.push((key, value));
            let err = Config::load(None, &env(&vars))
                .expect_err(&format!("{key}={value} is not a service link"));
            assert!(
                err.to_string()
                    .contains(key.trim_start_matches("DOCLEDGER_")),
                "{key}: {err}"
            );
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults().expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.eventstore_url.expose(),
            "postgres://postgres@127.0.0.1:5432/docledger"
        );
        assert_eq!(c.milvus_collection, "doc_chunks");
        assert_eq!(c.s3_bucket, "documents");
        assert!(matches!(c.s3_credentials, S3Credentials::DefaultChain));
        assert!(c.milvus_token.is_none() && c.milvus_database.is_none());
        assert_eq!(c.vector_dim, 384);
        assert!(c.api_tokens.is_empty());
        assert_eq!(c.max_body_bytes, 100 * 1024 * 1024);
        assert_eq!(c.max_blob_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn env_overrides_and_bad_values_name_the_key() {
        let c = Config::load(
            None,
            &env(&[
                ("DOCLEDGER_VECTOR_DIM", "8"),
                ("DOCLEDGER_API_TOKENS", "a, b,"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.vector_dim, 8);
        assert_eq!(c.api_tokens.len(), 2);
        assert_eq!(format!("{:?}", c.api_tokens), "[***, ***]");
        let empty = Config::load(None, &env(&[("DOCLEDGER_API_TOKENS", "")])).expect("valid");
        assert!(empty.api_tokens.is_empty());
        let err = Config::load(None, &env(&[("DOCLEDGER_VECTOR_DIM", "x")])).expect_err("invalid");
        assert!(err.to_string().contains("DOCLEDGER_VECTOR_DIM"), "{err}");
        let err = Config::load(None, &env(&[("DOCLEDGER_VECTR_DIM", "8")])).expect_err("typo");
        assert!(err.to_string().contains("DOCLEDGER_VECTR_DIM"), "{err}");
        let err = Config::load(None, &env(&[("DOCLEDGER_MYSQL_URL", "postgres://x")]))
            .expect_err("scheme");
        assert!(err.to_string().contains("DOCLEDGER_MYSQL_URL"), "{err}");
    }

    #[test]
    fn the_tls_ca_file_must_be_readable_and_hold_a_certificate() {
        let c = Config::defaults().expect("valid");
        assert_eq!(c.tls, TlsTrust::system());
        let dir = std::env::temp_dir().join(format!("docledger-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.pem");
        let err = Config::load(
            None,
            &env(&[("DOCLEDGER_TLS_CA_FILE", missing.to_str().expect("utf-8"))]),
        )
        .expect_err("unreadable");
        let text = err.to_string();
        assert!(
            text.contains("DOCLEDGER_TLS_CA_FILE") && text.contains("cannot read"),
            "{text}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = Config::load(
            None,
            &env(&[("DOCLEDGER_TLS_CA_FILE", empty.to_str().expect("utf-8"))]),
        )
        .expect_err("no certificate");
        let text = err.to_string();
        assert!(
            text.contains("DOCLEDGER_TLS_CA_FILE") && text.contains("no PEM CERTIFICATE"),
            "{text}"
        );
        let blank = Config::load(None, &env(&[("DOCLEDGER_TLS_CA_FILE", "")])).expect("unset");
        assert!(!blank.tls.has_extra());
    }

    #[test]
    fn the_projector_linger_is_50_ms_by_default_0_turns_it_off_and_a_minute_is_the_most() {
        let c = Config::defaults().expect("defaults are valid");
        assert_eq!(c.projection.linger, Duration::from_millis(50));
        let off = Config::load(None, &env(&[("DOCLEDGER_PROJECTOR_LINGER_MS", "0")]))
            .expect("0 is valid");
        assert_eq!(off.projection.linger, Duration::ZERO);
        let most = Config::load(None, &env(&[("DOCLEDGER_PROJECTOR_LINGER_MS", "60000")]))
            .expect("a minute is valid");
        assert_eq!(most.projection.linger, Duration::from_secs(60));
        for bad in ["60001", "18446744073709551615", "-1", "x"] {
            let err =
                Config::load(None, &env(&[("DOCLEDGER_PROJECTOR_LINGER_MS", bad)])).expect_err(bad);
            assert!(
                err.to_string().contains("DOCLEDGER_PROJECTOR_LINGER_MS"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn file_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("docledger-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "vector_dim = 16\ns3_bucket = \"from-file\"\n").expect("write");
        let c = Config::load(Some(&path), &env(&[("DOCLEDGER_VECTOR_DIM", "32")])).expect("valid");
        assert_eq!(c.vector_dim, 32);
        assert_eq!(c.s3_bucket, "from-file");
        std::fs::write(&path, "no_such_key = 1\n").expect("write");
        assert!(Config::load(Some(&path), &HashMap::new()).is_err());
    }

    #[test]
    fn http_limits_have_defaults_and_divide_connections_over_workers() {
        let c = Config::defaults().expect("defaults are valid");
        assert_eq!(c.http.request_timeout, Duration::from_secs(5));
        assert_eq!(c.http.body_timeout, Duration::from_secs(60));
        assert_eq!(c.http.body_idle_timeout, Duration::from_secs(15));
        assert_eq!(c.http.keep_alive, Some(Duration::from_secs(5)));
        assert_eq!(c.http.max_connections, 1024);
        assert_eq!(c.max_batch_line_bytes, c.max_body_bytes);
        let c = Config::load(
            None,
            &env(&[
                ("DOCLEDGER_MAX_CONNECTIONS", "10"),
                ("DOCLEDGER_HTTP_WORKERS", "4"),
                ("DOCLEDGER_KEEP_ALIVE_MS", "0"),
                ("DOCLEDGER_MAX_BODY_BYTES", "4096"),
            ]),
        )
        .expect("valid");
        assert_eq!(
            c.http.max_connections_per_worker(),
            2,
            "rounded down: 8 of 10"
        );
        assert_eq!(c.http.keep_alive, None);
        assert_eq!(c.max_batch_line_bytes, 4096, "follows the body limit");
        let c = Config::load(
            None,
            &env(&[
                ("DOCLEDGER_MAX_CONNECTIONS", "3"),
                ("DOCLEDGER_HTTP_WORKERS", "8"),
            ]),
        )
        .expect("valid");
        assert_eq!(
            (c.http.workers, c.http.max_connections_per_worker()),
            (3, 1),
            "never more connections than the limit"
        );
        for (key, value) in [
            ("DOCLEDGER_MAX_CONNECTIONS", "0"),
            ("DOCLEDGER_HTTP_WORKERS", "0"),
            ("DOCLEDGER_REQUEST_TIMEOUT_MS", "0"),
            ("DOCLEDGER_BODY_IDLE_TIMEOUT_MS", "x"),
            ("DOCLEDGER_MAX_BATCH_LINE_BYTES", "0"),
        ] {
            let err = Config::load(None, &env(&[(key, value)])).expect_err("invalid");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn passwords_are_hidden_when_printed() {
        let c = Config::load(
            None,
            &env(&[
                ("DOCLEDGER_MYSQL_URL", "mysql://root:hunter2@db:3306/x"),
                ("DOCLEDGER_S3_ACCESS_KEY", "ak"),
                ("DOCLEDGER_S3_SECRET_KEY", "hunter3"),
                ("DOCLEDGER_MILVUS_TOKEN", "root:hunter7"),
                (
                    "DOCLEDGER_EVENTSTORE_URL",
                    "postgres://db/log?user=me&password=hunter4&application_name=dl",
                ),
                ("DOCLEDGER_API_TOKENS", "hunter5,hunter6"),
            ]),
        )
        .expect("valid");
        let printed = format!("{c:?}");
        let access = format!("{:?}", c.milvus_access());
        assert!(!access.contains("hunter7"), "{access}");
        for secret in [
            "hunter2", "hunter3", "hunter4", "hunter5", "hunter6", "hunter7",
        ] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("application_name=dl") && printed.contains("user=me"),
            "other parameters stay readable: {printed}"
        );
    }

    #[test]
    fn milvus_and_s3_credentials_are_whole_or_refused() {
        let c = Config::load(
            None,
            &env(&[
                ("DOCLEDGER_MILVUS_TOKEN", "root:Milvus"),
                ("DOCLEDGER_MILVUS_DATABASE", "rag_prod"),
            ]),
        )
        .expect("token and database");
        let access = c.milvus_access();
        assert_eq!(access.token.as_deref(), Some("root:Milvus"));
        assert_eq!(access.database.as_deref(), Some("rag_prod"));
        for (vars, key, says) in [
            (
                vec![
                    ("DOCLEDGER_MILVUS_TOKEN", "t"),
                    ("DOCLEDGER_MILVUS_USER", "u"),
                    ("DOCLEDGER_MILVUS_PASSWORD", "p"),
                ],
                "DOCLEDGER_MILVUS_TOKEN",
                "not both",
            ),
            (
                vec![("DOCLEDGER_MILVUS_USER", "u")],
                "DOCLEDGER_MILVUS_PASSWORD",
                "required",
            ),
            (
                vec![("DOCLEDGER_MILVUS_PASSWORD", "p")],
                "DOCLEDGER_MILVUS_USER",
                "required",
            ),
            (
                vec![
                    ("DOCLEDGER_MILVUS_USER", "a:b"),
                    ("DOCLEDGER_MILVUS_PASSWORD", "p"),
                ],
                "DOCLEDGER_MILVUS_USER",
                "':'",
            ),
            (
                vec![("DOCLEDGER_MILVUS_DATABASE", "no spaces")],
                "DOCLEDGER_MILVUS_DATABASE",
                "characters",
            ),
            (
                vec![("DOCLEDGER_S3_ACCESS_KEY", "ak")],
                "DOCLEDGER_S3_SECRET_KEY",
                "default credential chain",
            ),
            (
                vec![("DOCLEDGER_S3_SECRET_KEY", "sk")],
                "DOCLEDGER_S3_ACCESS_KEY",
                "default credential chain",
            ),
        ] {
            let err = Config::load(None, &env(&vars))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(key) && err.contains(says), "{vars:?}: {err}");
        }
    }
}
