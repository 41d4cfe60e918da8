//! Starts `docledger::serve` in-process on 127.0.0.1:0 against the real stores, with its own
//! log database, MySQL database, Milvus collection and S3 bucket named after the test.

#![allow(dead_code)] // reason: each test binary uses a different subset of these helpers

pub mod cluster;
pub mod dumps;
pub mod mariadb;
pub mod pki;
pub mod proxy;

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub mod log;
pub mod sweep;

#[allow(unused_imports)] // reason: only the log tests use these
pub use log::*;

use docledger::config::Config;
use projections::testing::{unique_name, StoreEnv};
use tokio_util::sync::CancellationToken;

/// A running service and where its stores are.
pub struct TestService {
    pub addr: SocketAddr,
    pub config: Config,
    pub env: StoreEnv,
    pub name: String,
    /// The DOCLEDGER_* settings the service runs with (to run the CLI against its stores).
    pub vars: HashMap<String, String>,
    shutdown: CancellationToken,
    handle: Option<actix_rt::task::JoinHandle<Result<(), docledger::ServeError>>>,
}

/// What a service's log holds ([`TestService::log_contents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogContents {
    /// Events of each document.
    pub events_per_stream: std::collections::BTreeMap<String, i64>,
    /// Stored idempotency keys.
    pub idempotency_keys: i64,
    /// Stored blobs.
    pub blobs: i64,
}

/// Waits until `probe` returns Some, polling; panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sample of a `/metrics` exposition: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct MetricSample {
    /// The series name (`…_total`, `…_bucket`, … included).
    pub name: String,
    /// What is between the braces (empty without labels).
    pub labels: String,
    /// The value.
    pub value: f64,
}

/// The samples of a `/metrics` answer (comments and `# EOF` left out).
pub fn metric_samples(text: &str) -> Vec<MetricSample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            MetricSample {
                name: name.to_owned(),
                labels: labels.to_owned(),
                value: value.parse().unwrap_or_else(|_| panic!("a number: {line}")),
            }
        })
        .collect()
}

/// Every histogram series of `samples` is one: cumulative buckets that never decrease, and
/// a `+Inf` bucket equal to its `_count`.
pub fn assert_histograms_consistent(samples: &[MetricSample]) {
    let mut checked = 0;
    for count in samples.iter().filter(|s| s.name.ends_with("_count")) {
        let family = count.name.trim_end_matches("_count");
        let buckets: Vec<&MetricSample> = samples
            .iter()
            .filter(|s| {
                // The bucket's labels are the series' plus `le`, wherever it stands.
                let series: Vec<&str> = s
                    .labels
                    .split(',')
                    .filter(|l| !l.starts_with("le="))
                    .collect();
                s.name == format!("{family}_bucket") && series.join(",") == count.labels
            })
            .collect();
        if buckets.is_empty() {
            continue;
        }
        let values: Vec<f64> = buckets.iter().map(|b| b.value).collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{family}{{{}}}: buckets decrease: {values:?}",
            count.labels
        );
        let inf = buckets
            .iter()
            .find(|b| b.labels.contains("le=\"+Inf\""))
            .unwrap_or_else(|| panic!("{family}{{{}}}: no +Inf bucket", count.labels));
        assert_eq!(inf.value, count.value, "{family}{{{}}}", count.labels);
        checked += 1;
    }
    assert!(checked > 0, "no histogram in the exposition");
}

/// POSTs the NDJSON `body` to `url` (a batch endpoint) and returns its result lines.
pub async fn batch_results(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> Vec<serde_json::Value> {
    let answer = http
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("batch")
        .text()
        .await
        .expect("text");
    answer
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {answer}")))
        .collect()
}

/// A Milvus client of this machine's Milvus (its token included), telemetry off.
pub async fn milvus_client(env: &StoreEnv) -> milvus::v2::prelude::ClientV2 {
    let config = env
        .milvus()
        .connect_config()
        .telemetry(milvus::v2::prelude::TelemetryConfig::new().enabled(false));
    milvus::v2::prelude::ClientV2::new(&config)
        .await
        .expect("milvus connects")
}

/// The DOCLEDGER_* settings of a service for test `test` (its own log database, MySQL
/// database, collection and bucket, named after the test), with `extra` on top; also where
/// the stores are and the name. For tests that run the binary themselves.
pub fn service_vars(
    test: &str,
    extra: &[(&str, &str)],
) -> (StoreEnv, String, HashMap<String, String>) {
    let env = StoreEnv::require();
    let name = unique_name(test);
    let mut vars = env.service_vars(&name);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    (env, name, vars)
}

/// The `docledger` binary with exactly the DOCLEDGER_* settings `vars` (the caller's own
/// DOCLEDGER_* variables removed: an unknown one is an error).
pub fn docledger_command(vars: &HashMap<String, String>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCLEDGER_")) {
        command.env_remove(key);
    }
    command.envs(vars);
    command
}

/// Starts `docledger serve` (the binary) with `vars`, listening on `listen`, its output
/// appended to `log`; killed when dropped.
pub fn spawn_serve(
    vars: &HashMap<String, String>,
    listen: &str,
    log: &std::path::Path,
) -> tokio::process::Child {
    spawn_serve_logged(vars, listen, log, "warn", &[])
}

