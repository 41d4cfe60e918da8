//! The first vector rebuild turns the plain collection of the contract's name into an alias:
//! it drops the collection, then creates the alias. A projector that starts between the two
//! calls (a process restarting during the rebuild) makes the plain collection anew, and
//! Milvus also keeps a dropped collection's name for a moment after the drop answers; either
//! way the alias' name is taken. The switch must still end with the alias on the new
//! generation. The failpoint holds the rebuild between its two calls, deterministically.

mod common;

use std::time::Duration;

use milvus::v2::prelude::*;
use projections::milvus::rebuild::{generation_name, FAILPOINT_AFTER_PLAIN_DROP};
use projections::milvus::MilvusSink;
use projections::sink::Sink;
use projections::testing::{unique_name, StoreEnv};

const DIM: usize = 8;

/// Turns the failpoint off when dropped.
struct Release;

impl Drop for Release {
    fn drop(&mut self) {
        fail::remove(FAILPOINT_AFTER_PLAIN_DROP);
    }
}

#[tokio::test]
async fn the_alias_is_created_even_when_a_projector_made_the_plain_collection_again() {
    let scenario = fail::FailScenario::setup();
    let env = StoreEnv::require();
    let name = unique_name("alias_race");
    let sink = MilvusSink::connect(&env.milvus(), &name, DIM)
        .await
        .expect("connect to milvus");
    sink.prepare().await.expect("the plain collection");
    let generation = generation_name(&name, 1);
    sink.on_collection(&generation)
        .prepare()
        .await
        .expect("the new generation");

    fail::cfg(FAILPOINT_AFTER_PLAIN_DROP, "pause").expect("hold the switch after the drop");
    // A paused thread would keep the runtime from shutting down after a failed assertion.
    let _release = Release;
    // The switch runs on a thread and runtime of its own: the failpoint blocks the thread it
    // runs on, which must not be one that this test's own requests need.
    let switching = {
        let (milvus, name, generation) = (env.milvus(), name.clone(), generation.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let sink = MilvusSink::connect(&milvus, &name, DIM)
                    .await
                    .expect("connect to milvus");
                sink.switch_alias(&generation).await
            })
        })
    };
    let projector = MilvusSink::connect(&env.milvus(), &name, DIM)
        .await
        .expect("connect to milvus");
    common::eventually(
        Duration::from_secs(30),
        "the plain collection dropped",
        || async { (!projector.exists().await.expect("has collection")).then_some(()) },
    )
    .await;
    common::eventually(
        Duration::from_secs(30),
        "the plain collection made again",
        || async { projector.prepare().await.ok() },
    )
    .await;
    assert_eq!(
        projector.resolve().await.expect("resolve").as_deref(),
        Some(name.as_str()),
        "the plain collection is back before the alias is created"
    );
    fail::cfg(FAILPOINT_AFTER_PLAIN_DROP, "off").expect("release the switch");

    let switched = tokio::task::spawn_blocking(move || switching.join())
        .await
        .expect("the joining task")
        .expect("the switch thread");
    let resolved = sink.resolve().await;
    // Clean up before asserting.
    let client = common::milvus_client(&env).await;
    let _ = client
        .drop_alias(
            DropAliasRequest::builder()
                .alias(&name)
                .build()
                .expect("request"),
        )
        .await;
    for collection in [&name, &generation] {
        let _ = client
            .drop_collection(
                DropCollectionRequest::builder()
                    .collection_name(collection)
                    .build()
                    .expect("request"),
            )
            .await;
    }
    scenario.teardown();
    assert_eq!(
        switched.expect("the switch succeeds"),
        None,
        "nothing to retire"
    );
    assert_eq!(
        resolved.expect("resolve").as_deref(),
        Some(generation.as_str()),
        "the name is an alias of the new generation"
    );
}
