//! Which database errors are worth trying again: the connection went away (the server
//! restarted, a backend was terminated, the network dropped), the pool had no connection in
//! time, or the database asked the transaction to be retried. Everything else (a constraint, a
//! fenced write, a bad URL) says the same thing next time.

use super::StoreError;

/// PostgreSQL SQLSTATE classes and codes of a connection that went away or a transaction the
/// server asks to run again.
fn transient_sqlstate(code: &str) -> bool {
    // 08: connection exception; 57P01-57P03: admin shutdown, crash shutdown, cannot connect
    // now; 40001 serialization failure; 40P01 deadlock detected; 53300 too many connections.
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300"
        )
}

/// SQLite result codes (primary, the low byte) that pass: SQLITE_BUSY (5), SQLITE_LOCKED (6).
fn transient_sqlite(code: &str) -> bool {
    code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Whether `e` may succeed when tried again on a fresh connection.
pub fn is_transient_db(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            transient_sqlstate(&code)
                && db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                || transient_sqlite(&code)
                    && db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
        }),
        _ => false,
    }
}

impl StoreError {
    /// The database was unreachable or asked for a retry: the same call may succeed later
    /// (see [`is_transient_db`]).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => is_transient_db(e),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_and_retry_requests_are_transient() {
        for code in [
            "08006", "08001", "57P01", "57P03", "40001", "40P01", "53300",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "42501"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT (517), SQLITE_LOCKED; not READONLY (8) nor FULL (13).
        for (code, want) in [
            ("5", true),
            ("517", true),
            ("6", true),
            ("8", false),
            ("13", false),
        ] {
            assert_eq!(transient_sqlite(code), want, "{code}");
        }
        assert!(StoreError::Db(sqlx::Error::PoolTimedOut).is_transient());
        assert!(
            StoreError::Db(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset
            )))
            .is_transient()
        );
        assert!(!StoreError::Db(sqlx::Error::RowNotFound).is_transient());
        assert!(!StoreError::JobNotFound("x".into()).is_transient());
    }
}
