//! The status page at `/`: server-rendered HTML, no build step, refreshing itself. Per store
//! its state, lag, throughput over the last minutes as a small SVG chart, its partitions and
//! their owner, then open compensations with their reasons and the last verify result.

use std::fmt::Write;

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::AppState;
use crate::actors::history::Sample;

/// Seconds between the page's own refreshes.
const REFRESH_SECS: u32 = 5;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Events per second between consecutive samples of one store.
fn throughput(samples: &[Sample], store: &str) -> Vec<f64> {
    samples
        .windows(2)
        .map(|w| {
            let get = |s: &Sample| {
                s.stores
                    .iter()
                    .find(|x| x.name == store)
                    .map_or(0, |x| x.events_applied)
            };
            let dt = ((w[1].at_ms - w[0].at_ms).max(1)) as f64 / 1000.0;
            get(&w[1]).saturating_sub(get(&w[0])) as f64 / dt
        })
        .collect()
}

fn sparkline(values: &[f64], label: &str) -> String {
    let (w, h) = (240.0, 48.0);
    let max = values.iter().cloned().fold(1.0, f64::max);
    let n = values.len().max(2) as f64 - 1.0;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * w / n,
                h - v / max * (h - 4.0) - 2.0
            )
        })
        .collect();
    format!(
        r##"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{label}"><rect width="{w}" height="{h}" fill="#f4f6f8"/><polyline fill="none" stroke="#2563eb" stroke-width="2" points="{}"/><text x="4" y="12" font-size="10" fill="#555">max {max:.0}/s</text></svg>"##,
        points.join(" ")
    )
}

/// `GET /`.
pub async fn page(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::authorize_view(&req, &state.config)?;
    let stores = state.projections.status(&state.log).await?;
    let compensations = state.log.parked().compensations(None, 50).await?;
    let log_bytes = state.log.reads().database_bytes().await?;
    // Read without creating a series: a process whose passes never ran reports none.
    let removed = |what| {
        state
            .metrics
            .compaction_removed
            .get(&crate::metrics::RemovedLabels { what })
            .map_or(0, |c| c.get())
    };
    let expired = removed("idempotency_keys");
    let contents = removed("event_contents");
    let blobs = removed("blobs");
    let samples = state.history.samples();
    let stats = state.verifier.stats();
    let owner = &state.instance;
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECS}">
<title>docledger status</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#111}} h1{{font-size:20px}} h2{{font-size:16px;margin-top:28px}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ddd;padding:4px 8px;font-size:13px;text-align:left}}
.ok{{color:#15803d}} .bad{{color:#b91c1c}} .cards{{display:flex;gap:16px;flex-wrap:wrap}}
.card{{border:1px solid #ddd;border-radius:8px;padding:12px;min-width:260px}} .big{{font-size:22px;font-weight:600}}
</style></head><body><h1>docledger</h1>
<p>log head position <b id="head">{head}</b> · log size <b id="log-size">{log_mib:.1} MiB</b> · compaction here: content of <b id="contents-removed">{contents}</b> events and <b id="blobs-removed">{blobs}</b> blobs removed, idempotency keys expired <b id="expired">{expired}</b> · oldest running transaction <b>{oldest:.1}s</b> · live actors <b>{actors}</b> · refreshed every {REFRESH_SECS}s</p>
<div class="cards">"#,
        head = stores.first().map_or(0, |s| s.head_position),
        log_mib = log_bytes as f64 / (1024.0 * 1024.0),
        oldest = stores
            .first()
            .map_or(0.0, |s| s.oldest_running_xact_seconds),
        actors = state.registry.live_actors(),
    );
    for s in &stores {
        let class = if s.state == "running" { "ok" } else { "bad" };
        let rates = throughput(&samples, s.name);
        let current = rates.last().copied().unwrap_or(0.0);
        let _ = write!(
            html,
            r#"<div class="card" id="store-{name}"><div><b>{name}</b> <span class="{class}">{state}</span></div>
<div class="big"><span class="lag">{lag}</span> events behind</div><div>{lag_s:.1}s lag · {current:.1} events/s · applied position {applied}</div>
{chart}{err}</div>"#,
            name = s.name,
            state = esc(s.state),
            lag = s.lag_events,
            lag_s = s.lag_seconds,
            applied = s.applied_position,
            chart = sparkline(&rates, &format!("{} throughput", s.name)),
            err = s
                .last_error
                .as_deref()
                .map(|e| format!(r#"<div class="bad">last error: {}</div>"#, esc(e)))
                .unwrap_or_default(),
        );
    }
    html.push_str("</div><h2>Partitions</h2><table><tr><th>store</th><th>partition</th><th>owner</th><th>state</th><th>applied position</th><th>lag (events)</th><th>applied here</th></tr>");
    for s in &stores {
        for p in &s.partitions {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                s.name,
                p.partition,
                if p.state == "standby" { "another instance (lease)".to_owned() } else { esc(owner) },
                esc(p.state),
                p.applied_position,
                p.lag_events,
                p.events_applied
            );
        }
    }
    html.push_str("</table><h2>Open compensations</h2>");
    let open: Vec<_> = compensations
        .iter()
        .filter(|c| c.state.is_unsettled())
        .collect();
    if open.is_empty() {
        html.push_str(r#"<p class="ok" id="compensations">none</p>"#);
    } else {
        html.push_str(r#"<table id="compensations"><tr><th>document</th><th>store</th><th>version</th><th>state</th><th>reason</th><th>since</th></tr>"#);
        for c in open {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.doc_id),
                esc(&c.store),
                c.version,
                c.state,
                esc(&c.reason),
                esc(&c.parked_at)
            );
        }
        html.push_str("</table>");
    }
    use std::sync::atomic::Ordering::Relaxed;
    let last_run = stats.last_run_unix_seconds.load(Relaxed);
    html.push_str("<h2>Last verify</h2>");
    if last_run == 0 {
        html.push_str(r#"<p id="verify">no background verification has completed yet</p>"#);
    } else {
        let drifted = stats.drifted_documents.load(Relaxed);
        let ago = (projections::runner::now_ms() / 1000).saturating_sub(last_run as i64);
        let _ = write!(
            html,
            r#"<p id="verify" class="{}">{} drifted documents in the last sample ({}s ago); {} runs, {} documents checked, {} findings in all</p>"#,
            if drifted == 0 { "ok" } else { "bad" },
            drifted,
            ago,
            stats.runs_total.load(Relaxed),
            stats.documents_total.load(Relaxed),
            stats.drift_findings_total.load(Relaxed),
        );
    }
    html.push_str("</body></html>");
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::history::StoreSample;

    #[test]
    fn throughput_is_the_rate_between_samples() {
        let sample = |at_ms, n| Sample {
            at_ms,
            stores: vec![StoreSample {
                name: "mysql",
                events_applied: n,
                lag_events: 0,
            }],
        };
        let rates = throughput(
            &[sample(0, 0), sample(2000, 100), sample(4000, 100)],
            "mysql",
        );
        assert_eq!(rates, vec![50.0, 0.0]);
        assert!(sparkline(&rates, "x").contains("<polyline"));
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
