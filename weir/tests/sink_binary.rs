//! The PostgreSQL sink's batch writer against the real database.
//!
//! - Its fast path encodes column values for binary `COPY` itself; a value in a form it does
//!   not read goes the staged way, through PostgreSQL's own casts. Either way the table must
//!   hold what PostgreSQL's cast of the text gives: a batch of every typed column in
//!   canonical and odd forms, with the users table's real mapping, is compared value by
//!   value with `$1::type` of its text.
//! - A batch moves every partition's stored offset at once (one statement, pipelined with
//!   the windows' lock): one stale partition fences the whole batch and nothing of it stays.
//! - Keys the table holds, after a batch of new ones: the unasked `COPY` of the batch fails,
//!   is undone, and the batch is written the asking way; the newest record of each key wins.
//!   Undoing it undoes neither the offsets' move nor the windows', even on a new connection
//!   (where the statements are prepared first).

mod common;

use weir_sinks::dead_letter::DeadLetterEncoder;
use weir_sinks::postgres::writer::{
    load_offsets, write_batch, DeadLetters, OffsetMove, Row, SinkIdent, Table, Tuples, WriteError,
};
use weir_sinks::postgres::LatePolicy;

/// Texts for a column of `pg_type`: the forms encoded here and forms left to PostgreSQL.
fn samples(pg_type: &str, i: usize) -> Option<String> {
    let pick = |options: &[&str]| options[i % options.len()].to_owned();
    Some(match pg_type {
        "uuid" => pick(&[
            "0b8c5e86-0e6f-4f0c-9d2c-7a3a8f1e2b4d",
            "0B8C5E86-0E6F-4F0C-9D2C-7A3A8F1E2B4D",
            "{0b8c5e86-0e6f-4f0c-9d2c-7a3a8f1e2b4d}",
            "0b8c5e860e6f4f0c9d2c7a3a8f1e2b4d",
        ]),
        "date" => pick(&[
            "1962-05-08",
            "2000-02-29",
            "1999-12-31",
            " 1962-05-08",
            "19620508",
        ]),
        "integer" => pick(&["42", "-7", "0", "+5", " 12"]),
        "bigint" => pick(&["9007199254740993", "-1", "+3"]),
        "timestamp with time zone" => pick(&[
            "2026-11-29T19:00:00.123Z",
            "2026-11-29T21:00:00+02:00",
            "1999-12-31T23:59:59.999999Z",
            "2026-11-29 19:00:00Z",
            "2026-11-29T19:00:00.1234567Z",
        ]),
        // keys out of jsonb's order, nested, escaped and repeated (jsonb keeps the last)
        "jsonb" => pick(&[
            r#"{"b": 1, "a": [1, 2.50]}"#,
            r#"{"é":"\u00e9"}"#,
            "[]",
            r#"{"email": "x", "age": 3, "a\u00e9": {"zz": 1, "y": [{"b": 2, "a": 1}]}}"#,
            r#"{"a": 1, "b": {"c": 1, "c": 2}, "a": 2}"#,
        ]),
        t if t.starts_with("character varying") || t == "text" => {
            pick(&["O'Brien\tt\\b\nl", "Зоряна", "", "x"])
        }
        _ => return None,
    })
}

/// Runs a test's body on a runtime of one worker.
fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}

/// A fresh database `weir_NAME…` with Weir's schema, a client of it, and its users table as
/// the sink of application `weir-NAME` sees it.
async fn users_table(name: &str) -> (String, tokio_postgres::Client, Table) {
    let url = common::pg::fresh_database(&format!("weir_{name}")).await;
    let db = common::pg::connect(&url).await;
    let (cfg, _) = common::windows::users_sink(&format!("weir-{name}"), 300_000);
    let table = Table::describe(&db, &cfg).await.expect("the users table");
    (url, db, table)
}

