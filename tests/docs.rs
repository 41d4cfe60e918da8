//! The contract documentation under `docs/` names everything the code exposes, so that a
//! setting, an endpoint, a subcommand or a metric cannot be added without its page:
//!
//! - every configuration key (`docledger::config::keys`) is in `docs/configuration.md`;
//! - every path, method and parameter of the OpenAPI document, every route the server
//!   registers, and every error code are in `docs/api.md`;
//! - every subcommand and long option of the `docledger` binary (read from its `--help`) is
//!   in `docs/cli.md`;
//! - every metric `/metrics` exposes, under its exposed name, is in `docs/metrics.md`.
//!
//! What the pages say about each name is not checked: that is for review. No store is
//! needed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use docledger::actors::projector::{PartitionStatus, StoreStatus};
use docledger::api::scrape::Scrape;
use docledger::eventlog::AppendStats;
use docledger::metrics::{
    CommandLabels, Metrics, OutcomeLabels, RemovedLabels, ResponseLabels, RouteLabels,
};
use docledger::verify::VerifyStats;

/// The text of `docs/{name}`.
fn page(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Whether `text` holds `word` with no word character right before or after it, so that
/// `DOCLEDGER_S3_ACCESS_KEY_FILE` does not count as `DOCLEDGER_S3_ACCESS_KEY`, nor
/// `--sequential-docs` as `--docs`.
fn mentions(text: &str, word: &str, is_word_char: fn(char) -> bool) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
    })
}

/// Characters of an identifier (a variable or metric name).
fn identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Characters that may continue a route (`/v1/documents` is not `/v1/documents/{doc_id}`).
fn route_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/:{}_.-".contains(c)
}

/// Characters of a command-line option or subcommand name.
fn option_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Fails with every missing name at once, so one run shows all the page needs.
fn assert_none_missing(page: &str, what: &str, missing: &[String]) {
    assert!(
        missing.is_empty(),
        "docs/{page} does not mention these {what} (add them, with their meaning): {missing:#?}"
    );
}

#[test]
fn every_configuration_key_is_in_configuration_md() {
    let text = page("configuration.md");
    let keys: Vec<String> = docledger::config::keys()
        .map(|key| format!("{}{key}", docledger::config::ENV_PREFIX))
        .collect();
    assert!(keys.len() > 30, "the configuration has {} keys", keys.len());
    let missing: Vec<String> = keys
        .into_iter()
        .filter(|var| !mentions(&text, var, identifier_char))
        .collect();
    assert_none_missing("configuration.md", "configuration keys", &missing);
}

/// `(METHOD, path)` of every `.route(...)` that `docledger::api::routes` registers, read
/// from its source (the route table is a function, not data).
fn registered_routes() -> Vec<(String, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/api/mod.rs");
    let source = std::fs::read_to_string(&path).expect("src/api/mod.rs");
    let mut routes = Vec::new();
    for (at, _) in source.match_indices(".route(") {
        let rest = &source[at..];
        let mut quoted = rest.split('"');
        let route = quoted.nth(1).expect("a route path");
        let method = rest
            .split_once("web::")
            .and_then(|(_, after)| after.split_once('('))
            .map(|(method, _)| method.to_ascii_uppercase())
            .expect("a route method");
        routes.push((method, route.to_owned()));
    }
    routes
}

#[test]
fn every_endpoint_parameter_and_error_code_is_in_api_md() {
    let text = page("api.md");
    let openapi =
        serde_json::to_value(docledger::api::openapi::document()).expect("OpenAPI as JSON");
    let paths = openapi["paths"].as_object().expect("OpenAPI paths");
    assert!(
        paths.len() >= 10,
        "the OpenAPI document has {} paths",
        paths.len()
    );
    let mut missing = Vec::new();
    for (path, item) in paths {
        if !mentions(&text, path, route_char) {
            missing.push(path.clone());
        }
        let operations = item.as_object().expect("a path item");
        for (method, operation) in operations {
            if !["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                continue;
            }
            let endpoint = format!("{} {path}", method.to_ascii_uppercase());
            if !mentions(&text, &endpoint, route_char) {
                missing.push(endpoint.clone());
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().expect("a parameter name");
                if !text.contains(&format!("`{name}`")) {
                    missing.push(format!("parameter `{name}` of {endpoint}"));
                }
            }
        }
    }
    let routes = registered_routes();
    assert!(routes.len() >= 14, "src/api/mod.rs registers {routes:?}");
    for (method, path) in routes {
        let endpoint = format!("{method} {path}");
        if !mentions(&text, &endpoint, route_char) {
            missing.push(format!("route {endpoint}"));
        }
    }
    // The codes of `ErrorDetail.code`, listed in its description as `...: a, b, c.`.
    let description = openapi["components"]["schemas"]["ErrorDetail"]["properties"]["code"]
        ["description"]
        .as_str()
        .expect("ErrorDetail.code has a description");
    let codes: Vec<&str> = description
        .split_once(':')
        .map(|(_, list)| list)
        .unwrap_or_default()
        .split(',')
        .map(|code| code.trim().trim_end_matches('.'))
        .filter(|code| !code.is_empty())
        .collect();
    assert!(
        codes.len() >= 10
            && codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
        "ErrorDetail.code's description no longer lists the codes as `...: a, b, c.` \
         (update this test): {description:?}"
    );
    for code in codes {
        if !text.contains(&format!("`{code}`")) {
            missing.push(format!("error code `{code}`"));
        }
    }
    assert_none_missing("api.md", "endpoints, parameters or error codes", &missing);
}

