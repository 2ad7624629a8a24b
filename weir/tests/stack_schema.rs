//! `schema.sql` applies to an empty PostgreSQL database, twice in a row, and creates the
//! tables, indexes and constraints the sinks rely on.

mod common;

use tokio_postgres::{Client, NoTls};

const SCHEMA: &str = include_str!("../../schema.sql");

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to PostgreSQL (WEIR_DATABASE_URL): {e}"));
    tokio::spawn(connection);
    client
}

/// The URL of another database on the same server.
fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL ends in /dbname");
    format!("{base}/{db}")
}

#[tokio::test]
async fn schema_applies_twice_to_an_empty_database() {
    let admin_url = common::env("WEIR_PG_ADMIN_URL");
    let admin = connect(&admin_url).await;
    let db = common::unique("weir_schema_test");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();

    let client = connect(&with_database(&admin_url, &db)).await;
    client.batch_execute(SCHEMA).await.expect("first apply");
    client.batch_execute(SCHEMA).await.expect("second apply");

    let rows = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let tables: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        tables,
        [
            "audits",
            "dead_letter_outbox",
            "rejects",
            "sink_offsets",
            "users",
            "window_ledger",
            "windows"
        ]
    );

    let rows = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'users' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let indexes: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        indexes,
        [
            "users_country_idx",
            "users_email_key",
            "users_ingestion_timestamp_idx",
            "users_user_uuid_idx",
            "users_window_start_idx"
        ]
    );

    // one row per email: the unique constraint holds
    let insert = "INSERT INTO users (user_uuid, first_name, last_name, email, city, country, \
                  raw_cleaned_data) VALUES (gen_random_uuid(), 'A', 'B', 'a@example.com', 'C', \
                  'D', '{}')";
    client.batch_execute(insert).await.unwrap();
    let err = client.batch_execute(insert).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );

    // a ledger range is applied once
    let ledger = "INSERT INTO window_ledger (sink, topic, partition, first_offset, last_offset, \
                  window_start, records) VALUES ('s', 't', 0, 10, 19, now(), 10)";
    client.batch_execute(ledger).await.unwrap();
    let err = client.batch_execute(ledger).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );

    drop(client);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
