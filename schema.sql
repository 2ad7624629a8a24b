-- Weir's PostgreSQL schema. Applied by `deploy/dev up` (and by the tests) with psql or
-- tokio-postgres; every statement is idempotent, so applying it twice changes nothing.
--
-- users          one row per email, the newest clean record wins (the seed's table)
-- sink_offsets   the next Kafka offset per sink and partition, written in the same
--                transaction as the rows (exactly once into Postgres)
-- windows        one row per sink and tumbling window: open or sealed, with final counts
-- window_ledger  one row per applied batch slice: window, partition and offset range
-- audits         the result of each window audit (Airflow run id included)
-- rejects        rows that PostgreSQL refused, with the reason and the source coordinates
-- dead_letter_outbox  dead letters of a sink's batches, written in the batch's transaction
--                and forwarded to Kafka exactly once (then deleted)

CREATE TABLE IF NOT EXISTS users (
    user_uuid             UUID         NOT NULL,
    title                 VARCHAR(20),
    first_name            VARCHAR(100) NOT NULL,
    last_name             VARCHAR(100) NOT NULL,
    email                 VARCHAR(255) NOT NULL,
    street_address        VARCHAR(255),
    city                  VARCHAR(100) NOT NULL,
    state                 VARCHAR(100),
    country               VARCHAR(100) NOT NULL,
    postcode              VARCHAR(20),
    phone_cleaned         VARCHAR(30),
    cell_cleaned          VARCHAR(30),
    dob_date              DATE,
    age_at_ingestion      INTEGER,
    picture_thumbnail_url TEXT,
    raw_cleaned_data      JSONB        NOT NULL,
    ingestion_timestamp   TIMESTAMPTZ  NOT NULL DEFAULT now(),
    -- where the row came from: the record that last wrote it
    source_topic          TEXT,
    source_partition      INTEGER,
    source_offset         BIGINT,
    record_timestamp      TIMESTAMPTZ,
    window_start          TIMESTAMPTZ,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE INDEX IF NOT EXISTS users_user_uuid_idx ON users (user_uuid);
CREATE INDEX IF NOT EXISTS users_country_idx ON users (country);
CREATE INDEX IF NOT EXISTS users_ingestion_timestamp_idx ON users (ingestion_timestamp);
CREATE INDEX IF NOT EXISTS users_window_start_idx ON users (window_start);

CREATE TABLE IF NOT EXISTS sink_offsets (
    sink          TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    partition     INTEGER     NOT NULL,
    -- the next Kafka offset to apply; moved only by a compare-and-set in the rows' transaction
    next_offset   BIGINT      NOT NULL CHECK (next_offset >= 0),
    -- this partition's watermark as its sink last computed it, and when
    watermark     TIMESTAMPTZ,
    heartbeat_at  TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition)
);

CREATE TABLE IF NOT EXISTS windows (
    sink             TEXT        NOT NULL,
    window_start     TIMESTAMPTZ NOT NULL,
    window_end       TIMESTAMPTZ NOT NULL,
    status           TEXT        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'sealed')),
    records          BIGINT      NOT NULL DEFAULT 0,
    rows_written     BIGINT      NOT NULL DEFAULT 0,
    -- rows of the table attributed to this window when it was sealed
    table_rows       BIGINT,
    rejected         BIGINT      NOT NULL DEFAULT 0,
    -- records that arrived after the seal, by late policy (not in the sealed counts)
    late_dead_letter BIGINT      NOT NULL DEFAULT 0,
    late_dropped     BIGINT      NOT NULL DEFAULT 0,
    late_accepted    BIGINT      NOT NULL DEFAULT 0,
    first_record_at  TIMESTAMPTZ,
    last_record_at   TIMESTAMPTZ,
    sealed_at        TIMESTAMPTZ,
    sealed_by        TEXT,
    PRIMARY KEY (sink, window_start),
    CHECK (window_end > window_start)
);

CREATE INDEX IF NOT EXISTS windows_status_idx ON windows (status, window_start);

CREATE TABLE IF NOT EXISTS window_ledger (
    sink          TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    partition     INTEGER     NOT NULL,
    first_offset  BIGINT      NOT NULL,
    last_offset   BIGINT      NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    records       BIGINT      NOT NULL CHECK (records > 0),
    applied_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- an offset range is applied once: a second apply of the same batch fails here
    PRIMARY KEY (sink, topic, partition, first_offset),
    CHECK (last_offset >= first_offset)
);

CREATE INDEX IF NOT EXISTS window_ledger_window_idx ON window_ledger (sink, window_start);

CREATE TABLE IF NOT EXISTS audits (
    id              BIGSERIAL   PRIMARY KEY,
    sink            TEXT        NOT NULL,
    window_start    TIMESTAMPTZ NOT NULL,
    window_end      TIMESTAMPTZ NOT NULL,
    topic_records   BIGINT      NOT NULL,
    ledger_records  BIGINT      NOT NULL,
    window_records  BIGINT      NOT NULL,
    table_rows      BIGINT      NOT NULL,
    passed          BOOLEAN     NOT NULL,
    report          JSONB       NOT NULL DEFAULT '{}'::jsonb,
    run_id          TEXT,
    audited_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS audits_window_idx ON audits (sink, window_start, audited_at DESC);

CREATE TABLE IF NOT EXISTS rejects (
    id            BIGSERIAL   PRIMARY KEY,
    sink          TEXT        NOT NULL,
    topic         TEXT        NOT NULL,
    partition     INTEGER     NOT NULL,
    "offset"      BIGINT      NOT NULL,
    window_start  TIMESTAMPTZ,
    sqlstate      TEXT,
    reason        TEXT        NOT NULL,
    record        JSONB,
    rejected_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT rejects_source_key UNIQUE (sink, topic, partition, "offset")
);

CREATE TABLE IF NOT EXISTS dead_letter_outbox (
    sink              TEXT    NOT NULL,
    -- the record the dead letter is for: the sink's topic, partition and offset
    topic             TEXT    NOT NULL,
    partition         INTEGER NOT NULL,
    "offset"          BIGINT  NOT NULL,
    dead_letter_topic TEXT    NOT NULL,
    key               BYTEA,
    value             BYTEA   NOT NULL,
    header_names      TEXT[]  NOT NULL,
    header_values     BYTEA[] NOT NULL,
    record_timestamp  BIGINT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition, "offset")
);
