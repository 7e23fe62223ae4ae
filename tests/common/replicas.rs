//! A primary with streaming replicas for read/write-splitting tests: one replica that keeps up and, optionally, one
//! whose replay is held back by `recovery_min_apply_delay`. Which server answered is read from `inet_server_port()`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use super::{Backend, TestProxy};
use shardpool::pgcluster::{PgServer, ServerOptions};

pub struct Replicated {
    pub backend: Backend,
    pub fast: PgServer,
    pub slow: Option<PgServer>,
}

impl Replicated {
    /// `synchronous_commit = on` on the primary, as in production: a commit is in the WAL replicas stream when it
    /// returns. `setup` runs on the primary (as superuser, in the test database) before the replicas are cloned.
    pub async fn start(delay: Option<Duration>, setup: &str) -> Replicated {
        let opts = ServerOptions::default().with("synchronous_commit", "on");
        let backend = Backend::start_with(opts).await;
        if !setup.is_empty() {
            backend.sql(setup);
        }
        let (fast, slow) = tokio::task::block_in_place(|| {
            let fast = backend.pg.start_replica(None).unwrap();
            let slow = delay.map(|d| backend.pg.start_replica(Some(d)).unwrap());
            (fast, slow)
        });
        Replicated {
            backend,
            fast,
            slow,
        }
    }

    pub fn primary_port(&self) -> u16 {
        self.backend.pg.port()
    }

    pub fn slow_port(&self) -> u16 {
        self.slow.as_ref().map(|s| s.port()).unwrap_or(0)
    }

    /// The proxy config: the primary and its replicas as database `appdb`, with `database_lines` added to it.
    pub fn proxy_toml(&self, database_lines: &str) -> String {
        let mut replicas = vec![format!("{{ port = {} }}", self.fast.port())];
        if let Some(slow) = &self.slow {
            replicas.push(format!("{{ port = {} }}", slow.port()));
        }
        format!(
            "{}\nreplicas = [{}]\n{database_lines}\n",
            self.backend
                .config_toml("pool_size = 10\nreplica_poll_interval = \"50ms\""),
            replicas.join(", ")
        )
    }

    /// A proxy whose monitor has seen every server in its role.
    pub async fn proxy(&self, database_lines: &str) -> TestProxy {
        let proxy = TestProxy::start(&self.proxy_toml(database_lines)).await;
        let expect = 2 + usize::from(self.slow.is_some());
        super::eventually(
            Duration::from_secs(20),
            "monitor to poll every server",
            || async {
                let rows = replica_rows(&proxy).await;
                rows.len() == expect
                    && rows
                        .values()
                        .all(|r| r["lsn"] != "0/0" && !r["lsn"].is_empty())
                    && rows
                        .iter()
                        .all(|(p, r)| (r["in_recovery"] == "t") == (*p != self.primary_port()))
            },
        )
        .await;
        proxy
    }
}

/// SHOW REPLICAS, by port.
pub async fn replica_rows(proxy: &TestProxy) -> HashMap<u16, HashMap<String, String>> {
    proxy
        .admin("SHOW REPLICAS")
        .await
        .into_iter()
        .map(|r| (r["port"].parse().unwrap(), r))
        .collect()
}

/// Reads served per server port, from SHOW REPLICAS.
pub async fn reads_served(proxy: &TestProxy) -> HashMap<u16, u64> {
    replica_rows(proxy)
        .await
        .into_iter()
        .map(|(p, r)| (p, r["reads_served"].parse().unwrap()))
        .collect()
}

/// Waits until the monitor reports the server on `port` more than `ms` behind.
pub async fn wait_until_lagging(proxy: &TestProxy, port: u16, ms: u64) {
    super::eventually(Duration::from_secs(30), "a replica to lag", || async {
        replica_rows(proxy)
            .await
            .get(&port)
            .and_then(|r| r.get("lag_ms"))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|lag| lag > ms)
    })
    .await;
}
