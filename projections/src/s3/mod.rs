//! The S3 projection: one object `docs/{doc_id}` per document that has a blob, holding the
//! exact bytes and the user metadata `docledger-version` and `docledger-sha256`
//! (docs/stores.md).
//!
//! At least once, idempotent, version-guarded: the runner saves the checkpoint in the log
//! database after [`S3Sink::apply`], so a batch may be applied again after a crash. Every
//! write first reads the stored object's `docledger-version` (HEAD) and is skipped when the
//! store already holds that version or a newer one, so an older change never wins and a
//! replay costs one HEAD per document. When the stored object already holds the put's bytes
//! (same `docledger-sha256`, e.g. a rollback or retry that re-emits an earlier blob), only
//! its metadata moves to the new version, by a server-side CopyObject onto itself
//! (`MetadataDirective: REPLACE`): no bytes travel. Puts of a batch are written
//! concurrently; removals are guarded one HEAD each, then sent as DeleteObjects requests of
//! up to 1,000 keys. The first failure fails the batch (the runner retries it whole, which
//! the guard makes cheap and safe).
//!
//! The adapter never retries or sleeps: the SDK's retries are disabled so that the runner's
//! [`crate::RetryPolicy`] is the only one.

mod audit;
pub mod classify;
pub mod rebuild;

use std::time::Duration;

use aggregates::{DocumentEvent, LogCursor, StoreKind, Version};
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::future;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Builder, Credentials, ProvideCredentials, Region, SharedCredentialsProvider,
};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, Delete, MetadataDirective,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

use crate::error::SinkError;
use crate::sink::{Applied, Batch, Change, DocChange, Partition, Sink};
use crate::tls::{self, TlsMode, TlsTrust};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};

use self::classify::sink_error;

/// The sink's name: checkpoint key and metric label.
pub const NAME: &str = "s3";
/// Prefix of every document object: the object of `doc_id` is `docs/{doc_id}`.
pub const KEY_PREFIX: &str = "docs/";
/// User metadata: the document version the object holds.
pub const META_VERSION: &str = "docledger-version";
/// User metadata: lowercase hex sha256 of the object's bytes.
pub const META_SHA256: &str = "docledger-sha256";

/// S3 requests in flight for one batch or one audit (the live path: writes of a batch,
/// reads of a verification).
pub const CONCURRENT_REQUESTS: usize = 16;
/// S3 requests in flight for bulk work that has the store to itself (a rebuild, the
/// bench's ceiling).
pub const BULK_CONCURRENT_REQUESTS: usize = 32;
/// Longest wait for a TCP connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence while reading an answer; a hung request becomes a transient timeout.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Most keys per DeleteObjects request (the S3 limit).
const DELETE_OBJECTS_MAX_KEYS: usize = 1000;
/// The region whose buckets are created without a location constraint.
const DEFAULT_REGION: &str = "us-east-1";

/// The object key of `doc_id`.
pub fn object_key(doc_id: &str) -> String {
    format!("{KEY_PREFIX}{doc_id}")
}

/// An object as S3 holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's bytes.
    pub bytes: Bytes,
    /// `docledger-version`, when present and a number.
    pub version: Option<Version>,
    /// `docledger-sha256`, when present.
    pub sha256: Option<String>,
    /// The object's content type.
    pub content_type: Option<String>,
}

/// Projects `BlobStored` and removals into an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Sink {
    client: Client,
    bucket: String,
}

/// What HEAD says about a document's object.
enum Stored {
    /// No object.
    Absent,
    /// An object at this version (0 when its metadata does not say: any version replaces
    /// it), with its `docledger-sha256` when present.
    At(Version, Option<String>),
}

/// Characters escaped in a CopyObject source (`bucket/key`, `/` kept as the separator).
const COPY_SOURCE_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a removal needs after its guard.
enum Removal {
    /// Nothing to delete (absent, or newer than the removal).
    Skip,
    /// Delete this document's object.
    Delete(String),
}

