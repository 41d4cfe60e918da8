//! `docledger-bench` (issue 7) against the real stores, where it must not mislead: a store
//! that refuses every write ends the run with that store's error, instead of a wait until the
//! 15-minute readiness timeout, prints no table, and leaves none of the run's databases,
//! collections or buckets behind; a finished run prints its table and leaves nothing either.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use projections::milvus::MilvusSink;
use projections::testing::{unique_name, StoreEnv};

/// The stores, and the settings of a bench run named after `test`.
fn service_vars(test: &str) -> (StoreEnv, HashMap<String, String>) {
    let env = StoreEnv::require();
    let vars = env.service_vars(&unique_name(test));
    (env, vars)
}

/// `docledger-bench` with exactly the DOCLEDGER_* settings `vars`, serving with the
/// `docledger` executable the workspace built beside it.
fn bench_command(vars: &HashMap<String, String>) -> tokio::process::Command {
    let exe = Path::new(env!("CARGO_BIN_EXE_docledger-bench"));
    let service = exe.with_file_name("docledger");
    assert!(
        service.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace) or cargo build --bin docledger",
        service.display()
    );
    let mut command = tokio::process::Command::new(exe);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCLEDGER_")) {
        command.env_remove(key);
    }
    command.envs(vars).arg("--bin").arg(service);
    command
}

const WRONG_SECRET: &str = "not-the-secret-key-of-this-store";

#[actix_rt::test]
async fn a_store_refusing_every_write_ends_the_bench_with_its_error() {
    let (env, mut vars) = service_vars("bench_stuck");
    vars.insert("DOCLEDGER_S3_SECRET_KEY".into(), WRONG_SECRET.into());
    // Without the watch the bench would wait for readiness for 15 minutes: a bound here
    // makes that a failure instead of a hung test.
    let (out, run) = run_bench(
        &vars,
        &[
            "--sequential-docs",
            "1",
            "--paced-docs",
            "0",
            "--stuck-after-secs",
            "3",
        ],
        Duration::from_secs(180),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the s3 projection has been retrying for 3s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("create bucket") && stderr.contains("403"),
        "the store's own refusal is given: {stderr}"
    );
    assert!(!stderr.contains(WRONG_SECRET), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no table: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The docledger scenario's log database, MySQL database and Milvus collection (created
    // before S3 failed) are dropped like those of a finished run.
    assert_nothing_left(&env, &run).await;
}

#[actix_rt::test]
async fn a_finished_bench_prints_its_table_and_leaves_nothing_behind() {
    let (env, vars) = service_vars("bench_small");
    let (out, run) = run_bench(
        &vars,
        &["--sequential-docs", "2", "--paced-docs", "2"],
        Duration::from_secs(300),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for row in [
        "| docledger (PUTs, vector_b64, 16 in flight) | 4 |",
        "| docledger (PUTs, vector_b64, paced at",
        "| dual-write coordinator, 1 writer(s) | 2 |",
        "| dual-write coordinator, 16 writer(s) | 4 |",
        "| ceiling: S3 parallel PUTs (32 in flight) | 4 |",
        "docledger / dual-write x16: ",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
    // Each scenario's stores are dropped once it is measured; none is left at the end.
    assert_nothing_left(&env, &run).await;
}

#[actix_rt::test]
async fn the_log_size_mode_compacts_each_version_and_leaves_nothing_behind() {
    let (env, vars) = service_vars("bench_log_size");
    let (out, run) = run_bench(
        &vars,
        &[
            "--log-size",
            "--versions",
            "4",
            "--retain-versions",
            "1",
            "--batch-lines",
            "2",
        ],
        Duration::from_secs(300),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for line in [
        "log size: 4 documents x 4 versions (",
        "DOCLEDGER_RETAIN_VERSIONS=1, DOCLEDGER_RETAIN_DAYS=0",
        // Version 1: 3 events holding content a document, 1 blob each.
        "| S1: version 1, VACUUM (ANALYZE) |",
        "| 12 / 0 | 4 |",
        // After 4 versions only the newest keeps its content; the 3 before keep metadata,
        // every pass's removed events of a document folded into the document's one row.
        "| 12 / 4 | 4 |",
        "S_full / S1: ",
        "compactor: 3 passes in ",
        "content of 36 events removed",
        "12 documents compacted",
        "12 blobs deleted",
        "floor with 1 version of content (S_full): ",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert_nothing_left(&env, &run).await;
}

/// Runs `docledger-bench` on 4 documents of 8 dimensions with `args`, no settling between
/// scenarios, bounded by `timeout`; returns its output and the prefix of its resources' names.
async fn run_bench(
    vars: &HashMap<String, String>,
    args: &[&str],
    timeout: Duration,
) -> (std::process::Output, String) {
    let child = bench_command(vars)
        .args(["--docs", "4", "--dim", "8", "--settle-secs", "0"])
        .args(args)
        .env("DOCLEDGER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("docledger bench starts");
    let run = format!("bench_{}_", child.id().expect("pid"));
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .expect("the bench ends by itself in time")
        .expect("docledger bench ends");
    (out, run)
}

/// No log database, MySQL database, Milvus collection or bucket whose name starts with
/// `run`.
async fn assert_nothing_left(env: &StoreEnv, run: &str) {
    let (pg, connection) = tokio_postgres::connect(&env.pg_url, tokio_postgres::NoTls)
        .await
        .expect("postgres");
    tokio::spawn(connection);
    let left = pg
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&run],
        )
        .await
        .expect("databases");
    assert!(left.is_empty(), "log databases of the run are left");
    let mut mysql = mysql_async::Conn::from_url(env.mysql_url.as_str())
        .await
        .expect("mysql");
    let left: Vec<String> = mysql
        .exec(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?",
            (format!("{run}%"),),
        )
        .await
        .expect("schemata");
    assert!(
        left.is_empty(),
        "MySQL databases of the run are left: {left:?}"
    );
    let milvus = MilvusSink::connect(&env.milvus(), "bench_stuck_probe", 8)
        .await
        .expect("milvus");
    let left: Vec<String> = milvus
        .list_collections()
        .await
        .expect("collections")
        .into_iter()
        .filter(|c| c.starts_with(run))
        .collect();
    assert!(left.is_empty(), "collections of the run are left: {left:?}");
    let bucket_prefix = run.replace('_', "-");
    let left: Vec<String> = env
        .s3_client()
        .list_buckets()
        .send()
        .await
        .expect("buckets")
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .filter(|b| b.starts_with(&bucket_prefix))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "buckets of the run are left: {left:?}");
}
