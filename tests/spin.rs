//! The lone-client spin (`spin_wait`) against a real server: a client alone with the proxy is served by polling
//! instead of sleeping, gets exactly the answers it would get otherwise (large results, errors, pipelines, COPY),
//! and clients taking turns never trigger it. Counts come from SHOW SPIN.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{eventually, Backend, TestProxy};
use futures_util::{pin_mut, SinkExt};

const WAIT: Duration = Duration::from_secs(30);

async fn spin_counts(proxy: &TestProxy) -> HashMap<String, (u64, u64)> {
    proxy
        .admin("SHOW SPIN")
        .await
        .into_iter()
        .map(|r| {
            let n = |c: &str| r[c].parse::<u64>().unwrap();
            (r["awaiting"].clone(), (n("spins"), n("found")))
        })
        .collect()
}

async fn wait_for_no_clients(proxy: &TestProxy) {
    eventually(WAIT, "the client to be gone", || async {
        proxy
            .admin("SHOW POOLS")
            .await
            .iter()
            .all(|p| p["cl_active"] == "0" && p["cl_waiting"] == "0")
    })
    .await;
}

// A multi-thread runtime: spinning is off on current-thread runtimes (an embedding application's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_client_is_served_by_spinning_and_sees_the_same_results() {
    let backend = Backend::start().await;
    // A budget far above any reply time here, so every spin ends because its data came and the counts below are
    // exact however slow the machine is.
    let proxy = backend.proxy("spin_wait = \"5s\"").await;
    let client = proxy.connect().await;
    for i in 0..100i32 {
        let row = client
            .query_one("SELECT $1::int4 * 2", &[&i])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
        let values: Vec<String> = client
            .simple_query("SELECT 1; SELECT 2")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(values, ["1", "2"]);
    }
    // A result far larger than one spin's read: the rest comes through the usual reads.
    let row = client
        .query_one(
            "SELECT count(*), sum(length(repeat('x', g))) FROM generate_series(1, 2000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2000);
    let big = client
        .query(
            "SELECT g, repeat('y', 100) FROM generate_series(1, 5000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(big.len(), 5000);
    assert_eq!(big[4999].get::<_, i32>(0), 5000);
    // Errors arrive intact and leave the session usable.
    let err = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "22012");
    // A pipeline: several extended-protocol queries in flight at once.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 'a'::text", &[]),
        client.query_one("SELECT 'b'::text", &[]),
        client.query_one("SELECT 'c'::text", &[]),
    );
    let got: Vec<String> = [a, b, c].into_iter().map(|r| r.unwrap().get(0)).collect();
    assert_eq!(got, ["a", "b", "c"]);
    // COPY FROM STDIN: the server waits for the client here, which must not be mistaken for a reply to spin for
    // (with a five-second budget, that mistake would show as a stall, and in the found counts below).
    client
        .batch_execute("DROP TABLE IF EXISTS spin_copy; CREATE TABLE spin_copy (n int)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY spin_copy FROM STDIN").await.unwrap();
    pin_mut!(sink);
    let rows: String = (1..=1000).map(|n| format!("{n}\n")).collect();
    sink.send(bytes::Bytes::from(rows)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let sum: i64 = client
        .query_one("SELECT sum(n) FROM spin_copy", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 500_500);
    drop(client);
    wait_for_no_clients(&proxy).await;

    let counts = spin_counts(&proxy).await;
    let (server_spins, server_found) = counts["server"];
    let (client_spins, client_found) = counts["client"];
    // Hundreds of round trips, and all but the first few (before the client has a streak) spun.
    assert!(server_spins >= 200, "{counts:?}");
    assert!(client_spins >= 200, "{counts:?}");
    assert_eq!(server_found, server_spins, "{counts:?}");
    assert_eq!(client_found, client_spins, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_taking_turns_never_spin() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("spin_wait = \"5s\"").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    for i in 0..50i64 {
        for (who, c) in [(1i64, &a), (2, &b)] {
            let v: i64 = c
                .query_one("SELECT $1::int8 + $2::int8", &[&i, &who])
                .await
                .unwrap()
                .get(0);
            assert_eq!(v, i + who);
        }
    }
    let counts = spin_counts(&proxy).await;
    assert_eq!(counts["server"].0, 0, "{counts:?}");
    assert_eq!(counts["client"].0, 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_wait_zero_switches_it_off() {
    let backend = Backend::start().await;
    let proxy = backend.proxy("spin_wait = \"0\"").await;
    let client = proxy.connect().await;
    for i in 0..20i32 {
        let v: i32 = client
            .query_one("SELECT $1::int4", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, i);
    }
    let counts = spin_counts(&proxy).await;
    assert_eq!(
        (counts["server"].0, counts["client"].0),
        (0, 0),
        "{counts:?}"
    );
}