/// How the S3 client signs its requests.
#[derive(Clone)]
pub enum S3Credentials {
    /// An access key and its secret.
    Static {
        /// Access key id.
        access_key: String,
        /// Secret access key.
        secret_key: String,
    },
    /// The AWS SDK's default credential chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
    /// the shared profile files (`AWS_PROFILE`), web identity (EKS IRSA, `AWS_ROLE_ARN` +
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`), ECS container and EC2 instance metadata. It is
    /// resolved at the first request and its credentials are refreshed before they expire.
    DefaultChain,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Credentials::Static { access_key, .. } => f
                .debug_struct("Static")
                .field("access_key", access_key)
                .field("secret_key", &"***")
                .finish(),
            S3Credentials::DefaultChain => f.write_str("DefaultChain"),
        }
    }
}

impl S3Credentials {
    fn provider(&self, region: &str) -> SharedCredentialsProvider {
        match self {
            S3Credentials::Static {
                access_key,
                secret_key,
            } => SharedCredentialsProvider::new(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "docledger",
            )),
            S3Credentials::DefaultChain => SharedCredentialsProvider::new(LazyDefaultChain {
                region: Region::new(region.to_owned()),
                chain: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

/// The default chain, built at its first use (building it reads the profile files, and a
/// sink is made before the runtime has done anything else) and built again after a failure:
/// the chain remembers a profile it could not load, and would answer "already taken" from
/// then on instead of saying why, and instead of reading a corrected file.
#[derive(Debug)]
struct LazyDefaultChain {
    region: Region,
    chain: tokio::sync::Mutex<Option<std::sync::Arc<DefaultCredentialsChain>>>,
}

impl ProvideCredentials for LazyDefaultChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let chain = {
                let mut cached = self.chain.lock().await;
                match &*cached {
                    Some(chain) => chain.clone(),
                    None => {
                        let chain = std::sync::Arc::new(
                            DefaultCredentialsChain::builder()
                                .region(self.region.clone())
                                .build()
                                .await,
                        );
                        *cached = Some(chain.clone());
                        chain
                    }
                }
            };
            let provided = chain.provide_credentials().await;
            if provided.is_err() {
                *self.chain.lock().await = None;
            }
            provided
        })
    }
}

impl S3Sink {
    /// A sink writing to `bucket` at `endpoint` (`http://host:9000`) with static
    /// credentials and path-style addressing. Nothing is sent until [`Sink::prepare`]. An
    /// `https://` endpoint's certificate must chain to a system root.
    pub fn new(
        endpoint: &str,
        access_key: &str,
        secret_key: &str,
        region: &str,
        bucket: &str,
    ) -> S3Sink {
        let credentials = S3Credentials::Static {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        };
        S3Sink::from_builder(Builder::new(), endpoint, &credentials, region, bucket)
    }

