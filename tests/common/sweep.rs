//! Removes what earlier test processes left in the shared stores: databases, Milvus
//! collections and S3 buckets named `t_<test>_<pid>_<hex>` (see `unique_name`) whose process
//! no longer runs. Keeps Embedded Milvus from accumulating loaded collections run after run.
//! Best effort: a failure here never fails a test.

use milvus::v2::prelude::*;
use mysql_async::prelude::*;
use projections::testing::StoreEnv;

/// The pid in a test resource name, if it is one.
fn owner_pid(name: &str, sep: char) -> Option<u32> {
    if !name.starts_with(&format!("t{sep}")) {
        return None;
    }
    let parts: Vec<&str> = name.split(sep).collect();
    (1..parts.len().saturating_sub(1))
        .rev()
        .find(|&i| {
            !parts[i].is_empty()
                && parts[i].bytes().all(|b| b.is_ascii_digit())
                && !parts[i + 1].is_empty()
                && parts[i + 1].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .and_then(|i| parts[i].parse().ok())
}

fn abandoned(name: &str, sep: char) -> bool {
    owner_pid(name, sep).is_some_and(|pid| {
        pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Sweeps every store once.
pub async fn sweep(env: &StoreEnv) {
    sweep_postgres(env).await;
    sweep_mysql(env).await;
    sweep_milvus(env).await;
    sweep_s3(env).await;
}

async fn sweep_postgres(env: &StoreEnv) {
    let Ok((client, conn)) = tokio_postgres::connect(&env.pg_url, tokio_postgres::NoTls).await
    else {
        return;
    };
    let task = tokio::spawn(conn);
    if let Ok(rows) = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'",
            &[],
        )
        .await
    {
        for name in rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|n| abandoned(n, '_'))
        {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
    drop(client);
    let _ = task.await;
}

async fn sweep_mysql(env: &StoreEnv) {
    let Ok(opts) = mysql_async::Opts::from_url(&env.mysql_url) else {
        return;
    };
    let Ok(mut conn) = mysql_async::Conn::new(opts).await else {
        return;
    };
    let names: Vec<String> = conn
        .query("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 't\\_%'")
        .await
        .unwrap_or_default();
    for name in names.iter().filter(|n| abandoned(n, '_')) {
        let _ = conn
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await;
    }
    let _ = conn.disconnect().await;
}

async fn sweep_milvus(env: &StoreEnv) {
    let config = env
        .milvus()
        .connect_config()
        .telemetry(TelemetryConfig::new().enabled(false));
    let Ok(client) = ClientV2::new(&config).await else {
        return;
    };
    let Ok(request) = ListCollectionsRequest::builder().build() else {
        return;
    };
    let Ok(list) = client.list_collections(request).await else {
        return;
    };
    for name in list.collection_names().iter().filter(|n| abandoned(n, '_')) {
        if let Ok(req) = DropCollectionRequest::builder()
            .collection_name(name.as_str())
            .build()
        {
            let _ = client.drop_collection(req).await;
        }
    }
}

async fn sweep_s3(env: &StoreEnv) {
    let s3 = env.s3_client();
    let Ok(buckets) = s3.list_buckets().send().await else {
        return;
    };
    for bucket in buckets
        .buckets()
        .iter()
        .filter_map(|b| b.name())
        .filter(|n| abandoned(n, '-'))
    {
        loop {
            let Ok(page) = s3.list_objects_v2().bucket(bucket).send().await else {
                break;
            };
            let keys: Vec<_> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(str::to_owned)
                .collect();
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let _ = s3.delete_object().bucket(bucket).key(key).send().await;
            }
        }
        let _ = s3.delete_bucket().bucket(bucket).send().await;
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn pids_are_read_from_test_names() {
        assert_eq!(owner_pid("t_e2e_put_replace_1234_a1b2c3", '_'), Some(1234));
        assert_eq!(owner_pid("t_api_1_5678_ff_shadow", '_'), Some(5678));
        assert_eq!(owner_pid("t-e2e-put-1234-a1b2c3", '-'), Some(1234));
        assert_eq!(owner_pid("documents", '-'), None);
        assert_eq!(owner_pid("doc_chunks", '_'), None);
    }
}
