//! Document actors: a full mailbox is back-pressure (503 + Retry-After), idle actors are
//! passivated and the cap on live actors holds, and a passivated document continues from the
//! log at the right version.

mod common;

use std::time::Duration;

use common::{eventually, TestService};
use serde_json::{json, Value};

fn doc_body(title: &str) -> Value {
    json!({"title": title, "source_type": "note", "chunks": [{"text": title, "vector": vec![0.5f32; 8]}]})
}

async fn live_actors(http: &reqwest::Client, svc: &TestService) -> Option<u64> {
    let text = http
        .get(svc.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("docledger_actors_live "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[actix_rt::test]
async fn a_full_mailbox_answers_503_and_accepted_puts_stay_contiguous() {
    let svc = TestService::start(
        "actors_backpressure",
        &[("DOCLEDGER_MAILBOX_CAPACITY", "2")],
    )
    .await;
    let http = reqwest::Client::new();
    let puts = (0..48).map(|i| {
        let req = http
            .put(svc.doc_url("hot", ""))
            .json(&doc_body(&format!("w{i}")));
        async move {
            let res = req.send().await.expect("request");
            let status = res.status().as_u16();
            let retry_after = res.headers().get("retry-after").is_some();
            let body: Value = res.json().await.expect("json");
            (status, retry_after, body)
        }
    });
    let results = futures::future::join_all(puts).await;
    let mut versions: Vec<u64> = Vec::new();
    let mut refused = 0;
    for (status, retry_after, body) in &results {
        match status {
            200 => versions.push(body["version"].as_u64().expect("version")),
            503 => {
                refused += 1;
                assert!(*retry_after, "503 carries Retry-After");
                assert_eq!(body["error"]["code"], "unavailable");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "48 simultaneous puts into a mailbox of 2 must see back-pressure"
    );
    versions.sort_unstable();
    let n = versions.len() as u64;
    assert_eq!(
        versions,
        (1..=n).collect::<Vec<u64>>(),
        "accepted puts are contiguous versions"
    );
    let got: Value = http
        .get(svc.doc_url("hot", ""))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(got["version"], n, "refused puts changed nothing");
    svc.stop().await;
}

#[actix_rt::test]
async fn idle_actors_passivate_the_cap_holds_and_state_reloads_from_the_log() {
    let svc = TestService::start(
        "actors_passivation",
        &[
            ("DOCLEDGER_ACTOR_IDLE_SECS", "1"),
            ("DOCLEDGER_MAX_LIVE_ACTORS", "5"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let mut peak = 0;
    for i in 0..30 {
        let res = http
            .put(svc.doc_url(&format!("p/{i}"), ""))
            .json(&doc_body("v1"))
            .send()
            .await
            .expect("put");
        assert_eq!(res.status().as_u16(), 200);
        peak = peak.max(live_actors(&http, &svc).await.expect("metrics"));
    }
    assert!(peak <= 6, "live actors stay near the cap of 5, saw {peak}");
    eventually(
        Duration::from_secs(10),
        "idle actors to passivate",
        || async { (live_actors(&http, &svc).await? == 0).then_some(()) },
    )
    .await;
    // A passivated document continues at the right version from the log.
    let res = http
        .put(svc.doc_url("p/3", ""))
        .json(&doc_body("v2"))
        .send()
        .await
        .expect("put");
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        (body["version"].clone(), body["unchanged"].clone()),
        (json!(2), json!(false))
    );
    let res = http
        .put(svc.doc_url("p/4", ""))
        .json(&doc_body("v1"))
        .send()
        .await
        .expect("put");
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        (body["version"].clone(), body["unchanged"].clone()),
        (json!(1), json!(true))
    );
    svc.stop().await;
}

/// At the cap every new document evicts an idle actor, so with a cap of 1 nearly every
/// command starts an actor and evicts another while others are in flight. An actor that a
/// request has found or started must not be taken for idle, an evicted one must not be sent
/// more commands (either would answer the command 503, "document actor keeps stopping"), and
/// two evictions must not pick the same actor (the second would be lost and the cap
/// overrun). Four batches at once keep ~128 commands in flight; every line must land, first
/// versions and second ones (whose actors were evicted) alike, and the live actors stay
/// within the cap plus the lines in flight.
#[actix_rt::test]
async fn commands_at_the_actor_cap_are_all_answered_while_actors_are_evicted() {
    let svc =
        TestService::start("actors_cap_eviction", &[("DOCLEDGER_MAX_LIVE_ACTORS", "1")]).await;
    let http = reqwest::Client::new();
    for (round, title) in ["v1", "v2"].into_iter().enumerate() {
        let batches = (0..4).map(|b| {
            let lines: String = (0..250)
                .map(|i| {
                    let mut line = doc_body(title);
                    line["op"] = json!("put");
                    line["doc_id"] = json!(format!("cap/{b}-{i}"));
                    format!("{line}\n")
                })
                .collect();
            let req = http
                .post(svc.url("/v1/documents:batch"))
                .header("content-type", "application/x-ndjson")
                .body(lines);
            async move {
                req.send()
                    .await
                    .expect("batch")
                    .text()
                    .await
                    .expect("answer")
            }
        });
        let answers = futures::future::join_all(batches).await;
        let lines: Vec<Value> = answers
            .iter()
            .flat_map(|a| a.lines())
            .map(|l| serde_json::from_str(l).expect("an answer line"))
            .collect();
        assert_eq!(lines.len(), 1000);
        let refused: Vec<&Value> = lines.iter().filter(|l| l["status"] != 200).collect();
        assert!(
            refused.is_empty(),
            "round {round}: {} refused, first {}",
            refused.len(),
            refused[0]
        );
        // Each new actor at the cap evicts an idle one, so only the actors started while
        // every live one was busy exceed it: at most one per line in flight (4 batches of
        // 32 lines at a time), plus a few whose eviction found the other shards locked
        // (32 of slack). Before, evictions that picked the same idle actor twice were lost,
        // and 511-716 actors stayed alive here.
        let live = live_actors(&http, &svc).await.expect("metrics");
        println!("round {round}: {live} live actors");
        assert!(
            live <= 1 + 4 * 32 + 32,
            "round {round}: {live} live actors, above the cap of 1 plus the lines in flight"
        );
        assert!(
            lines.iter().all(|l| l["result"]["version"] == round + 1),
            "round {round}: every document at version {}",
            round + 1
        );
    }
    svc.stop().await;
}
