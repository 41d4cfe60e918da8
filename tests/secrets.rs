//! Secrets never leak (issue 8): the real `docledger serve` binary runs with API tokens, a
//! MySQL URL with a password (a throwaway MariaDB user), a PostgreSQL URL with a password and
//! the S3 secret key and the Milvus token, logging at debug level (human and JSON), through successful requests,
//! refused tokens, a MySQL outage (connections reset) and a wrong MySQL password; none of the
//! secrets may appear in its output, in any answer (status page, metrics, projections,
//! OpenAPI, documents, compensations) or in `docledger verify`'s output.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::{docledger_command, eventually, service_vars, spawn_serve_logged, wait_ready};
use futures::FutureExt;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

/// Hosts a throwaway MariaDB user is created for (a TCP connection from 127.0.0.1 may be
/// matched as either).
const USER_HOSTS: &[&str] = &["%", "localhost", "127.0.0.1"];

/// Everything a run printed or answered, labelled, for the leak check.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.0.push((what.into(), text.into()));
    }

    fn assert_free_of(&self, secrets: &[(&str, &str)]) {
        for (what, text) in &self.0 {
            for (name, secret) in secrets {
                assert!(
                    !text.contains(secret),
                    "the {name} appears in {what}:\n{}",
                    excerpt(text, secret)
                );
            }
        }
    }

    fn all(&self) -> String {
        self.0
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn excerpt(text: &str, secret: &str) -> String {
    let at = text.find(secret).unwrap_or(0);
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(300)
        .map_or(0, |(i, _)| i);
    let end = text[at..]
        .char_indices()
        .nth(300)
        .map_or(text.len(), |(i, _)| at + i);
    text[start..end].to_owned()
}

fn secret(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("{label}{nanos:x}Z{}", std::process::id())
}

fn with_password(url: &str, user: &str, password: &str) -> String {
    let mut u = url::Url::parse(url).expect("a store url");
    u.set_username(user).expect("a user");
    u.set_password(Some(password)).expect("a password");
    u.to_string()
}

fn put_body(title: &str) -> Value {
    json!({
        "title": title,
        "source_type": "note",
        "chunks": [{"text": title, "vector": vec![0.5f32; 8]}],
    })
}

async fn mysql_admin(env: &projections::testing::StoreEnv) -> mysql_async::Conn {
    mysql_async::Conn::from_url(&env.mysql_url)
        .await
        .expect("connect to MariaDB as its admin")
}

async fn create_user(env: &projections::testing::StoreEnv, user: &str, password: &str, db: &str) {
    let mut admin = mysql_admin(env).await;
    admin
        .query_drop(format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
        .await
        .expect("create the test database");
    for host in USER_HOSTS {
        admin
            // The password is generated from [A-Za-z0-9]: safe inside quotes.
            .query_drop(format!(
                "CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'"
            ))
            .await
            .expect("create the throwaway user");
        admin
            .query_drop(format!("GRANT ALL ON `{db}`.* TO '{user}'@'{host}'"))
            .await
            .expect("grant the test database");
    }
    admin.disconnect().await.expect("disconnect");
}

async fn drop_user(env: &projections::testing::StoreEnv, user: &str) {
    let mut admin = mysql_admin(env).await;
    for host in USER_HOSTS {
        admin
            .query_drop(format!("DROP USER IF EXISTS '{user}'@'{host}'"))
            .await
            .expect("drop the throwaway user");
    }
    admin.disconnect().await.expect("disconnect");
}

/// Runs `docledger ARGS` with `vars` at debug level; `(exit code, stdout + stderr)`.
async fn run_cli(vars: &HashMap<String, String>, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        docledger_command(vars)
            .args(args)
            .env("DOCLEDGER_LOG", "debug")
            .env("RUST_LOG", "debug")
            .output(),
    )
    .await
    .expect("the command ends within 120 s")
    .expect("docledger runs");
    (
        out.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// GETs `path` (with `token`), recording the answer.
async fn fetch(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    seen: &mut Seen,
) -> (u16, String) {
    let mut req = http.get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("the service answers");
    let status = res.status().as_u16();
    let headers = format!("{:?}", res.headers());
    let text = res.text().await.expect("a body");
    seen.add(format!("GET {path}"), format!("{headers}\n{text}"));
    (status, text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Sends SIGTERM and waits for the exit (the shutdown path logs too).
async fn terminate(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(45), child.wait()).await;
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[actix_rt::test]
async fn tokens_and_store_passwords_never_appear_in_output_or_answers() {
    let token = secret("tok");
    let other_token = secret("tok2-");
    let mysql_password = secret("mypw");
    let wrong_mysql_password = secret("badpw");
    let pg_password = secret("pgpw");
    let (env, name, mut vars) = service_vars(
        "secrets",
        &[
            ("DOCLEDGER_VERIFY_INTERVAL_SECS", "1"),
            ("DOCLEDGER_VERIFY_SAMPLE", "10"),
            ("DOCLEDGER_RETRY_BASE_MS", "20"),
            ("DOCLEDGER_RETRY_MAX_MS", "200"),
        ],
    );
    let user = format!("dlsec{}", std::process::id());
    vars.insert(
        "DOCLEDGER_API_TOKENS".into(),
        format!("{token},{other_token}"),
    );
    vars.insert(
        "DOCLEDGER_EVENTSTORE_URL".into(),
        with_password(&env.pg_database_url(&name), "postgres", &pg_password),
    );
    let mysql_url = with_password(&env.mysql_database_url(&name), &user, &mysql_password);
    let s3_secret = env.s3_secret_key.clone();
    // The Milvus token as the client sends it (`root:Milvus` with the stores' defaults).
    let milvus_token = env
        .milvus_token
        .clone()
        .unwrap_or_else(|| secret("no-milvus-token"));
    let secrets = [
        ("Milvus token", milvus_token.as_str()),
        ("API token", token.as_str()),
        ("second API token", other_token.as_str()),
        ("MySQL password", mysql_password.as_str()),
        ("wrong MySQL password", wrong_mysql_password.as_str()),
        ("PostgreSQL password", pg_password.as_str()),
        ("S3 secret key", s3_secret.as_str()),
    ];

    drop_user(&env, &user).await;
    create_user(&env, &user, &mysql_password, &name).await;
    let outcome = std::panic::AssertUnwindSafe(async {
        let dir = std::env::temp_dir().join(format!("docledger-{name}"));
        std::fs::create_dir_all(&dir).expect("log dir");
        let mut seen = Seen::default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");

        // Run 1: human logs, MySQL behind a proxy that resets its connections for a while.
        let proxy = Proxy::to_url(&mysql_url).await;
        let mut run_vars = vars.clone();
        // (`url_for` keeps mysql_async off the server's Unix socket, which would bypass
        // the proxy.)
        run_vars.insert("DOCLEDGER_MYSQL_URL".into(), proxy.url_for(&mysql_url));
        let listen = format!("127.0.0.1:{}", free_port());
        let base = format!("http://{listen}");
        let log = dir.join("serve-human.log");
        let server = spawn_serve_logged(&run_vars, &listen, &log, "debug", &[]);
        wait_ready(&http, &base, &log).await;
        let doc_url = |doc: &str, rest: &str| format!("{base}/v1/documents/{doc}{rest}");
        for i in 0..3 {
            let res = http
                .put(doc_url(
                    &format!("secret-{i}"),
                    "?consistency=applied&timeout_ms=30000",
                ))
                .bearer_auth(&token)
                .json(&put_body(&format!("doc {i}")))
                .send()
                .await
                .expect("put");
            assert_eq!(res.status().as_u16(), 200);
            seen.add("put answer", res.text().await.expect("body"));
        }
        let res = http
            .post(format!("{base}/v1/documents:batch"))
            .bearer_auth(&other_token)
            .body(
                (3..5)
                    .map(|i| {
                        let mut line = put_body(&format!("doc {i}"));
                        line["op"] = json!("put");
                        line["doc_id"] = json!(format!("secret-{i}"));
                        line.to_string()
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
            .send()
            .await
            .expect("batch");
        assert_eq!(res.status().as_u16(), 200);
        seen.add("batch answer", res.text().await.expect("body"));
        // Refused tokens: wrong, truncated, missing, not a bearer.
        let truncated = &token[..token.len() - 1];
        for (what, auth) in [
            ("wrong token", Some(format!("Bearer {}", secret("nope")))),
            ("truncated token", Some(format!("Bearer {truncated}"))),
            ("no token", None),
            ("basic auth", Some(format!("Basic {token}"))),
        ] {
            let mut req = http.put(doc_url("secret-0", "")).json(&put_body("refused"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.expect("refused put");
            assert_eq!(res.status().as_u16(), 401, "{what}");
            seen.add(format!("401 for {what}"), res.text().await.expect("body"));
        }
        // A MySQL outage: the projector's errors are logged and reported, then it recovers.
        proxy.set(Fault::Reset);
        for i in 5..8 {
            let res = http
                .put(doc_url(&format!("secret-{i}"), ""))
                .bearer_auth(&token)
                .json(&put_body(&format!("doc {i}")))
                .send()
                .await
                .expect("put during the outage");
            assert_eq!(res.status().as_u16(), 200);
        }
        let (h, b, t) = (&http, &base, &token);
        let outage_seen = eventually(
            Duration::from_secs(30),
            "the MySQL error in /v1/projections",
            move || async move {
                let mut scratch = Seen::default();
                let (_, text) = fetch(h, b, "/v1/projections", Some(t), &mut scratch).await;
                let mysql_error = serde_json::from_str::<Value>(&text)
                    .ok()?
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == "mysql")
                    .map(|s| s["last_error"].clone())
                    .filter(|e| !e.is_null());
                mysql_error.map(|_| scratch)
            },
        )
        .await;
        seen.0.extend(outage_seen.0);
        for path in ["/", "/metrics", "/v1/openapi.json", "/v1/compensations"] {
            fetch(&http, &base, path, Some(&token), &mut seen).await;
        }
        proxy.set(Fault::Pass);
        eventually(
            Duration::from_secs(60),
            "every document ready after the outage",
            move || async move {
                let mut ready = true;
                for i in 0..8 {
                    let res = h
                        .get(format!("{b}/v1/documents/secret-{i}"))
                        .bearer_auth(t)
                        .send()
                        .await
                        .ok()?;
                    let doc: Value = res.json().await.ok()?;
                    ready &= doc["ready"] == json!(true);
                }
                ready.then_some(())
            },
        )
        .await;
        for path in [
            "/",
            "/metrics",
            "/healthz",
            "/readyz",
            "/v1/projections",
            "/v1/openapi.json",
            "/v1/compensations",
            "/v1/documents/secret-1?verify=true",
            "/v1/documents/secret-1/events",
        ] {
            let (status, _) = fetch(&http, &base, path, Some(&token), &mut seen).await;
            assert_eq!(status, 200, "GET {path}");
        }
        let (status, _) = fetch(&http, &base, "/v1/projections", None, &mut seen).await;
        assert_eq!(status, 401);
        let (code, out) = run_cli(&run_vars, &["verify", "--json"]).await;
        assert_eq!(code, Some(0), "verify --json: {out}");
        seen.add("verify --json", out);
        let (code, out) = run_cli(&run_vars, &["verify"]).await;
        assert_eq!(code, Some(0), "verify: {out}");
        seen.add("verify", out);
        terminate(server).await;
        let human = read_log(&log);
        assert!(
            human.contains("DEBUG") && human.contains("docledger serving"),
            "the run logged at debug level: {}",
            excerpt(&human, "docledger")
        );
        seen.add("serve output (human)", human);

        // Run 2: JSON logs, MySQL with a wrong password.
        let mut run_vars = vars.clone();
        run_vars.insert(
            "DOCLEDGER_MYSQL_URL".into(),
            with_password(&env.mysql_database_url(&name), &user, &wrong_mysql_password),
        );
        let listen = format!("127.0.0.1:{}", free_port());
        let base = format!("http://{listen}");
        let log = dir.join("serve-json.log");
        let mut server =
            spawn_serve_logged(&run_vars, &listen, &log, "debug", &["--log-format", "json"]);
        // It may refuse to start (the catalogue cannot be reached) or start and report it.
        let started = Instant::now();
        let mut up = false;
        while started.elapsed() < Duration::from_secs(30) {
            if server.try_wait().expect("poll the child").is_some() {
                break;
            }
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                up = r.status().is_success();
                if up {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if up {
            let res = http
                .put(format!("{base}/v1/documents/secret-late"))
                .bearer_auth(&token)
                .json(&put_body("late"))
                .send()
                .await
                .expect("put");
            seen.add(
                "put answer (wrong MySQL password)",
                res.text().await.expect("body"),
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
            for path in ["/", "/metrics", "/v1/projections", "/v1/compensations"] {
                fetch(&http, &base, path, Some(&token), &mut seen).await;
            }
        }
        terminate(server).await;
        let json_log = read_log(&log);
        assert!(
            json_log
                .lines()
                .any(|l| serde_json::from_str::<Value>(l).is_ok()),
            "JSON log lines: {}",
            excerpt(&json_log, "{")
        );
        seen.add("serve output (json, wrong MySQL password)", json_log);
        let (code, out) = run_cli(&run_vars, &["--log-format", "json", "verify", "--json"]).await;
        assert_ne!(code, Some(0), "verify with a wrong password fails: {out}");
        seen.add("verify --json (wrong MySQL password)", out);

        // The error paths ran (the outage and MySQL's refusal are in what was seen), and
        // what was seen names the stores' users and keys: only their secrets are hidden.
        let everything = seen.all();
        for expected in [
            "Access denied",
            "batch apply failed, retrying",
            user.as_str(),
            env.s3_access_key.as_str(),
        ] {
            assert!(everything.contains(expected), "{expected:?} was never seen");
        }
        seen.assert_free_of(&secrets);
        eprintln!(
            "secrets: {} outputs and answers checked ({} bytes), none holds a secret",
            seen.0.len(),
            everything.len()
        );
        drop(proxy);
    })
    .catch_unwind()
    .await;
    drop_user(&env, &user).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