    /// Like [`S3Sink::new`], signing with `credentials`; an `https://` endpoint's
    /// certificate must chain to a root of `trust` and name the endpoint's host.
    ///
    /// # Errors
    /// A permanent [`SinkError`] when the endpoint is not an `http(s)://` URL or the SDK
    /// refuses the trust store.
    pub fn with_tls(
        endpoint: &str,
        credentials: &S3Credentials,
        region: &str,
        bucket: &str,
        trust: &TlsTrust,
    ) -> Result<S3Sink, SinkError> {
        let mode = tls::http_tls(endpoint).map_err(|e| SinkError::permanent(NAME, "connect", e))?;
        let mut builder = Builder::new();
        // Without extra roots the SDK's own HTTPS client (system roots) is the same trust.
        if mode == TlsMode::Verified && trust.has_extra() {
            let context = TlsContext::builder()
                .with_trust_store(TrustStore::default().with_pem_certificate(trust.extra_pem()))
                .build()
                .map_err(|e| SinkError::permanent(NAME, "connect", e.to_string()))?;
            builder = builder.http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                    .tls_context(context)
                    .build_https(),
            );
        }
        Ok(S3Sink::from_builder(
            builder,
            endpoint,
            credentials,
            region,
            bucket,
        ))
    }

    fn from_builder(
        builder: Builder,
        endpoint: &str,
        credentials: &S3Credentials,
        region: &str,
        bucket: &str,
    ) -> S3Sink {
        let config = builder
            .behavior_version_latest()
            .endpoint_url(endpoint)
            .region(Region::new(region.to_owned()))
            .credentials_provider(credentials.provider(region))
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .build();
        S3Sink {
            client: Client::from_conf(config),
            bucket: bucket.to_owned(),
        }
    }

    /// The bucket this sink writes.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn stored(&self, doc_id: &str) -> Result<Stored, SinkError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(object_key(doc_id))
            .send()
            .await;
        match head {
            Ok(out) => Ok(Stored::At(
                out.metadata()
                    .and_then(|m| m.get(META_VERSION))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                out.metadata().and_then(|m| m.get(META_SHA256)).cloned(),
            )),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(Stored::Absent),
            Err(e) => Err(sink_error("head object", Some(doc_id), &e)),
        }
    }

    /// Applies one document's change; `Ok(true)` when it wrote something.
    async fn apply_change(&self, change: &DocChange, batch: &Batch) -> Result<bool, SinkError> {
        let doc_id = change.doc_id.as_str();
        match &change.change {
            Change::Upsert(
                event @ DocumentEvent::BlobStored {
                    version,
                    sha256,
                    content_type,
                    ..
                },
            ) => {
                let bytes = batch.blobs.get(sha256).ok_or_else(|| {
                    SinkError::permanent(
                        NAME,
                        "put object",
                        format!("blob {sha256} of {doc_id} v{version} was not loaded"),
                    )
                    .for_doc(doc_id)
                })?;
                let stored = if batch.is_first_write(change) {
                    // Nothing of the document can be there but this very object.
                    Stored::Absent
                } else {
                    self.stored(doc_id).await?
                };
                if let Stored::At(stored, stored_sha) = stored {
                    if stored >= *version {
                        return Ok(false);
                    }
                    if stored_sha.as_deref() == Some(sha256.as_str()) {
                        self.restamp(doc_id, *version, sha256, content_type).await?;
                        return Ok(true);
                    }
                }
                // Checks the bytes against the event's size, then puts with the metadata.
                self.write_object(doc_id, event, bytes.clone()).await?;
                Ok(true)
            }
            Change::Remove | Change::Erase | Change::Purge => Err(SinkError::permanent(
                NAME,
                "apply",
                "removals are applied in bulk, not one by one",
            )
            .for_doc(doc_id)),
            Change::Upsert(other) => Err(SinkError::permanent(
                NAME,
                "apply",
                format!("{} is not an event for S3", other.type_name()),
            )
            .for_doc(doc_id)),
        }
    }

    /// Moves the object's metadata to `version` without sending its bytes again: a
    /// server-side copy onto itself that replaces the metadata.
    async fn restamp(
        &self,
        doc_id: &str,
        version: Version,
        sha256: &str,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let key = object_key(doc_id);
        let source = percent_encoding::utf8_percent_encode(
            &format!("{}/{key}", self.bucket),
            COPY_SOURCE_ESCAPES,
        )
        .to_string();
        let mut copy = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(&key)
            .copy_source(source)
            .metadata_directive(MetadataDirective::Replace)
            .metadata(META_VERSION, version.to_string())
            .metadata(META_SHA256, sha256);
        if !content_type.is_empty() {
            copy = copy.content_type(content_type);
        }
        copy.send()
            .await
            .map_err(|e| sink_error("copy object", Some(doc_id), &e))?;
        Ok(())
    }

    /// The version guard of a removal.
    async fn removal(&self, change: &DocChange) -> Result<Removal, SinkError> {
        match self.stored(change.doc_id.as_str()).await? {
            Stored::Absent => Ok(Removal::Skip),
            Stored::At(stored, _) if stored > change.version => Ok(Removal::Skip),
            Stored::At(..) => Ok(Removal::Delete(change.doc_id.to_string())),
        }
    }

    /// Deletes the objects of `doc_ids` with DeleteObjects, up to 1,000 keys a request;
    /// fails on the first key S3 reports as not deleted.
    async fn delete_objects(&self, doc_ids: &[String]) -> Result<(), SinkError> {
        let keys: Vec<String> = doc_ids.iter().map(|d| object_key(d)).collect();
        self.delete_keys(&keys).await
    }

    /// The object of `doc_id` with its bytes and metadata, `None` when there is none.
    ///
    /// # Errors
    /// The classified S3 failure.
    pub async fn object(&self, doc_id: &str) -> Result<Option<StoredObject>, SinkError> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object_key(doc_id))
            .send()
            .await;
        let out = match got {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(sink_error("get object", Some(doc_id), &e)),
        };
        let metadata = out.metadata().cloned().unwrap_or_default();
        let content_type = out.content_type().map(str::to_owned);
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| {
                SinkError::transient(NAME, "get object", format!("reading the body failed: {e}"))
                    .for_doc(doc_id)
            })?
            .into_bytes();
        Ok(Some(StoredObject {
            bytes,
            version: metadata.get(META_VERSION).and_then(|v| v.parse().ok()),
            sha256: metadata.get(META_SHA256).cloned(),
            content_type,
        }))
    }

    /// Deletes the object at `key`, whatever it holds (verification's repair of a stray
    /// object that no document owns; documents' objects go through [`Sink::apply`]).
    ///
    /// # Errors
    /// The classified S3 failure.
    pub async fn delete_key(&self, key: &str) -> Result<(), SinkError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sink_error("delete object", None, &e))?;
        Ok(())
    }

    /// Every key under `prefix`, in S3's (lexicographic) order.
    ///
    /// # Errors
    /// The classified S3 failure.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| sink_error("list objects", None, &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(keys),
            }
        }
    }

    /// Deletes every object of the bucket, then the bucket (a test's cleanup, or a rebuild
    /// from scratch). A missing bucket is fine.
    ///
    /// # Errors
    /// The classified S3 failure.
    pub async fn drop_bucket(&self) -> Result<(), SinkError> {
        let exists = self.client.head_bucket().bucket(&self.bucket).send().await;
        match exists {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(()),
            Err(e) => return Err(sink_error("head bucket", None, &e)),
        }
        let keys = self.list_keys("").await?;
        for group in keys.chunks(DELETE_OBJECTS_MAX_KEYS) {
            let objects = group
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SinkError::permanent(NAME, "delete objects", e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| SinkError::permanent(NAME, "delete objects", e.to_string()))?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sink_error("delete objects", None, &e))?;
        }
        self.client
            .delete_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| sink_error("delete bucket", None, &e))?;
        Ok(())
    }
}

