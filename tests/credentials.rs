//! Store credentials as a production deployment gives them (issue 27, point 3), against the
//! real stores and real `serve` processes:
//! - Milvus with authentication on (as `scripts/stores.sh up` runs it): a user and password
//!   read from a secret file, in a database of its own; a wrong password is an environment
//!   fault, shown as `retrying`, never a reason to withdraw a document, and once the right
//!   password is configured every accepted document arrives.
//! - S3 without static keys: the AWS SDK's default credential chain, here a shared profile
//!   file (the chain's other links, web identity and instance metadata, need AWS itself);
//!   wrong keys and no keys at all are `retrying`, nothing parked.

mod common;

use std::time::Duration;

use common::cluster::{projections_at, Cluster};
use common::{eventually, until_document};
use milvus::v2::prelude::{
    ClientV2, CreateDatabaseRequest, DropCollectionRequest, DropDatabaseRequest,
    HasCollectionRequest, TelemetryConfig,
};
use projections::s3::S3Sink;
use projections::testing::StoreEnv;
use serde_json::{json, Value};

const DIM: usize = 8;

fn body(title: &str) -> Value {
    json!({
        "title": title,
        "source_type": "credentials-test",
        "chunks": [{"text": format!("{title} chunk"), "vector": vec![0.5; DIM]}],
        "blob": {"content_base64": "aGVsbG8=", "content_type": "text/plain"},
    })
}

/// The environment's Milvus, which must authenticate for these tests to mean anything.
fn authenticating_milvus() -> (StoreEnv, String) {
    let env = StoreEnv::require();
    let token = env.milvus_token.clone().expect(
        "Milvus must run with authentication (MILVUS_TOKEN in the stores' env file): \
         start it with `scripts/stores.sh up` (MILVUS_IMPL=embd, MILVUS_AUTH=1, the defaults)",
    );
    (env, token)
}

async fn milvus_admin(env: &StoreEnv, database: Option<&str>) -> ClientV2 {
    let mut access = env.milvus();
    access.database = database.map(str::to_owned);
    ClientV2::new(
        &access
            .connect_config()
            .telemetry(TelemetryConfig::new().enabled(false)),
    )
    .await
    .expect("milvus connects")
}

async fn has_collection(client: &ClientV2, name: &str) -> bool {
    client
        .has_collection(
            HasCollectionRequest::builder()
                .collection_name(name)
                .build()
                .expect("request"),
        )
        .await
        .expect("has_collection")
        .exists()
}

/// Waits until `store` shows `retrying` with an error for which `says` holds; returns it.
async fn until_retrying(cluster: &Cluster, store: &str, says: impl Fn(&str) -> bool) -> String {
    let http = reqwest::Client::new();
    let base = cluster.base(0);
    eventually(
        Duration::from_secs(30),
        &format!("{store} shown retrying with its error"),
        || async {
            let all = projections_at(&http, &base).await?;
            let s = all.as_array()?.iter().find(|s| s["name"] == store)?;
            let error = s["last_error"].as_str()?;
            (s["state"] == "retrying" && says(error)).then(|| error.to_owned())
        },
    )
    .await
}

async fn no_compensation(cluster: &Cluster) {
    let open: Value = reqwest::get(format!("{}/v1/compensations", cluster.base(0)))
        .await
        .expect("compensations")
        .json()
        .await
        .expect("json");
    assert_eq!(
        open["compensations"].as_array().map(Vec::len),
        Some(0),
        "an environment fault must never park a document: {open}"
    );
}

async fn put(cluster: &Cluster, doc: &str) {
    let res = reqwest::Client::new()
        .put(format!("{}/v1/documents/{doc}", cluster.base(0)))
        .json(&body(doc))
        .send()
        .await
        .expect("put");
    assert_eq!(res.status(), 200, "accepted into the log");
}

async fn until_consistent(cluster: &Cluster, doc: &str) -> Value {
    until_document(
        &reqwest::Client::new(),
        &format!("{}/v1/documents/{doc}", cluster.base(0)),
        Duration::from_secs(60),
        "the document in every store",
        |got| got["consistent"] == true && got["ready"] == true,
    )
    .await
}