/// The users sink of application `weir-NAME`, 5-minute windows.
fn sink_ident(name: &str) -> SinkIdent {
    SinkIdent {
        id: format!("weir-{name}/users"),
        topic: format!("weir-{name}-clean"),
        window_ms: 300_000,
        late_policy: LatePolicy::DeadLetter,
    }
}

/// The users node's dead letters.
fn dead_letters(encoder: &DeadLetterEncoder) -> DeadLetters<'_> {
    DeadLetters {
        encoder,
        node: "users",
    }
}

/// A clean row of `table` at (partition, offset): `email` as its key, the `i`th sample of
/// every other column.
fn sample_row(
    table: &Table,
    (partition, offset): (i32, i64),
    timestamp: i64,
    window_start: i64,
    email: &str,
    i: usize,
) -> Row {
    let values = table
        .columns
        .iter()
        .map(|c| match c.name.as_str() {
            "email" => Some(email.to_owned()),
            _ => samples(&c.pg_type, i),
        })
        .collect();
    Row::new((partition, offset), timestamp, window_start, values)
}

#[test]
fn the_fast_path_stores_what_postgres_casts_would() {
    block_on(fast_path_stores_what_postgres_casts_would());
}

async fn fast_path_stores_what_postgres_casts_would() {
    let (url, db, table) = users_table("binary").await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut rows: Vec<Row> = (0..60)
        .map(|i| {
            let email = format!("user{i}@example.com");
            sample_row(&table, (0, i as i64), now, now - now % 300_000, &email, i)
        })
        .collect();
    let tuples = Tuples::encode(&table, &mut rows);
    let encoder = DeadLetterEncoder::new("weir-binary-dlq", "weir-binary");
    let dead = dead_letters(&encoder);
    let ident = sink_ident("binary");
    // the sink's own pool: its connections cache the prepared statements
    let pool = weir_sinks::postgres::sink::pool(&url).expect("a pool");
    let mut client = pool.get().await.expect("a connection");
    let outcome = write_batch(&mut client, &table, &ident, &rows, &tuples, &[], &dead)
        .await
        .expect("the batch is written");
    assert_eq!(outcome.rows_written, rows.len() as u64, "{outcome:?}");

    let mut compared = 0;
    for row in &rows {
        let email = row
            .values
            .get(
                table
                    .columns
                    .iter()
                    .position(|c| c.name == "email")
                    .unwrap(),
            )
            .unwrap()
            .to_owned();
        for (c, v) in table.columns.iter().zip(row.values.iter()) {
            let Some(text) = v else { continue };
            let stored: Option<String> = db
                .query_one(
                    &format!("SELECT \"{}\"::text FROM users WHERE email = $1", c.name),
                    &[&email],
                )
                .await
                .unwrap()
                .get(0);
            let cast: Option<String> = db
                .query_one(&format!("SELECT $1::text::{}::text", c.pg_type), &[&text])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                stored, cast,
                "column {} ({}) of {email}: {text:?} was stored otherwise than PostgreSQL reads it",
                c.name, c.pg_type
            );
            compared += 1;
        }
    }
    assert!(compared > rows.len() * 10, "compared {compared} values");
}

#[test]
fn one_stale_partition_fences_the_whole_batch_and_a_right_one_moves_every_partition() {
    block_on(stale_partition_fences_the_batch());
}

