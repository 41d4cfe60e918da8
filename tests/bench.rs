//! `docledger bench` (issue 7) against the real stores, where it must not mislead: a store
//! that refuses every write ends the run with that store's error, instead of a wait until the
//! 15-minute readiness timeout, prints no table, and leaves none of the run's databases or
//! collections behind.

mod common;

use std::time::Duration;

use common::{docledger_command, service_vars};
use mysql_async::prelude::Queryable;
use projections::milvus::MilvusSink;

const WRONG_SECRET: &str = "not-the-secret-key-of-this-store";

#[actix_rt::test]
async fn a_store_refusing_every_write_ends_the_bench_with_its_error() {
    let (env, _, mut vars) = service_vars("bench_stuck", &[]);
    vars.insert("DOCLEDGER_S3_SECRET_KEY".into(), WRONG_SECRET.into());
    let child = docledger_command(&vars)
        .args([
            "bench",
            "--docs",
            "4",
            "--sequential-docs",
            "1",
            "--paced-docs",
            "0",
            "--dim",
            "8",
            "--stuck-after-secs",
            "3",
            "--settle-secs",
            "0",
        ])
        .env("DOCLEDGER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("docledger bench starts");
    let run = format!("bench_{}_", child.id().expect("pid"));
    // Without the watch the bench would wait for readiness for 15 minutes: a bound here
    // makes that a failure instead of a hung test.
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the bench gives up on the stuck store by itself")
        .expect("docledger bench ends");
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
    let pg = common::log::connect(&env.pg_url).await.expect("postgres");
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
    let milvus = MilvusSink::connect(&env.milvus_uri, "bench_stuck_probe", 8)
        .await
        .expect("milvus");
    let left: Vec<String> = milvus
        .list_collections()
        .await
        .expect("collections")
        .into_iter()
        .filter(|c| c.starts_with(&run))
        .collect();
    assert!(left.is_empty(), "collections of the run are left: {left:?}");
}
