//! The status page in a real browser: headless Chromium (Debian's `chromium`) loads `/`,
//! the rendered DOM shows every store with live figures, and a screenshot is taken.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestService;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

async fn chromium(args: &[&str]) -> std::process::Output {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `apt-get install chromium` (scripts/test.sh does it)"
    );
    let profile = std::env::temp_dir().join(format!("docledger-chromium-{}", std::process::id()));
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finishes within a minute")
        .expect("chromium runs")
}

#[actix_rt::test]
async fn the_status_page_shows_live_figures_in_a_browser() {
    // Background compaction every second, keeping one version: the second version of
    // `status/0` makes a pass remove the first one's content.
    let svc = TestService::start(
        "status_page",
        &[
            ("DOCLEDGER_RETAIN_VERSIONS", "1"),
            ("DOCLEDGER_RETAIN_DAYS", "0"),
            ("DOCLEDGER_COMPACT_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    for i in 0..11 {
        let title = if i == 10 {
            "t0 again".to_owned()
        } else {
            format!("t{i}")
        };
        let doc = format!("status/{}", i % 10);
        let body = json!({"title": title, "source_type": "s", "chunks": [{"text": "x", "vector": vec![0.1f32; 8]}]});
        let res = http
            .put(svc.doc_url(&doc, "?consistency=applied&timeout_ms=30000"))
            .json(&body)
            .send()
            .await
            .expect("put");
        assert_eq!(res.status().as_u16(), 200);
    }
    let head = {
        let text = http
            .get(svc.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix("docledger_log_head_position "))
            .map(|v| v.trim().to_owned())
            .expect("head position metric")
    };
    let removed = common::eventually(Duration::from_secs(30), "a compaction pass", || async {
        let text = http
            .get(svc.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(r#"docledger_compaction_removed_total{what="event_contents"} "#)
            })
            .map(|v| v.trim().to_owned())
            .filter(|v| v != "0")
    })
    .await;
    let url = svc.url("/");
    let dom = chromium(&["--virtual-time-budget=3000", "--dump-dom", &url]).await;
    let dom = String::from_utf8_lossy(&dom.stdout);
    for store in ["mysql", "milvus", "s3"] {
        assert!(
            dom.contains(&format!(r#"id="store-{store}""#)),
            "store card {store} missing: {dom}"
        );
    }
    assert!(
        dom.contains(&format!(r#"<b id="head">{head}</b>"#)),
        "the page shows the live head position {head}"
    );
    assert!(dom.contains("<polyline"), "throughput charts are drawn");
    assert!(
        dom.contains(&format!(r#"<b id="contents-removed">{removed}</b>"#)),
        "the page shows the content the passes removed ({removed} events): {dom}"
    );
    let log_mib: f64 = dom
        .split(r#"<b id="log-size">"#)
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|mib| mib.parse().ok())
        .unwrap_or_else(|| panic!("the page shows the log's size: {dom}"));
    assert!(
        log_mib > 1.0,
        "a log database holds more than 1 MiB: {log_mib}"
    );
    assert!(dom.contains(r#"id="compensations""#) && dom.contains("Partitions"));

    let shot: PathBuf = std::env::temp_dir().join(format!("{}-status.png", svc.name));
    let out = chromium(&[
        "--window-size=1280,900",
        &format!("--screenshot={}", shot.display()),
        &url,
    ])
    .await;
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}): {}",
            shot.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
    println!("status page screenshot: {}", shot.display());
    svc.stop().await;
}
