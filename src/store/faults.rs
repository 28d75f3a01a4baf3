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

/// Why a database file cannot take writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritable {
    /// The file, its directory or its file system is read-only (SQLITE_READONLY, EROFS,
    /// EACCES, EPERM).
    ReadOnly,
    /// No room left: the disk or a quota is full, or the file size limit is reached
    /// (SQLITE_FULL, ENOSPC, EDQUOT, EFBIG, and SQLite's I/O errors on write).
    Full,
}

impl Unwritable {
    /// What to do about it, for the operator.
    pub fn advice(self) -> &'static str {
        match self {
            Unwritable::ReadOnly => {
                "it is read-only: make the file and its directory writable by this user (and the file system writable), then run the command again"
            }
            Unwritable::Full => {
                "the disk is full (or a quota or file size limit is reached): free space where the file lives, then run the command again"
            }
        }
    }
}

/// Whether `e` says the database cannot be written, and why.
pub fn unwritable(e: &sqlx::Error) -> Option<Unwritable> {
    match e {
        sqlx::Error::Database(db) => {
            let code: i64 = db.code()?.parse().ok()?;
            db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
            match code & 0xff {
                8 => Some(Unwritable::ReadOnly),
                // SQLITE_FULL; SQLITE_IOERR (its extended codes: a write, an fsync, a truncate
                // that failed), which is how SQLite reports EFBIG and most full disks.
                13 | 10 => Some(Unwritable::Full),
                _ => None,
            }
        }
        sqlx::Error::Io(io) => match io.raw_os_error()? {
            libc::EROFS | libc::EACCES | libc::EPERM => Some(Unwritable::ReadOnly),
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => Some(Unwritable::Full),
            _ => None,
        },
        _ => None,
    }
}

impl StoreError {
    /// Why the database cannot take writes, when that is what this error says.
    pub fn unwritable(&self) -> Option<Unwritable> {
        match self {
            StoreError::Db(e) | StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                unwritable(e)
            }
            _ => None,
        }
    }

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