/// `docledger <args>`'s standard output.
fn docledger(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_docledger"))
        .args(args)
        .output()
        .expect("run docledger");
    assert!(out.status.success(), "docledger {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The names listed in `help`'s section `heading` (`Commands:`), one per line.
fn section_names(help: &str, heading: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != heading)
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The long options (`--config`, ...) in `help`'s option lines.
fn long_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .flat_map(|line| line.split(|c: char| c.is_whitespace() || c == ','))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| {
            word.chars()
                .take_while(|c| *c == '-' || option_char(*c))
                .collect()
        })
        .collect()
}

#[test]
fn every_cli_subcommand_and_option_is_in_cli_md() {
    let text = page("cli.md");
    let help = docledger(&["--help"]);
    let subcommands = section_names(&help, "Commands:");
    assert!(
        subcommands.len() >= 7 && subcommands.iter().any(|c| c == "serve"),
        "cannot read the subcommands from `docledger --help`:\n{help}"
    );
    let mut missing = Vec::new();
    let mut options = long_options(&help);
    for subcommand in &subcommands {
        if !mentions(&text, &format!("`{subcommand}`"), option_char) {
            missing.push(format!("subcommand `{subcommand}`"));
        }
        if subcommand == "help" {
            continue;
        }
        if !text.contains(&format!("## docledger {subcommand}")) {
            missing.push(format!("section `## docledger {subcommand}`"));
        }
        options.extend(long_options(&docledger(&[subcommand, "--help"])));
    }
    assert!(
        options.contains("--config") && options.contains("--sync-prefix"),
        "cannot read the options from the help: {options:?}"
    );
    for option in options {
        if !mentions(&text, &option, option_char) {
            missing.push(format!("option {option}"));
        }
    }
    assert_none_missing("cli.md", "subcommands or options", &missing);
}

/// The exposed name of every metric `/metrics` renders: the name of each `# TYPE` line,
/// with the suffix the OpenMetrics encoder gives its samples (`_total` for a counter,
/// `_info` for an info metric). A family without samples is not rendered at all, so each
/// labelled family gets one sample first.
fn exposed_metric_names() -> BTreeSet<String> {
    let appends = AppendStats::default();
    let metrics = Metrics::new(&appends);
    metrics
        .http_requests
        .get_or_create(&ResponseLabels {
            method: "GET".into(),
            route: "/healthz".into(),
            status: "200".into(),
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: "GET".into(),
            route: "/healthz".into(),
        })
        .observe(0.001);
    metrics
        .commands
        .get_or_create(&CommandLabels {
            command: "put",
            outcome: "committed",
        })
        .observe(0.001);
    metrics.batch_observer("mysql", 0)(Duration::from_millis(1));
    metrics
        .compaction_passes
        .get_or_create(&OutcomeLabels { outcome: "done" })
        .inc();
    metrics
        .compaction_removed
        .get_or_create(&RemovedLabels {
            what: "idempotency_keys",
        })
        .inc();
    let verify = VerifyStats::default();
    // One running partition: the per-partition gauges come only from a partition's owner.
    let stores = vec![StoreStatus {
        name: "mysql",
        state: "running",
        applied_position: 0,
        head_position: 0,
        lag_events: 0,
        lag_seconds: 0.0,
        last_error: None,
        oldest_running_xact_seconds: 0.0,
        partitions: vec![PartitionStatus {
            partition: 0,
            state: "running",
            applied_position: 0,
            lag_events: 0,
            lag_seconds: 0.0,
            last_error: None,
            events_applied: 0,
            batches: 0,
            changes_applied: 0,
            apply_seconds: 0.0,
            transient_retries: 0,
            permanent_failures: 0,
        }],
        rebuild: None,
    }];
    let scrape = Scrape {
        log_up: true,
        stores: &stores,
        open_compensations: 0,
        log_bytes: 1 << 20,
        live_actors: 0,
        appends: &appends,
        verify: &verify,
    };
    let text = scrape.render(&metrics);
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next().expect("a metric name");
            match words.next() {
                Some("counter") => format!("{name}_total"),
                Some("info") => format!("{name}_info"),
                _ => name.to_owned(),
            }
        })
        .collect()
}

#[test]
fn every_metric_is_in_metrics_md() {
    let text = page("metrics.md");
    let names = exposed_metric_names();
    for expected in [
        "docledger_http_requests_total",
        "docledger_build_info",
        "docledger_projection_lag_seconds",
        "docledger_projection_batch_duration_seconds",
        "docledger_log_up",
    ] {
        assert!(
            names.contains(expected),
            "/metrics no longer renders {expected} (update this test): {names:?}"
        );
    }
    let missing: Vec<String> = names
        .into_iter()
        .filter(|name| !mentions(&text, name, identifier_char))
        .collect();
    assert_none_missing("metrics.md", "metrics", &missing);
}