impl Sink for S3Sink {
    const NAME: &'static str = NAME;
    const STORE: StoreKind = StoreKind::S3;
    const KEEPS_OWN_CHECKPOINT: bool = false;
    const NEEDS_BLOBS: bool = true;

    /// Creates the bucket when missing; one that already exists is fine.
    async fn prepare(&self) -> Result<(), SinkError> {
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        let region = self.client.config().region().map(|r| r.as_ref().to_owned());
        if let Some(region) = region.filter(|r| r != DEFAULT_REGION) {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(sink_error("create bucket", None, &e)),
        }
    }

    async fn checkpoint(&self, _part: Partition) -> Result<Option<(String, LogCursor)>, SinkError> {
        // At least once: the runner keeps this sink's checkpoint in the log database.
        Ok(None)
    }

    async fn apply(
        &self,
        _log_id: &str,
        _part: Partition,
        batch: &Batch,
    ) -> Result<Applied, SinkError> {
        let (removals, puts): (Vec<&DocChange>, Vec<&DocChange>) = batch
            .changes
            .iter()
            .partition(|c| matches!(c.change, Change::Remove | Change::Erase | Change::Purge));
        // The futures are built before they enter the stream: a closure inside the stream
        // would make the returned future fail the `Send` check (rust-lang/rust#89976).
        let writes: Vec<_> = puts
            .into_iter()
            .map(|change| self.apply_change(change, batch))
            .collect();
        let mut results = stream::iter(writes).buffer_unordered(CONCURRENT_REQUESTS);
        let mut num_changes = 0;
        while let Some(result) = results.next().await {
            if result? {
                num_changes += 1;
            }
        }
        let guards: Vec<_> = removals.into_iter().map(|c| self.removal(c)).collect();
        let mut guards = stream::iter(guards).buffer_unordered(CONCURRENT_REQUESTS);
        let mut doomed = Vec::new();
        while let Some(removal) = guards.next().await {
            if let Removal::Delete(doc_id) = removal? {
                doomed.push(doc_id);
            }
        }
        drop(guards);
        self.delete_objects(&doomed).await?;
        num_changes += doomed.len();
        Ok(Applied { num_changes })
    }
}

#[cfg(test)]
mod debug_tests {
    use super::S3Sink;

    #[test]
    fn printing_a_sink_hides_the_secret_key() {
        let sink = S3Sink::new(
            "http://127.0.0.1:1",
            "access",
            "hunter2",
            "us-east-1",
            "bucket",
        );
        let printed = format!("{sink:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
