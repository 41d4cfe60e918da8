//! Graceful shutdown of the real binary: on SIGTERM in-flight commands complete, projectors
//! finish their batch and checkpoint, and the process exits 0 within a bounded time; after a
//! restart every acknowledged put is there and the stores match the log. A stop ends the HTTP
//! workers' runtimes first: the log's pooled connections must not end with them.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, store_url, TestLog, TestService};
use docledger::eventlog::PgLog;
use docledger::stores::Stores;
use projections::mysql::MysqlSink;
use projections::testing::StoreEnv;
use projections::Sink;
use serde_json::{json, Value};

#[actix_rt::test]
async fn sigterm_drains_requests_and_exits_cleanly() {
    // Create the test's databases, collection and bucket with an in-process service first.
    let svc = TestService::start("shutdown_sigterm", &[]).await;
    let vars = svc.vars.clone();
    let config = svc.config.clone();
    svc.stop().await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"))
        .arg("serve")
        .env_remove("DOCLEDGER_CONFIG")
        .envs(&vars)
        .env("DOCLEDGER_LISTEN", format!("127.0.0.1:{port}"))
        .env("DOCLEDGER_LOG", "warn")
        .env_remove("MIMALLOC_ALLOW_THP")
        .kill_on_drop(true)
        .spawn()
        .expect("docledger serve starts");
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(60),
        "the binary to become ready",
        || {
            let (http, url) = (http.clone(), format!("{base}/readyz"));
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        },
    )
    .await;
    // The binary turns transparent huge pages off for itself (see
    // docledger::tune_allocator).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().expect("pid")))
        .expect("the process's status");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "transparent huge pages are off in the serving process: {status}"
    );

    let puts: Vec<_> = (0..40)
        .map(|i| {
            let req = http
                .put(format!("{base}/v1/documents/shutdown%2F{i}?consistency=applied&timeout_ms=20000"))
                .json(&json!({"title": format!("t{i}"), "source_type": "s", "chunks": [{"text": "x", "vector": vec![0.3f32; 8]}]}));
            tokio::spawn(async move {
                match req.send().await {
                    Ok(res) => Some((res.status().as_u16(), res.json::<Value>().await.ok())),
                    Err(_) => None, // refused or cut: not acknowledged
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = child.id().expect("pid").to_string();
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(45), child.wait())
        .await
        .expect("the process exits within 45 s of SIGTERM")
        .expect("wait");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    println!("exited {:.2}s after SIGTERM", sent.elapsed().as_secs_f64());

    let mut acknowledged = Vec::new();
    for (i, put) in puts.into_iter().enumerate() {
        if let Some((code, body)) = put.await.expect("task") {
            assert!(matches!(code, 200 | 202 | 503), "put {i}: {code} {body:?}");
            if code == 200 || code == 202 {
                acknowledged.push(i);
            }
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "some puts completed before or during the drain"
    );

    // After a restart every acknowledged put is in the log and the stores match it.
    let svc = TestService::start_again(config.clone()).await;
    for i in &acknowledged {
        let got: Value = http
            .get(svc.doc_url(&format!("shutdown/{i}"), ""))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(got["version"], 1, "acknowledged put {i} is durable");
    }
    eventually(
        Duration::from_secs(60),
        "the stores to match the log",
        || {
            let config = config.clone();
            async move {
                let outcome = docledger::cli::verify::run(&config, false).await.ok()?;
                outcome.matches().then_some(())
            }
        },
    )
    .await;
    svc.stop().await;
}

/// A pooled connection to the log outlives the runtime that opened it. A graceful stop ends
/// the HTTP workers' runtimes while a rebuild, the projectors and the compactor still use the
/// pool; a connection driven by a worker's runtime closed under whoever held it then, and a
/// rebuild polling its pause through it ended `failed` ("count paused partitions failed:
/// connection closed"; seen in a rolling deploy of `scale_out_faults`).
#[tokio::test]
async fn a_pooled_log_connection_outlives_the_runtime_that_opened_it() {
    let test = TestLog::create("pool_home", 1).await.expect("log");
    let url = store_url(&StoreEnv::require().pg_database_url(&test.database)).expect("url");
    // Another runtime, on a thread of its own, opens the pool's only connection, then ends
    // when told to, as an HTTP worker's runtime does when the server stops.
    let (log_tx, log_rx) = tokio::sync::oneshot::channel::<PgLog>();
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = WorkerRuntime::run(async move {
        let log = PgLog::connect(&url, 1)
            .await
            .expect("connect on the worker");
        log.client()
            .await
            .expect("the worker's connection")
            .simple_query("SELECT 1")
            .await
            .expect("used on the worker");
        log_tx.send(log).expect("hand the log over");
        let _ = end_rx.await;
    });
    let log = log_rx.await.expect("the worker's log");
    // This runtime holds the connection the worker opened (a pool of one) and queries
    // through it while the worker's runtime ends.
    let client = log.client().await.expect("the pooled connection");
    let query = client.query_one("SELECT 42::int4 FROM pg_sleep(1)", &[]);
    let end_worker = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        end_tx.send(()).expect("tell the worker to end");
        worker.ended().await;
    };
    let (answer, ()) = tokio::join!(query, end_worker);
    let answer = answer.expect("the query outlives the runtime that opened its connection");
    assert_eq!(answer.get::<_, i32>(0), 42);
    drop(client);
    let again = log.client().await.expect("the pool after the worker ended");
    again.simple_query("SELECT 1").await.expect("usable");
    drop((again, log));
    test.drop_database().await.expect("drop database");
}

/// The service's catalogue client outlives the runtime of its first request. mysql_async
/// starts a pool's background work at the pool's first request, on that request's runtime,
/// and once that runtime ends the pool answers "Pool was disconnected" for good. A process
/// owning no MySQL partition makes its first catalogue request from an HTTP worker
/// (`?verify=true`): at the next graceful stop, a rebuild still running there lost its
/// catalogue.
#[actix_rt::test]
async fn the_catalogue_client_outlives_the_runtime_of_its_first_request() {
    let svc = TestService::start("pool_mysql_home", &[]).await;
    // The catalogue exists (made through a sink of its own, whose pool is not under test).
    MysqlSink::new(&svc.vars["DOCLEDGER_MYSQL_URL"])
        .expect("setup sink")
        .prepare()
        .await
        .expect("catalogue");
    let stores = Stores::connect(&svc.config).await.expect("store clients");
    let mysql = stores.mysql.clone();
    WorkerRuntime::run(async move {
        let row = mysql.row("absent").await.expect("the first request");
        assert!(row.is_none(), "{row:?}");
    })
    .ended()
    .await;
    let row = stores
        .mysql
        .row("absent")
        .await
        .expect("the catalogue after the first request's runtime ended");
    assert!(row.is_none(), "{row:?}");
    svc.stop().await;
}

/// The service's vector client outlives the runtime of its first request. The Milvus client
/// is made at the sink's first request; its channel's background tasks run on the runtime
/// that made it, and once that runtime ends every request fails, for good. A process owning
/// no Milvus partition makes its first request from an HTTP worker (`?verify=true`).
#[actix_rt::test]
async fn the_vector_client_outlives_the_runtime_of_its_first_request() {
    let svc = TestService::start("pool_milvus_home", &[]).await;
    let stores = Stores::connect(&svc.config).await.expect("store clients");
    let milvus = stores.milvus.clone();
    WorkerRuntime::run(async move {
        milvus.exists().await.expect("the first request");
    })
    .ended()
    .await;
    stores
        .milvus
        .exists()
        .await
        .expect("Milvus after the first request's runtime ended");
    svc.stop().await;
}

/// A runtime on a thread of its own, running one piece of work; it ends when the work does,
/// as an HTTP worker's runtime ends when the server stops.
struct WorkerRuntime(std::thread::JoinHandle<()>);

impl WorkerRuntime {
    fn run(work: impl std::future::Future<Output = ()> + Send + 'static) -> WorkerRuntime {
        WorkerRuntime(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("worker runtime");
            runtime.block_on(work);
        }))
    }

    /// Returns once the runtime has ended, without blocking the caller's runtime.
    async fn ended(self) {
        tokio::task::spawn_blocking(move || self.0.join().expect("worker thread"))
            .await
            .expect("join");
    }
}
