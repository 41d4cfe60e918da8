//! Several real `docledger serve` processes on one log and one set of stores: each listens on
//! its own port, logs to its own file, and can be killed (SIGKILL), stopped and restarted.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{eventually, service_vars, spawn_serve, wait_ready};

/// Settings of a cluster whose leases move fast: two partitions per store, leases polled
/// every 200 ms, no background verifier.
pub const FAST_LEASES: &[(&str, &str)] = &[
    ("DOCLEDGER_PARTITIONS", "2"),
    ("DOCLEDGER_LEASE_POLL_MS", "200"),
    ("DOCLEDGER_VERIFY_INTERVAL_SECS", "0"),
];

/// `GET /v1/projections` of the process at `base`, None when it does not answer.
pub async fn projections_at(http: &reqwest::Client, base: &str) -> Option<Value> {
    http.get(format!("{base}/v1/projections"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The partitions of `store` in `state` at any of the processes at `bases`, as their
/// `GET /v1/projections` shows them; None when one does not answer.
pub async fn partitions_in(
    http: &reqwest::Client,
    bases: &[String],
    store: &str,
    state: &str,
) -> Option<std::collections::BTreeSet<u64>> {
    let mut out = std::collections::BTreeSet::new();
    for base in bases {
        let all = projections_at(http, base).await?;
        let s = all.as_array()?.iter().find(|s| s["name"] == store)?;
        for p in s["partitions"].as_array()? {
            if p["state"] == state {
                out.insert(p["partition"].as_u64()?);
            }
        }
    }
    Some(out)
}

/// One `serve` process of a [`Cluster`].
pub struct Member {
    /// `127.0.0.1:port`.
    pub listen: String,
    /// Its DOCLEDGER_* settings (the cluster's, plus its own overrides).
    pub vars: HashMap<String, String>,
    /// Its output.
    pub log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Member {
    /// `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Processes sharing one log database, MySQL database, Milvus collection and S3 bucket.
pub struct Cluster {
    /// The shared DOCLEDGER_* settings.
    pub vars: HashMap<String, String>,
    /// The test's unique name (database, collection and bucket).
    pub name: String,
    /// The processes, by index.
    pub members: Vec<Member>,
    http: reqwest::Client,
}

fn free_listen() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

impl Cluster {
    /// Starts `n` processes of test `test` with `extra` settings, one after the other, each
    /// ready before the next starts.
    pub async fn start(test: &str, n: usize, extra: &[(&str, &str)]) -> Cluster {
        let (_env, name, vars) = service_vars(test, extra);
        let mut cluster = Cluster {
            vars,
            name,
            members: Vec::new(),
            http: reqwest::Client::new(),
        };
        for _ in 0..n {
            cluster.add(&[]).await;
        }
        cluster
    }

    /// Starts one more process with `overrides` on top of the shared settings; returns its
    /// index.
    pub async fn add(&mut self, overrides: &[(&str, &str)]) -> usize {
        let i = self.members.len();
        let mut vars = self.vars.clone();
        for (k, v) in overrides {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let log = std::env::temp_dir().join(format!("{}-{i}.log", self.name));
        self.members.push(Member {
            listen: free_listen(),
            vars,
            log,
            child: None,
        });
        self.restart(i).await;
        i
    }

    /// `http://127.0.0.1:port` of process `i`.
    pub fn base(&self, i: usize) -> String {
        self.members[i].base()
    }

    /// Bases of the running processes.
    pub fn running_bases(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(Member::base)
            .collect()
    }

    /// Kills process `i` with SIGKILL and reaps it.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.start_kill().expect("SIGKILL");
            let _ = child.wait().await;
        }
    }

    /// Stops process `i` gracefully (SIGTERM: it drains) and waits for it to exit.
    pub async fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: signalling a child process this test started and has not reaped.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let exited = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
            if exited.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
                panic!("process {i} did not stop within 60 s of SIGTERM");
            }
        }
    }

    /// (Re)starts process `i` on its port with its settings and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        let member = &mut self.members[i];
        member.child = Some(spawn_serve(&member.vars, &member.listen, &member.log));
        wait_ready(&self.http, &member.base(), &member.log).await;
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to process `i`.
    pub fn signal(&self, i: usize, signal: i32) {
        let pid = self.members[i]
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("a running process");
        // SAFETY: signalling a child process this test started and has not reaped.
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// Changes one setting of process `i` for its next start.
    pub fn set(&mut self, i: usize, key: &str, value: &str) {
        self.members[i]
            .vars
            .insert(key.to_owned(), value.to_owned());
    }

    /// Runs `docledger verify` against the shared stores; its exit code and output.
    pub async fn verify(&self) -> (Option<i32>, String) {
        let out = super::docledger_command(&self.vars)
            .arg("verify")
            .env("DOCLEDGER_LOG", "warn")
            .output()
            .await
            .expect("docledger verify runs");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Waits until every running process shows no projection lag and every partition of
    /// every store either running (owned here) or on standby (owned by another process),
    /// each owned by exactly one process.
    pub async fn caught_up(&self, timeout: Duration) {
        let bases = self.running_bases();
        eventually(timeout, "every projection to catch up", || {
            let (http, bases) = (&self.http, &bases);
            async move {
                let mut running: std::collections::BTreeMap<(String, u64), usize> =
                    Default::default();
                for base in bases {
                    let p = projections_at(http, base).await?;
                    for store in p.as_array()? {
                        if store["lag_events"] != 0 {
                            return None;
                        }
                        for part in store["partitions"].as_array()? {
                            let key = (
                                store["name"].as_str()?.to_owned(),
                                part["partition"].as_u64()?,
                            );
                            match part["state"].as_str()? {
                                "running" => *running.entry(key).or_default() += 1,
                                "standby" => {
                                    running.entry(key).or_default();
                                }
                                _ => return None,
                            }
                        }
                    }
                }
                running.values().all(|n| *n == 1).then_some(())
            }
        })
        .await;
    }

    /// The output of every process, for a failure message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "--- process {i} ---\n{}",
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Waits for `probe` on process `i` to hold, polling.
    pub async fn until<T, F, Fut>(&self, timeout: Duration, what: &str, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        eventually(timeout, what, probe).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}