async fn stale_partition_fences_the_batch() {
    let (url, db, table) = users_table("fence").await;
    let ident = sink_ident("fence");
    // three partitions stored at 0
    let stored = load_offsets(&db, &ident, &[(0, 0), (1, 0), (2, 0)])
        .await
        .unwrap();
    assert_eq!(stored, vec![(0, 0), (1, 0), (2, 0)]);
    // two records in two windows, from partitions 0 and 2
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - now % 300_000;
    let mut rows: Vec<Row> = [(0, start), (2, start - 300_000)]
        .into_iter()
        .map(|(partition, window_start)| {
            let email = format!("p{partition}@example.com");
            sample_row(
                &table,
                (partition, 0),
                window_start + 1_000,
                window_start,
                &email,
                0,
            )
        })
        .collect();
    let tuples = Tuples::encode(&table, &mut rows);
    let encoder = DeadLetterEncoder::new("weir-fence-dlq", "weir-fence");
    let dead = dead_letters(&encoder);
    let moves = |p1_from: i64| {
        [(0, 0, 1), (1, p1_from, 0), (2, 0, 1)].map(|(partition, expected, next)| OffsetMove {
            partition,
            expected,
            next,
            watermark: Some(start),
        })
    };
    let pool = weir_sinks::postgres::sink::pool(&url).expect("a pool");
    let mut client = pool.get().await.expect("a connection");
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };

    // partition 1 is stored at 0, the batch thinks 5: fenced on it, nothing written
    match write_batch(
        &mut client,
        &table,
        &ident,
        &rows,
        &tuples,
        &moves(5),
        &dead,
    )
    .await
    {
        Err(WriteError::Fenced {
            partition: 1,
            stored: Some(0),
            expected: 5,
        }) => {}
        other => panic!("a stale partition must fence the batch, got {other:?}"),
    }
    assert_eq!(count("SELECT count(*) FROM users").await, 0);
    assert_eq!(count("SELECT count(*) FROM window_ledger").await, 0);
    assert_eq!(
        count("SELECT coalesce(sum(next_offset), 0)::int8 FROM sink_offsets").await,
        0,
        "a fenced batch moves no partition"
    );

    // the same batch from the right offsets: every partition moves, both windows count
    let outcome = write_batch(
        &mut client,
        &table,
        &ident,
        &rows,
        &tuples,
        &moves(0),
        &dead,
    )
    .await
    .expect("the batch is written");
    assert_eq!(outcome.rows_written, 2, "{outcome:?}");
    let offsets: Vec<(i32, i64, bool)> = db
        .query(
            "SELECT partition, next_offset, watermark IS NOT NULL FROM sink_offsets ORDER BY partition",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(offsets, vec![(0, 1, true), (1, 0, true), (2, 1, true)]);
    let ledger: Vec<(i32, i64, i64, i64)> = db
        .query(
            "SELECT partition, first_offset, last_offset, records FROM window_ledger ORDER BY partition",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(ledger, vec![(0, 0, 0, 1), (2, 0, 0, 1)]);
    assert_eq!(
        count("SELECT count(*) FROM windows WHERE records = 1 AND rows_written = 1").await,
        2
    );
    // written again (a retry after an unknown commit): the offsets have moved, so it fences
    assert!(matches!(
        write_batch(
            &mut client,
            &table,
            &ident,
            &rows,
            &tuples,
            &moves(0),
            &dead
        )
        .await,
        Err(WriteError::Fenced { .. })
    ));
    assert_eq!(count("SELECT count(*) FROM window_ledger").await, 2);
}

#[test]
fn held_keys_after_new_ones_undo_the_fast_insert_and_the_newest_record_of_each_key_wins() {
    block_on(held_keys_after_new_ones());
}

/// Rows of `keys` (`u{k}@example.com`) at offsets from `from` of partition 0, timed `time` in
/// the window starting at `start`, the `sample`th sample in every other column; the record's
/// time and window in their columns, as the users mapping has them (the merge compares the
/// time with what the table holds, and returns the window of each row it writes).
fn users_batch(
    table: &Table,
    keys: &[usize],
    (time, start): (i64, i64),
    sample: usize,
    from: i64,
) -> (Vec<Row>, Tuples) {
    let rfc3339 = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let mut rows: Vec<Row> = keys
        .iter()
        .enumerate()
        .map(|(n, k)| {
            let values = table
                .columns
                .iter()
                .map(|c| match c.name.as_str() {
                    "email" => Some(format!("u{k}@example.com")),
                    "record_timestamp" => Some(rfc3339(time)),
                    "window_start" => Some(rfc3339(start)),
                    _ => samples(&c.pg_type, sample),
                })
                .collect();
            Row::new((0, from + n as i64), time, start, values)
        })
        .collect();
    let tuples = Tuples::encode(table, &mut rows);
    (rows, tuples)
}

/// The window's records and rows written, and partition 0's stored offset.
async fn stored(db: &tokio_postgres::Client, ident: &SinkIdent) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT w.records, w.rows_written, o.next_offset FROM windows w, sink_offsets o \
             WHERE w.sink = $1 AND o.sink = $1",
            &[&ident.id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn held_keys_after_new_ones() {
    let (url, db, table) = users_table("held").await;
    let ident = sink_ident("held");
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - now % 300_000;
    let encoder = DeadLetterEncoder::new("weir-held-dlq", "weir-held");
    let dead = dead_letters(&encoder);
    let offsets = load_offsets(&db, &ident, &[(0, 0)]).await.unwrap();
    assert_eq!(offsets, vec![(0, 0)]);
    // batches: (keys, time after the window's start, sample, first offset)
    let batches: [(Vec<usize>, i64, usize, i64); 4] = [
        // ten new keys, sample 0 ("O'Brien…" names); all new, so the next batch's keys
        // are guessed new too and copied unasked
        ((0..10).collect(), 1_000, 0, 0),
        // keys 5..15, newer, sample 1 ("Зоряна"): five held, five new — the unasked COPY
        // fails on the first held key, is undone, and the batch goes the asking way
        ((5..15).collect(), 2_000, 1, 10),
        // key 0 again, older than what the table holds: it loses
        (vec![0], 500, 1, 20),
        // on a new connection, its statements not prepared yet, keys guessed new again (a
        // sink started again): a held key and a new one — undoing the COPY must undo
        // neither the offsets' move nor the windows'
        (vec![3, 15], 3_000, 2, 21),
    ];
    let written = [10, 10, 0, 2];
    let mut pool = weir_sinks::postgres::sink::pool(&url).expect("a pool");
    let mut table = table;
    for (i, (keys, after, sample, from)) in batches.iter().enumerate() {
        if i == 3 {
            let (cfg, _) = common::windows::users_sink("weir-held", 300_000);
            table = Table::describe(&db, &cfg).await.expect("the users table");
            pool = weir_sinks::postgres::sink::pool(&url).expect("a pool");
        }
        let (rows, tuples) = users_batch(&table, keys, (start + after, start), *sample, *from);
        let next = from + keys.len() as i64;
        let step = OffsetMove {
            partition: 0,
            expected: *from,
            next,
            watermark: Some(start),
        };
        let mut client = pool.get().await.expect("a connection");
        let outcome = write_batch(&mut client, &table, &ident, &rows, &tuples, &[step], &dead)
            .await
            .unwrap_or_else(|e| panic!("batch {i}: {e}"));
        assert_eq!(outcome.rows_written, written[i], "batch {i}: {outcome:?}");
        let total: u64 = written[..=i].iter().sum();
        assert_eq!(
            stored(&db, &ident).await,
            (next, total as i64, next),
            "batch {i}: every record counted once, the rows written, the offset moved"
        );
        // a batch's commit without waiting for the disk is its own: the connection's
        // setting is untouched for what it runs next
        let setting: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(setting, "on");
    }

    let names: Vec<(String, String)> = db
        .query(
            "SELECT email, first_name FROM users ORDER BY substr(email, 2, strpos(email, '@') - 2)::int",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, String)> = (0..16)
        .map(|k| {
            let sample = match k {
                3 | 15 => 2,
                k if k < 5 => 0,
                _ => 1,
            };
            (
                format!("u{k}@example.com"),
                samples("character varying(100)", sample).unwrap(),
            )
        })
        .collect();
    assert_eq!(names, expected);
}
