//! Several `docledger serve` instances on one log (issue 8, DESIGN "Scale beyond one
//! machine"): projector partitions are leased (PostgreSQL advisory locks), so each
//! (store, partition) has exactly one owner across the instances, the partitions spread
//! evenly over them, and a dead owner's partitions move within a bounded time; commands for the same documents through different
//! instances never lose an update (every acknowledged put has its own version).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{eventually, service_vars, spawn_serve, wait_ready, TestService};
use futures::StreamExt;
use serde_json::{json, Value};

const DIM: usize = 8;
const PARTITIONS: u32 = 4;
const STORES: usize = 3;

fn body(title: &str) -> Value {
    json!({
        "title": title,
        "source_type": "instances",
        "chunks": [{"text": title, "vector": vec![0.5; DIM]}],
    })
}

/// `(store, partition)` → states reported by the instance at `base`.
async fn partition_states(
    http: &reqwest::Client,
    base: &str,
) -> Option<Vec<(String, u64, String)>> {
    let p: Value = http
        .get(format!("{base}/v1/projections"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mut out = Vec::new();
    for store in p.as_array()? {
        for part in store["partitions"].as_array()? {
            out.push((
                store["name"].as_str()?.to_owned(),
                part["partition"].as_u64()?,
                part["state"].as_str()?.to_owned(),
            ));
        }
    }
    Some(out)
}

/// Which instance (index into `bases`) owns each (store, partition); None until every one
/// has exactly one owner and every other instance shows it on standby.
async fn owners(
    http: &reqwest::Client,
    bases: &[String],
) -> Option<BTreeMap<(String, u64), usize>> {
    let mut owner: BTreeMap<(String, u64), Vec<usize>> = BTreeMap::new();
    for (i, base) in bases.iter().enumerate() {
        for (store, part, state) in partition_states(http, base).await? {
            let entry = owner.entry((store, part)).or_default();
            match state.as_str() {
                "standby" => {}
                "running" => entry.push(i),
                _ => return None,
            }
        }
    }
    let complete =
        owner.len() == STORES * PARTITIONS as usize && owner.values().all(|o| o.len() == 1);
    complete.then(|| owner.into_iter().map(|(k, v)| (k, v[0])).collect())
}

/// Like [`owners`], once the partitions are spread evenly: every instance owns its fair
/// share, `ceil(partitions / instances)` or one less.
async fn spread_owners(
    http: &reqwest::Client,
    bases: &[String],
) -> Option<BTreeMap<(String, u64), usize>> {
    let owners = owners(http, bases).await?;
    let fair = owners.len().div_ceil(bases.len());
    let even = (0..bases.len()).all(|i| {
        let n = owners.values().filter(|o| **o == i).count();
        n == fair || n + 1 == fair
    });
    even.then_some(owners)
}

/// Puts to a few shared documents through every instance at once. Returns, per document,
/// the versions acknowledged and the titles acknowledged.
async fn contend(
    http: &reqwest::Client,
    bases: &[String],
    docs: &[&str],
    rounds: usize,
) -> BTreeMap<String, Vec<(u64, String)>> {
    let requests: Vec<(String, String, String)> = (0..rounds)
        .flat_map(|r| {
            bases.iter().enumerate().flat_map(move |(i, base)| {
                docs.iter().map(move |doc| {
                    let url = format!("{base}/v1/documents/{}", doc.replace('/', "%2F"));
                    (doc.to_string(), url, format!("{doc} via {i} round {r}"))
                })
            })
        })
        .collect();
    let results: Vec<(String, u16, Value, String)> = futures::stream::iter(requests)
        .map(|(doc, url, title)| async move {
            let res = http.put(url).json(&body(&title)).send().await.expect("put");
            let status = res.status().as_u16();
            (doc, status, res.json().await.unwrap_or(Value::Null), title)
        })
        .buffer_unordered(12)
        .collect()
        .await;
    let mut acked: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (doc, status, v, title) in results {
        match status {
            200 => acked
                .entry(doc)
                .or_default()
                .push((v["version"].as_u64().expect("version"), title)),
            // Lost the race twice (the actor reloads and decides again once): refused, not lost.
            409 => assert_eq!(v["error"]["code"], "version_conflict", "{v}"),
            s => panic!("{doc}: unexpected {s}: {v}"),
        }
    }
    acked
}

/// No lost update: every acknowledged put of a document has its own version, and the log
/// holds each acknowledged title exactly once at that version.
async fn assert_no_lost_update(
    http: &reqwest::Client,
    base: &str,
    acked: &BTreeMap<String, Vec<(u64, String)>>,
) {
    for (doc, puts) in acked {
        let versions: BTreeSet<u64> = puts.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            versions.len(),
            puts.len(),
            "{doc}: two acks share a version: {puts:?}"
        );
        let events: Value = http
            .get(format!(
                "{base}/v1/documents/{}/events",
                doc.replace('/', "%2F")
            ))
            .send()
            .await
            .expect("events")
            .json()
            .await
            .expect("json");
        let rows: Vec<(u64, String)> = events["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == "RowInserted")
            .map(|e| {
                (
                    e["data"]["version"].as_u64().unwrap_or_default(),
                    e["data"]["title"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for put in puts {
            assert_eq!(
                rows.iter().filter(|r| *r == put).count(),
                1,
                "{doc}: acknowledged {put:?} not exactly once in the log: {rows:?}"
            );
        }
    }
}

#[actix_rt::test]
async fn three_instances_share_partitions_and_lose_no_update() {
    let partitions = PARTITIONS.to_string();
    let extra = [
        ("DOCLEDGER_PARTITIONS", partitions.as_str()),
        ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
        ("DOCLEDGER_LEASE_POLL_MS", "200"),
    ];
    let a = TestService::start("instances_leases", &extra).await;
    let b = TestService::start_again(a.config.clone()).await;
    let c = TestService::start_again(a.config.clone()).await;
    let http = reqwest::Client::new();
    let bases: Vec<String> = [&a, &b, &c].iter().map(|s| s.url("")).collect();
    let first = eventually(
        Duration::from_secs(30),
        "one owner per partition, spread evenly",
        || spread_owners(&http, &bases),
    )
    .await;

    let docs = ["shared/a", "shared/b", "shared/c"];
    let acked = contend(&http, &bases, &docs, 4).await;
    assert!(!acked.is_empty());
    assert_no_lost_update(&http, &bases[1], &acked).await;

    // The owner goes away: its partitions move to the others within a bounded time.
    let owner = *first.values().next().expect("an owner");
    let (gone, rest): (Vec<_>, Vec<_>) = [a, b, c]
        .into_iter()
        .enumerate()
        .partition(|(i, _)| *i == owner);
    let gone_at = Instant::now();
    for (_, svc) in gone {
        svc.stop().await;
    }
    let rest: Vec<TestService> = rest.into_iter().map(|(_, s)| s).collect();
    let bases: Vec<String> = rest.iter().map(|s| s.url("")).collect();
    eventually(Duration::from_secs(10), "the partitions to move", || {
        spread_owners(&http, &bases)
    })
    .await;
    eprintln!(
        "partitions moved {:?} after the owner stopped",
        gone_at.elapsed()
    );

    let more = contend(&http, &bases, &docs, 3).await;
    assert_no_lost_update(&http, &bases[0], &more).await;
    eventually(Duration::from_secs(60), "every document consistent", || {
        let (http, base) = (&http, &bases[0]);
        async move {
            for doc in docs {
                let got: Value = http
                    .get(format!("{base}/v1/documents/{}", doc.replace('/', "%2F")))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                if got["consistent"] != true {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    // Standby partitions show the owner's progress: no instance reports a false lag.
    eventually(Duration::from_secs(30), "no lag on any instance", || {
        let http = &http;
        let bases = &bases;
        async move {
            for base in bases {
                let p: Value = http
                    .get(format!("{base}/v1/projections"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                if !p.as_array()?.iter().all(|s| s["lag_events"] == 0) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    for svc in rest {
        svc.stop().await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[actix_rt::test]
async fn a_killed_owners_partitions_move_to_the_survivor() {
    let partitions = PARTITIONS.to_string();
    let (_env, name, vars) = service_vars(
        "instances_kill",
        &[
            ("DOCLEDGER_PARTITIONS", partitions.as_str()),
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
            ("DOCLEDGER_LEASE_POLL_MS", "200"),
        ],
    );
    let http = reqwest::Client::new();
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let listens: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let bases: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
    let mut servers = Vec::new();
    for (listen, base) in listens.iter().zip(&bases) {
        servers.push(spawn_serve(&vars, listen, &log));
        wait_ready(&http, base, &log).await;
    }
    let first = eventually(
        Duration::from_secs(30),
        "one owner per partition, spread evenly",
        || spread_owners(&http, &bases),
    )
    .await;
    let docs = ["killed/a", "killed/b"];
    let acked = contend(&http, &bases, &docs, 3).await;
    assert_no_lost_update(&http, &bases[0], &acked).await;

    let owner = *first.values().next().expect("an owner");
    let survivor = 1 - owner;
    servers[owner].start_kill().expect("SIGKILL");
    servers[owner].wait().await.expect("reap");
    let killed_at = Instant::now();
    let survivor_base = vec![bases[survivor].clone()];
    eventually(
        Duration::from_secs(10),
        "the killed owner's partitions to move",
        || owners(&http, &survivor_base),
    )
    .await;
    let moved = killed_at.elapsed();
    eprintln!("partitions moved {moved:?} after SIGKILL of the owner");

    let more = contend(&http, &survivor_base, &docs, 2).await;
    assert_no_lost_update(&http, &bases[survivor], &more).await;
    eventually(Duration::from_secs(60), "docledger verify to pass", || {
        let vars = &vars;
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_docledger"))
                .arg("verify")
                .env_remove("DOCLEDGER_CONFIG")
                .envs(vars)
                .env("DOCLEDGER_LOG", "warn")
                .output()
                .await
                .expect("docledger verify runs");
            (out.status.code() == Some(0)).then_some(())
        }
    })
    .await;
    servers[survivor].start_kill().expect("SIGKILL");
    let _ = servers[survivor].wait().await;
}
