//! Everything a store holds, read with the stores' own tools or raw clients, for tests that
//! must show what is (or is not) anywhere: a full `pg_dump` of the log database, a
//! `mariadb-dump` of the catalogue, every Milvus row and every S3 object.

use std::collections::HashMap;

use milvus::v2::prelude::*;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// How often `needle` (or its bytes in hex, as a dump shows `bytea`) occurs in `haystack`.
pub fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count() + haystack.matches(&hex(needle)).count()
}

/// The log database's full dump.
pub async fn pg_dump(vars: &HashMap<String, String>) -> String {
    let out = tokio::process::Command::new("pg_dump")
        .arg("--dbname")
        .arg(&vars["DOCLEDGER_EVENTSTORE_URL"])
        .output()
        .await
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The catalogue database's full dump (`mysql://user@host:port/db`).
pub async fn mysql_dump(vars: &HashMap<String, String>) -> String {
    let url = &vars["DOCLEDGER_MYSQL_URL"];
    let rest = url.trim_start_matches("mysql://");
    let (auth, rest) = rest.split_once('@').expect("user@host");
    let (hostport, db) = rest.split_once('/').expect("host/db");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let mut command = tokio::process::Command::new("mariadb-dump");
    command.args(["-h", host, "-P", port, "-u", user, "--hex-blob"]);
    if !password.is_empty() {
        command.arg(format!("-p{password}"));
    }
    let out = command
        .arg(db.split('?').next().unwrap_or(db))
        .output()
        .await
        .expect("mariadb-dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every row of the collection, `doc_id text` per line, sorted.
pub async fn milvus_rows(
    vars: &HashMap<String, String>,
    env: &projections::testing::StoreEnv,
) -> String {
    let milvus = super::milvus_client(env).await;
    let q = milvus
        .query(
            QueryRequest::builder()
                .collection_name(vars["DOCLEDGER_MILVUS_COLLECTION"].as_str())
                .filter("chunk_index >= 0")
                .output_fields(["doc_id", "text"])
                .limit(16_384)
                .consistency_level(ConsistencyLevel::Strong)
                .build()
                .expect("query request"),
        )
        .await
        .expect("milvus query");
    let mut rows: Vec<String> = q
        .results()
        .rows()
        .expect("rows")
        .map(|r| {
            format!(
                "{} {}\n",
                r.get_str("doc_id").expect("doc_id"),
                r.get_str("text").expect("text")
            )
        })
        .collect();
    rows.sort_unstable();
    rows.concat()
}

/// Every object of the bucket: its key, metadata (sorted) and bytes, one per line.
pub async fn s3_objects(
    vars: &HashMap<String, String>,
    env: &projections::testing::StoreEnv,
) -> String {
    let s3 = env.s3_client();
    let bucket = &vars["DOCLEDGER_S3_BUCKET"];
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .max_keys(1000)
        .send()
        .await
        .expect("list objects");
    let mut out = String::new();
    for object in listed.contents() {
        let key = object.key().expect("key");
        let got = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("get object");
        let meta: std::collections::BTreeMap<String, String> =
            got.metadata().cloned().into_iter().flatten().collect();
        let bytes = got.body.collect().await.expect("body").into_bytes();
        out.push_str(&format!(
            "{key} {meta:?} {}\n",
            String::from_utf8_lossy(&bytes)
        ));
    }
    out
}