/// User and password from a secret file, a database of its own; then a wrong password:
/// commands are accepted, Milvus shows `retrying` with the server's refusal, nothing is
/// parked, and the right password brings every accepted document in.
#[actix_rt::test]
async fn milvus_user_password_and_database() {
    let (env, token) = authenticating_milvus();
    let (user, password) = token.split_once(':').expect("user:password");
    let mut cluster = Cluster::start("credentials_milvus", 0, &[]).await;
    let database = cluster.name.clone();
    let collection = cluster.vars["DOCLEDGER_MILVUS_COLLECTION"].clone();
    let default_db = milvus_admin(&env, None).await;
    default_db
        .create_database(
            CreateDatabaseRequest::builder()
                .database_name(&database)
                .build()
                .expect("request"),
        )
        .await
        .expect("create the test's database");
    let secret = std::env::temp_dir().join(format!("{}-milvus-password", cluster.name));
    std::fs::write(&secret, format!("{password}\n")).expect("secret file");
    cluster.vars.remove("DOCLEDGER_MILVUS_TOKEN");
    cluster.vars.extend(
        [
            ("DOCLEDGER_MILVUS_USER", user.to_owned()),
            (
                "DOCLEDGER_MILVUS_PASSWORD_FILE",
                secret.to_string_lossy().into_owned(),
            ),
            ("DOCLEDGER_MILVUS_DATABASE", database.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    cluster.add(&[]).await;

    put(&cluster, "in-its-database").await;
    until_consistent(&cluster, "in-its-database").await;
    let own_db = milvus_admin(&env, Some(&database)).await;
    assert!(
        has_collection(&own_db, &collection).await,
        "the collection is in the configured database"
    );
    assert!(
        !has_collection(&default_db, &collection).await,
        "and not in the default one"
    );

    // The wrong password: the service keeps accepting, Milvus is an environment fault.
    std::fs::write(&secret, "not-the-password\n").expect("secret file");
    cluster.restart(0).await;
    put(&cluster, "while-refused").await;
    let error = until_retrying(&cluster, "milvus", |e| {
        let e = e.to_lowercase();
        e.contains("auth") || e.contains("password") || e.contains("credential")
    })
    .await;
    assert!(!error.contains("not-the-password"), "{error}");
    no_compensation(&cluster).await;
    let waiting: Value = reqwest::get(format!("{}/v1/documents/while-refused", cluster.base(0)))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(waiting["ready"], false, "not in Milvus yet: {waiting}");

    std::fs::write(&secret, format!("{password}\n")).expect("secret file");
    cluster.restart(0).await;
    until_consistent(&cluster, "while-refused").await;
    no_compensation(&cluster).await;
    let (code, out) = cluster.verify().await;
    assert_eq!(code, Some(0), "{out}");

    cluster.stop(0).await;
    own_db
        .drop_collection(
            DropCollectionRequest::builder()
                .collection_name(&collection)
                .build()
                .expect("request"),
        )
        .await
        .expect("drop the collection");
    default_db
        .drop_database(
            DropDatabaseRequest::builder()
                .database_name(&database)
                .build()
                .expect("request"),
        )
        .await
        .expect("drop the database");
    let _ = std::fs::remove_file(&secret);
}

/// No static S3 keys: the default chain reads a shared profile file. Wrong keys in it, and
/// no credentials anywhere, are `retrying` with the reason, nothing parked; the right
/// profile brings every accepted document in.
#[actix_rt::test]
async fn s3_from_the_default_credential_chain() {
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set in the test's environment; the chain would read it first"
        );
    }
    let env = StoreEnv::require();
    let mut cluster = Cluster::start("credentials_s3", 0, &[]).await;
    cluster.vars.remove("DOCLEDGER_S3_ACCESS_KEY");
    cluster.vars.remove("DOCLEDGER_S3_SECRET_KEY");
    let dir = std::env::temp_dir().join(format!("{}-aws", cluster.name));
    std::fs::create_dir_all(&dir).expect("dir");
    let credentials = dir.join("credentials");
    let config = dir.join("config");
    std::fs::write(&config, "").expect("config file");
    let profile = |secret: &str| {
        std::fs::write(
            &credentials,
            format!(
                "[default]\naws_access_key_id = AKIDEFAULTNOTUSED\naws_secret_access_key = no\n\n\
                 [docledger-test]\naws_access_key_id = {}\naws_secret_access_key = {secret}\n",
                env.s3_access_key
            ),
        )
        .expect("credentials file");
    };
    profile("not-the-secret-key-at-all");
    cluster.vars.extend(
        [
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                credentials.to_string_lossy().into_owned(),
            ),
            ("AWS_CONFIG_FILE", config.to_string_lossy().into_owned()),
            ("AWS_PROFILE", "docledger-test".to_owned()),
            // No instance metadata here: the chain's last link would only wait for it.
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    cluster.add(&[]).await;

    put(&cluster, "wrong-secret").await;
    until_retrying(&cluster, "s3", |e| e.contains("HTTP 403")).await;
    no_compensation(&cluster).await;

    // No credentials anywhere: a profile that does not exist.
    cluster.set(0, "AWS_PROFILE", "no-such-profile");
    cluster.restart(0).await;
    put(&cluster, "no-credentials").await;
    let error = until_retrying(&cluster, "s3", |e| !e.contains("HTTP 403")).await;
    assert!(
        !error.contains("HTTP"),
        "refused before any request is sent: {error}"
    );
    eprintln!("S3 without credentials: {error}");
    no_compensation(&cluster).await;

    profile(&env.s3_secret_key);
    cluster.set(0, "AWS_PROFILE", "docledger-test");
    cluster.restart(0).await;
    put(&cluster, "right-profile").await;
    for doc in ["wrong-secret", "no-credentials", "right-profile"] {
        until_consistent(&cluster, doc).await;
    }
    no_compensation(&cluster).await;
    let bucket = cluster.vars["DOCLEDGER_S3_BUCKET"].clone();
    let s3 = S3Sink::new(
        &env.s3_endpoint,
        &env.s3_access_key,
        &env.s3_secret_key,
        &env.s3_region,
        &bucket,
    );
    let stored = s3
        .object("right-profile")
        .await
        .expect("read")
        .expect("the blob is in S3");
    assert_eq!(&stored.bytes[..], b"hello");
    let (code, out) = cluster.verify().await;
    assert_eq!(code, Some(0), "{out}");
    cluster.stop(0).await;
    let _ = std::fs::remove_dir_all(&dir);
}
