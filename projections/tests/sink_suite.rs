//! The sink conformance suite (`projections::testing::sink_suite`) against each real store:
//! MySQL/MariaDB, Milvus and S3, each on its own database, collection or bucket.

use projections::milvus::MilvusSink;
use projections::mysql::MysqlSink;
use projections::s3::S3Sink;
use projections::sink::Sink;
use projections::testing::{sink_suite, unique_name, StoreEnv};

const DIM: usize = 8;

#[tokio::test]
async fn mysql_passes_the_sink_suite() {
    let env = StoreEnv::require();
    let name = unique_name("suite_mysql");
    let sink = MysqlSink::new(&env.mysql_database_url(&name)).expect("mysql url");
    sink.prepare().await.expect("prepare database");
    sink_suite::run(&sink, "doc", DIM).await;
    let mut conn = sink.pool().get_conn().await.expect("mysql conn");
    mysql_async::prelude::Queryable::query_drop(&mut conn, format!("DROP DATABASE `{name}`"))
        .await
        .expect("drop database");
}

#[tokio::test]
async fn milvus_passes_the_sink_suite() {
    let env = StoreEnv::require();
    let sink = MilvusSink::connect(&env.milvus(), &unique_name("suite_milvus"), DIM)
        .await
        .expect("connect to milvus");
    sink.prepare().await.expect("prepare collection");
    sink_suite::run(&sink, "doc", DIM).await;
    sink.drop_collection().await.expect("drop collection");
}

#[tokio::test]
async fn s3_passes_the_sink_suite() {
    let env = StoreEnv::require();
    let sink = S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        &unique_name("suite_s3").replace('_', "-"),
    );
    sink.prepare().await.expect("prepare bucket");
    sink_suite::run(&sink, "doc", DIM).await;
    sink.drop_bucket().await.expect("drop bucket");
}