/// Like [`spawn_serve`], with the tracing filter `level` and `global_args` before `serve`
/// (`--log-format json`, say).
pub fn spawn_serve_logged(
    vars: &HashMap<String, String>,
    listen: &str,
    log: &std::path::Path,
    level: &str,
    global_args: &[&str],
) -> tokio::process::Child {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("server log file")
    };
    docledger_command(vars)
        .args(global_args)
        .arg("serve")
        .env("DOCLEDGER_LISTEN", listen)
        .env("DOCLEDGER_LOG", level)
        .stdout(std::process::Stdio::from(open()))
        .stderr(std::process::Stdio::from(open()))
        .kill_on_drop(true)
        .spawn()
        .expect("docledger serve starts")
}

/// Waits until every store's projectors of the service at `base` (`http://host:port`) run
/// with no projection lag, as `/v1/projections` shows them.
pub async fn projections_caught_up(http: &reqwest::Client, base: &str, timeout: Duration) {
    eventually(timeout, "every projection to catch up", || {
        let url = format!("{base}/v1/projections");
        async move {
            let p: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            p.as_array()?
                .iter()
                .all(|s| s["lag_events"] == 0 && s["state"] == "running")
                .then_some(())
        }
    })
    .await;
}

/// Waits until `GET url` (a document) answers a body for which `done` holds, and returns it;
/// panics with `what` after `timeout`.
pub async fn until_document(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(timeout, what, || async {
        let got: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
        done(&got).then_some(got)
    })
    .await
}

/// Waits until the service at `base` answers `/readyz` (panics with its log after 60 s).
pub async fn wait_ready(http: &reqwest::Client, base: &str, log: &std::path::Path) {
    let url = format!("{base}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "docledger serve did not become ready; its log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl TestService {
    /// Starts a service for test `test`, with `extra` DOCLEDGER_* settings.
    pub async fn start(test: &str, extra: &[(&str, &str)]) -> TestService {
        Self::start_rewritten(test, extra, |_| {}).await
    }

    /// Like [`TestService::start`], with `rewrite` applied to the DOCLEDGER_* settings last
    /// (to route a store's URL through a fault proxy, say).
    pub async fn start_rewritten(
        test: &str,
        extra: &[(&str, &str)],
        rewrite: impl FnOnce(&mut HashMap<String, String>),
    ) -> TestService {
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        SWEPT
            .get_or_init(|| async { sweep::sweep(&StoreEnv::require()).await })
            .await;
        let (env, name, mut vars) = service_vars(test, extra);
        rewrite(&mut vars);
        let config = Config::load(None, &vars).expect("test configuration is valid");
        Self::start_with(config, env, name, vars).await
    }

    /// Stops the service and starts a new one on the same databases, collection and bucket
    /// (a process restart).
    pub async fn restart(self) -> TestService {
        let (config, env, name, vars) = (
            self.config.clone(),
            self.env.clone(),
            self.name.clone(),
            self.vars.clone(),
        );
        self.stop().await;
        Self::start_with(config, env, name, vars).await
    }

    /// Starts a service with the configuration of one that was stopped (same databases,
    /// collection and bucket).
    pub async fn start_again(config: Config) -> TestService {
        let name = config.milvus_collection.clone();
        Self::start_with(config, StoreEnv::require(), name, HashMap::new()).await
    }

    async fn start_with(
        config: Config,
        env: StoreEnv,
        name: String,
        vars: HashMap<String, String>,
    ) -> TestService {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = actix_rt::spawn(docledger::serve(config.clone(), listener, shutdown.clone()));
        let service = TestService {
            addr,
            config,
            env,
            name,
            vars,
            shutdown,
            handle: Some(handle),
        };
        let client = reqwest::Client::new();
        let url = service.url("/readyz");
        eventually(
            Duration::from_secs(60),
            "the service to become ready",
            || {
                let client = client.clone();
                let url = url.clone();
                async move {
                    client
                        .get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
        service
    }

    /// What the log holds: events per stream, and the numbers of idempotency keys and
    /// blobs (to prove a refused request appended nothing).
    pub async fn log_contents(&self) -> LogContents {
        let client = log::connect(self.config.eventstore_url.expose())
            .await
            .expect("connect to the log");
        let events_per_stream = client
            .query(
                "SELECT stream_id, count(*) FROM events GROUP BY stream_id",
                &[],
            )
            .await
            .expect("read the log")
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        let counts = client
            .query_one(
                "SELECT (SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM blobs)",
                &[],
            )
            .await
            .expect("read the log");
        LogContents {
            events_per_stream,
            idempotency_keys: counts.get(0),
            blobs: counts.get(1),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// URL of a document, its id percent-encoded as one path segment.
    pub fn doc_url(&self, doc_id: &str, rest: &str) -> String {
        let enc = percent_encoding::utf8_percent_encode(doc_id, percent_encoding::NON_ALPHANUMERIC);
        self.url(&format!("/v1/documents/{enc}{rest}"))
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("serve task").expect("serve ends cleanly");
        }
    }
}

/// Sends `req`; its status and its body as JSON (or as a string when it is not JSON).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}
