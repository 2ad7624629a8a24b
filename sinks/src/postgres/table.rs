//! The target table as PostgreSQL describes it ([`Table`]): each mapped column, its type and
//! where its value comes from, and the statements prepared for it.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use tokio_postgres::Client;

use super::binary;
use super::config::PostgresSinkConfig;
use super::window::Millis;

use super::error::WriteError;

/// A mapped column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The clean record field (or `@…`) it takes.
    pub field: String,
    /// The column's PostgreSQL type, for the cast from the staged text.
    pub pg_type: String,
}

/// The target table, as PostgreSQL describes it.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    pub key: String,
    /// The column holding the record time, for "the newest record wins".
    pub timestamp_column: Option<String>,
    /// The column holding the window start, for audits.
    pub window_column: Option<String>,
    /// A column not mapped that records the load time (`ingestion_timestamp`).
    pub touch_column: Option<String>,
    pub(super) merge_sql: String,
    pub(super) merge_one_sql: String,
    /// Which of the batch's keys the table holds already.
    pub(super) exists_sql: String,
    /// Text `COPY` straight into the table, for keys it does not hold yet.
    pub(super) insert_copy_sql: String,
    /// Binary `COPY` straight into the table, when every column's type is encoded here.
    pub(super) insert_binary_sql: String,
    /// How each column is encoded for binary `COPY` (`None`: some type is not; text `COPY`).
    pub(super) binary: Option<Vec<binary::Kind>>,
    /// Whether the next batch's keys are guessed new.
    pub(super) fresh: FreshGuess,
    /// The key's place in [`Table::columns`].
    pub(super) key_index: Option<usize>,
    /// The place in [`Table::columns`] of the column that holds the record's text (`@record`).
    pub record_column: Option<usize>,
    pub(super) stage_sql: String,
    pub(super) copy_sql: String,
    pub(super) insert_one_sql: String,
}

impl Table {
    /// Reads the table's column types and prepares the statements.
    pub async fn describe(client: &Client, cfg: &PostgresSinkConfig) -> Result<Table, WriteError> {
        let rows = client
            .query(
                "SELECT column_name::text, format_type(a.atttypid, a.atttypmod) \
                 FROM information_schema.columns c \
                 JOIN pg_attribute a ON a.attrelid = to_regclass(quote_ident($1)) AND a.attname = c.column_name \
                 WHERE c.table_schema = current_schema() AND c.table_name = $1",
                &[&cfg.table],
            )
            .await?;
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Self::plan(cfg, &types)
    }

    /// The table of `cfg` given its columns' types (name → type as `format_type` gives it):
    /// each mapped column, and the statements the writer uses, made once.
    pub fn plan(
        cfg: &PostgresSinkConfig,
        types: &HashMap<String, String>,
    ) -> Result<Table, WriteError> {
        if types.is_empty() {
            return Err(WriteError::Table {
                table: cfg.table.clone(),
                message: "no such table (apply schema.sql)".into(),
            });
        }
        let mut columns = Vec::new();
        for (name, field) in &cfg.columns {
            let Some(t) = types.get(name) else {
                return Err(WriteError::Table {
                    table: cfg.table.clone(),
                    message: format!("it has no column \"{name}\""),
                });
            };
            columns.push(Column {
                name: name.clone(),
                field: field.clone(),
                pg_type: t.clone(),
            });
        }
        let find = |f: &str| {
            columns
                .iter()
                .find(|c| c.field == f)
                .map(|c| c.name.clone())
        };
        let timestamp_column = find("@timestamp");
        let window_column = find("@window_start");
        let touch_column = types
            .contains_key("ingestion_timestamp")
            .then(|| "ingestion_timestamp".to_owned())
            .filter(|c| !cfg.columns.contains_key(c));
        let stage = Stage::of(&cfg.table, &columns);
        let (merge_sql, merge_one_sql) = merge_statements(
            cfg,
            &columns,
            &stage.name,
            (&touch_column, &timestamp_column, &window_column),
        );
        let key = quote(&cfg.key);
        let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
        let key_type = columns
            .iter()
            .find(|c| c.name == cfg.key)
            .map_or("text", |c| c.pg_type.as_str());
        Ok(Table {
            name: cfg.table.clone(),
            key: cfg.key.clone(),
            merge_sql,
            merge_one_sql,
            exists_sql: format!(
                "SELECT {key}::text FROM {tbl} WHERE {key} = ANY($1::text[]::{key_type}[])",
                tbl = quote(&cfg.table)
            ),
            insert_copy_sql: format!(
                "COPY {} ({}) FROM STDIN",
                quote(&cfg.table),
                names.join(", ")
            ),
            insert_binary_sql: format!(
                "COPY {} ({}) FROM STDIN BINARY",
                quote(&cfg.table),
                names.join(", ")
            ),
            binary: columns
                .iter()
                .map(|c| binary::Kind::of(&c.pg_type))
                .collect(),
            fresh: FreshGuess::default(),
            key_index: columns.iter().position(|c| c.name == cfg.key),
            record_column: columns.iter().position(|c| c.field == "@record"),
            stage_sql: stage.create_sql,
            copy_sql: stage.copy_sql,
            insert_one_sql: stage.insert_one_sql,
            columns,
            timestamp_column,
            window_column,
            touch_column,
        })
    }

