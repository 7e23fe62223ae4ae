//! Function volatility loaded from a real server's pg_proc drives classification: the same SELECT is a read or a
//! write depending on what Postgres says about the functions it calls, including functions the application created.
#![allow(clippy::unwrap_used)]

use shardpool::pgcluster::{AuthMethod, PgServer, ServerOptions};
use shardpool::router::classify::{
    classify, Access, FunctionVolatility, KNOWN_NOT_VOLATILE, PRIMARY_ONLY, SYNTAX_FUNCTIONS,
};
use tokio_postgres::NoTls;

#[tokio::test]
async fn volatility_comes_from_pg_proc() {
    let pg = tokio::task::spawn_blocking(|| {
        let pg = PgServer::start_primary(&ServerOptions::default()).expect("start postgres");
        pg.create_user("app", "secret", AuthMethod::ScramSha256)
            .unwrap();
        pg.create_database("appdb", "app").unwrap();
        pg
    })
    .await
    .unwrap();

    let (client, connection) = tokio_postgres::connect(&pg.url("app", "secret", "appdb"), NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE SCHEMA billing;
             CREATE FUNCTION billing.charge(int) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT $1';
             CREATE FUNCTION billing.tax(numeric) RETURNS numeric IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 0.2';
             CREATE FUNCTION lookup(int) RETURNS int STABLE LANGUAGE sql AS 'SELECT $1';
             CREATE FUNCTION lookup(text) RETURNS text VOLATILE LANGUAGE sql AS 'SELECT $1';",
        )
        .await
        .unwrap();

    let f = FunctionVolatility::load(&client).await.unwrap();
    assert!(f.is_loaded());
    builtin_lists_agree_with_the_catalog(&client).await;
    let access = |sql: &str| classify(sql, &f).access;

    assert_eq!(access("SELECT random()"), Access::Write);
    assert_eq!(access("SELECT pg_catalog.clock_timestamp()"), Access::Write);
    assert_eq!(access("SELECT now(), lower('A'), upper('b')"), Access::Read);
    assert_eq!(access("SELECT pg_catalog.lower('A')"), Access::Read);
    assert_eq!(access("SELECT count(*) FROM pg_class"), Access::Read);
    assert_eq!(access("SELECT nextval('s')"), Access::Write);

    assert_eq!(access("SELECT billing.charge(1)"), Access::Write);
    assert_eq!(access("SELECT charge(1)"), Access::Write);
    assert_eq!(
        access("SELECT * FROM t WHERE x = (SELECT billing.charge(2))"),
        Access::Write
    );
    assert_eq!(access("SELECT billing.tax(10)"), Access::Read);
    assert_eq!(access("SELECT tax(10)"), Access::Read);
    // One overload is volatile, so the name is: argument types are not resolved.
    assert_eq!(access("SELECT lookup(1)"), Access::Write);
    // Created after the load: unknown, so conservatively a write until the next load.
    client
        .batch_execute("CREATE FUNCTION late() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 1'")
        .await
        .unwrap();
    assert_eq!(access("SELECT late()"), Access::Write);
    let reloaded = FunctionVolatility::load(&client).await.unwrap();
    assert_ne!(reloaded.generation(), f.generation());
    assert_eq!(classify("SELECT late()", &reloaded).access, Access::Read);

    // Configuration overrides win over the catalog.
    let f = reloaded.with_overrides(&["billing.tax".into()], &["lookup".into()]);
    assert_eq!(classify("SELECT billing.tax(1)", &f).access, Access::Write);
    assert_eq!(classify("SELECT lookup(1)", &f).access, Access::Read);

    drop(client);
    let _ = driver.await;
}

/// The lists trusted before the catalog is loaded must say what this server's pg_proc says.
async fn builtin_lists_agree_with_the_catalog(client: &tokio_postgres::Client) {
    let volatility = |name: &'static str| async move {
        client
            .query(
                "SELECT DISTINCT p.provolatile::text FROM pg_proc p \
                 JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = 'pg_catalog' AND p.proname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let mut wrong = Vec::new();
    for &name in KNOWN_NOT_VOLATILE {
        let v = volatility(name).await;
        if v.is_empty() || v.contains(&"v".to_owned()) {
            wrong.push(format!("{name}: {v:?}"));
        }
    }
    for &name in SYNTAX_FUNCTIONS {
        let v = volatility(name).await;
        if v.contains(&"v".to_owned()) {
            wrong.push(format!("{name}: {v:?}"));
        }
    }
    for &name in PRIMARY_ONLY {
        if volatility(name).await.is_empty() {
            wrong.push(format!("{name}: missing"));
        }
    }
    assert!(
        wrong.is_empty(),
        "built-in lists disagree with pg_proc: {wrong:?}"
    );
}
