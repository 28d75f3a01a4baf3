//! How the domain identifiers and states speak sqlx on both backends.
//!
//! `JobId` is a native `uuid` on PostgreSQL (16 bytes, indexed as such) and hyphenated `TEXT` on
//! SQLite, where a BLOB would make the database unreadable with the `sqlite3` shell and prefix
//! search (`prodigy status 0192f5a0`) would need hex conversion; `CAST(id AS TEXT)` gives the same
//! hyphenated text on both, so one query serves both. Item keys, repository names, commits and
//! the state enums are `TEXT` everywhere; pull-request numbers `BIGINT` (SQLite's `INTEGER`).

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

use crate::types::{
    CommitSha, ErrorClass, ItemKey, ItemStatus, JobId, JobStatus, Phase, PrNumber, RepoName,
};

impl Type<Postgres> for JobId {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for JobId {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <Uuid as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, Postgres> for JobId {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        Ok(JobId(<Uuid as Decode<Postgres>>::decode(value)?))
    }
}

impl Type<Sqlite> for JobId {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for JobId {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.hyphenated().to_string(), buf)
    }
}

impl Decode<'_, Sqlite> for JobId {
    fn decode(value: SqliteValueRef<'_>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(text.parse::<JobId>()?)
    }
}

/// `TEXT` on both backends, written with `$to_text` and read back with `$from_text`.
macro_rules! text_type {
    ($ty:ty, |$v:ident| $to_text:expr, |$s:ident| $from_text:expr) => {
        text_type!(@db Sqlite, SqliteTypeInfo, SqliteArgumentsBuffer, SqliteValueRef, $ty, |$v| $to_text, |$s| $from_text);
        text_type!(@db Postgres, PgTypeInfo, PgArgumentBuffer, PgValueRef, $ty, |$v| $to_text, |$s| $from_text);
    };
    (@db $db:ident, $info:ident, $buf:ident, $value:ident, $ty:ty, |$v:ident| $to_text:expr, |$s:ident| $from_text:expr) => {
        impl Type<$db> for $ty {
            fn type_info() -> $info {
                <String as Type<$db>>::type_info()
            }
            fn compatible(ty: &$info) -> bool {
                <String as Type<$db>>::compatible(ty)
            }
        }

        impl Encode<'_, $db> for $ty {
            fn encode_by_ref(&self, buf: &mut $buf) -> Result<IsNull, BoxDynError> {
                let $v = self;
                <&str as Encode<$db>>::encode($to_text, buf)
            }
        }

        impl Decode<'_, $db> for $ty {
            fn decode(value: $value<'_>) -> Result<Self, BoxDynError> {
                let $s = <&str as Decode<$db>>::decode(value)?;
                $from_text
            }
        }
    };
}

text_type!(ItemKey, |k| k.0.as_str(), |s| Ok(ItemKey(s.to_string())));
text_type!(RepoName, |r| r.as_str(), |s| Ok(RepoName::new(s)));
text_type!(JobStatus, |e| e.as_str(), |s| Ok(s.parse::<JobStatus>()?));
text_type!(Phase, |e| e.as_str(), |s| Ok(s.parse::<Phase>()?));
text_type!(ItemStatus, |e| e.as_str(), |s| Ok(s.parse::<ItemStatus>()?));
text_type!(ErrorClass, |e| e.as_str(), |s| Ok(s.parse::<ErrorClass>()?));
text_type!(CommitSha, |c| c.as_str(), |s| Ok(CommitSha(s.to_string())));

/// `BIGINT` on both backends (GitHub's numbers are far below `i64::MAX`).
macro_rules! bigint_type {
    ($db:ident, $info:ident, $buf:ident, $value:ident) => {
        impl Type<$db> for PrNumber {
            fn type_info() -> $info {
                <i64 as Type<$db>>::type_info()
            }
            fn compatible(ty: &$info) -> bool {
                <i64 as Type<$db>>::compatible(ty)
            }
        }

        impl Encode<'_, $db> for PrNumber {
            fn encode_by_ref(&self, buf: &mut $buf) -> Result<IsNull, BoxDynError> {
                <i64 as Encode<$db>>::encode(i64::try_from(self.0)?, buf)
            }
        }

        impl Decode<'_, $db> for PrNumber {
            fn decode(value: $value<'_>) -> Result<Self, BoxDynError> {
                Ok(PrNumber(u64::try_from(<i64 as Decode<$db>>::decode(
                    value,
                )?)?))
            }
        }
    };
}

bigint_type!(
    Sqlite,
    SqliteTypeInfo,
    SqliteArgumentsBuffer,
    SqliteValueRef
);
bigint_type!(Postgres, PgTypeInfo, PgArgumentBuffer, PgValueRef);