    /// The text of one column for a clean record (`None` is NULL). `get` reads a field of
    /// the record as text; `raw` is the record's JSON as read.
    #[allow(clippy::too_many_arguments)]
    pub fn value(
        field: &str,
        get: &dyn Fn(&str) -> Option<String>,
        raw: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        ts: Millis,
        window_start: Millis,
    ) -> Option<String> {
        let rfc = |ms: Millis| {
            Utc.timestamp_millis_opt(ms)
                .single()
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        match field {
            "@record" => Some(raw.to_owned()),
            "@topic" => Some(topic.to_owned()),
            "@partition" => Some(partition.to_string()),
            "@offset" => Some(offset.to_string()),
            "@timestamp" => rfc(ts),
            "@window_start" => rfc(window_start),
            f => get(f),
        }
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The session's staging table of a sink's batches: its name and statements.
struct Stage {
    name: String,
    create_sql: String,
    copy_sql: String,
    insert_one_sql: String,
}

impl Stage {
    fn of(table: &str, columns: &[Column]) -> Stage {
        let name = format!(
            "weir_stage_{}",
            table.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let cols: Vec<String> = columns
            .iter()
            .map(|c| format!("{} text", quote(&c.name)))
            .collect();
        let params: Vec<String> = (1..=columns.len() + 4).map(|i| format!("${i}")).collect();
        Stage {
            create_sql: format!(
                "CREATE TEMP TABLE IF NOT EXISTS {name} (__seq int8, __partition int4, __offset int8, __ts int8, {}) ON COMMIT DELETE ROWS",
                cols.join(", ")
            ),
            copy_sql: format!("COPY {name} FROM STDIN BINARY"),
            insert_one_sql: format!("INSERT INTO {name} VALUES ({})", params.join(", ")),
            name,
        }
    }
}

/// The merge of the staged batch into the table, and of one staged row (`$1`): the newest
/// record of each key wins (by record time, then offset), an existing row is replaced only
/// by a newer one, and each written row's window comes back.
fn merge_statements(
    cfg: &PostgresSinkConfig,
    columns: &[Column],
    stage: &str,
    (touch_column, timestamp_column, window_column): (
        &Option<String>,
        &Option<String>,
        &Option<String>,
    ),
) -> (String, String) {
    let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    let casts: Vec<String> = columns
        .iter()
        .map(|c| format!("s.{}::{}", quote(&c.name), c.pg_type))
        .collect();
    let mut sets: Vec<String> = columns
        .iter()
        .filter(|c| c.name != cfg.key)
        .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
        .collect();
    if let Some(t) = touch_column {
        sets.push(format!("{} = now()", quote(t)));
    }
    let newest = timestamp_column
        .as_ref()
        .map(|t| {
            format!(
                " WHERE {tbl}.{t} IS NULL OR {tbl}.{t} <= EXCLUDED.{t}",
                tbl = quote(&cfg.table),
                t = quote(t)
            )
        })
        .unwrap_or_default();
    let returning = window_column
        .as_ref()
        .map(|w| format!(" RETURNING (extract(epoch FROM {})*1000)::int8", quote(w)))
        .unwrap_or_else(|| " RETURNING 0::int8".into());
    let key = quote(&cfg.key);
    let merge = |filter: &str| {
        format!(
            "INSERT INTO {tbl} ({names}) SELECT DISTINCT ON (s.{key}) {casts} FROM {stage} s{filter} \
             ORDER BY s.{key}, s.__ts DESC, s.__offset DESC \
             ON CONFLICT ({key}) DO UPDATE SET {sets}{newest}{returning}",
            tbl = quote(&cfg.table),
            names = names.join(", "),
            casts = casts.join(", "),
            sets = sets.join(", "),
        )
    };
    (merge(""), merge(" WHERE s.__seq = $1"))
}

/// Whether to `COPY` a batch's keys without asking which the table holds: yes, unless a
/// recent batch held one (then not for the next [`FreshGuess::AFTER_A_MISS`] batches).
#[derive(Debug, Clone, Default)]
pub struct FreshGuess(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl FreshGuess {
    pub(super) const AFTER_A_MISS: u32 = 16;

    pub(super) fn guess_all_new(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.0
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    pub(super) fn missed(&self) {
        self.0
            .store(Self::AFTER_A_MISS, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PostgresSinkConfig {
        serde_json::from_value(serde_json::json!({
            "table": "users",
            "key": "email",
            "columns": {"email": "email", "name": "full_name", "seen_at": "@timestamp",
                        "window_start": "@window_start", "source_partition": "@partition"},
        }))
        .unwrap()
    }

    fn types(extra: &[(&str, &str)]) -> HashMap<String, String> {
        [
            ("email", "text"),
            ("name", "text"),
            ("seen_at", "timestamp with time zone"),
            ("window_start", "timestamp with time zone"),
            ("source_partition", "integer"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_merge_keeps_the_newest_record_of_each_key() {
        let t = Table::plan(&config(), &types(&[("ingestion_timestamp", "timestamp")])).unwrap();
        assert_eq!(
            t.key_index,
            t.columns.iter().position(|c| c.name == "email")
        );
        assert_eq!(t.timestamp_column.as_deref(), Some("seen_at"));
        assert_eq!(t.touch_column.as_deref(), Some("ingestion_timestamp"));
        let m = &t.merge_sql;
        assert!(m.contains("SELECT DISTINCT ON (s.\"email\")"), "{m}");
        assert!(
            m.contains("ORDER BY s.\"email\", s.__ts DESC, s.__offset DESC"),
            "{m}"
        );
        assert!(m.contains("ON CONFLICT (\"email\") DO UPDATE SET"), "{m}");
        assert!(m.contains("\"ingestion_timestamp\" = now()"), "{m}");
        // an existing row gives way only to a record at least as new
        assert!(
            m.contains("WHERE \"users\".\"seen_at\" IS NULL OR \"users\".\"seen_at\" <= EXCLUDED.\"seen_at\""),
            "{m}"
        );
        assert!(
            !m.contains("\"email\" = EXCLUDED"),
            "the key is not updated: {m}"
        );
        assert!(t
            .merge_one_sql
            .ends_with(&m[m.find(" ORDER BY").unwrap()..]));
        assert!(t.merge_one_sql.contains("s WHERE s.__seq = $1"));
        assert!(t
            .stage_sql
            .starts_with("CREATE TEMP TABLE IF NOT EXISTS weir_stage_users ("));
        assert_eq!(t.insert_one_sql.matches('$').count(), t.columns.len() + 4);
    }

    #[test]
    fn a_table_that_cannot_take_the_mapping_says_why() {
        let err = |types| match Table::plan(&config(), &types) {
            Err(WriteError::Table { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(err(HashMap::new()), "no such table (apply schema.sql)");
        let mut t = types(&[]);
        t.remove("name");
        assert_eq!(err(t), "it has no column \"name\"");
    }
}
