//! Why a batch did not commit ([`WriteError`]), and what the sink does about it
//! ([`ErrorKind`]: retry the batch, find the record that fails alone, or stop when fenced).

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The stored offset is not the one this batch starts from: another instance owns the
    /// partition, or this one is stale. Nothing was written.
    #[error("fenced on partition {partition}: the stored next offset is {stored:?}, this batch starts at {expected}")]
    Fenced {
        partition: i32,
        stored: Option<i64>,
        expected: i64,
    },
    /// PostgreSQL could not be reached or failed the transaction; retry the same batch.
    #[error("PostgreSQL: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("table \"{table}\" cannot take the mapping: {message}")]
    Table { table: String, message: String },
    /// No connection could be had from the pool: PostgreSQL is away.
    #[error("no PostgreSQL connection: {0}")]
    Pool(String),
}

/// What to do about a failed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A lost connection, a failed or cancelled transaction, a server short of resources:
    /// retry the same batch.
    Transient,
    /// Another instance owns a partition: start again from the stored offsets.
    Fenced,
    /// The table or the database does not fit the sink (class 42 and the like): stop.
    Table,
    /// The data: some record of the batch cannot be written; find it, give it up.
    Data,
}

impl WriteError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            WriteError::Fenced { .. } => ErrorKind::Fenced,
            WriteError::Table { .. } => ErrorKind::Table,
            WriteError::Pool(_) => ErrorKind::Transient,
            WriteError::Postgres(e) => classify(e),
        }
    }

    /// The SQLSTATE, when PostgreSQL gave one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            WriteError::Postgres(e) => e.code().map(|c| c.code().to_owned()),
            _ => None,
        }
    }
}

/// Classifies a PostgreSQL error by its SQLSTATE class.
pub fn classify(e: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = e.code() else {
        // no SQLSTATE: the connection, not the data
        return ErrorKind::Transient;
    };
    let code = code.code();
    match &code[..2] {
        // connection, transaction rollback (serialization, deadlock), resources, operator
        // intervention (shutdown, cancel), system error, internal error
        "08" | "40" | "53" | "57" | "58" | "XX" => ErrorKind::Transient,
        // lock not available, object in use
        "55" if code == "55P03" || code == "55006" => ErrorKind::Transient,
        // syntax or access: the table, a column, a privilege
        "42" | "28" | "3D" | "3F" | "0A" => ErrorKind::Table,
        // data exceptions, constraints, a trigger that raises, and the rest
        _ => ErrorKind::Data,
    }
}

/// A PostgreSQL error with its SQLSTATE and message (tokio-postgres prints only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}
