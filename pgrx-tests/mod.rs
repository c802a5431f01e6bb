//! In-database tests (`cargo pgrx test`). Each runs in its own transaction,
//! rolled back at the end, in parallel with the others: tables get names of
//! their own and counts filter on them.
#![allow(clippy::bool_assert_comparison)]

mod capture;
mod context;
mod retention;
mod revert;
mod search;
mod storage;

use pgrx::datum::{FromDatum, IntoDatum};
use pgrx::prelude::*;
use serde_json::Value;

pub fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
    Spi::get_one::<T>(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: returned NULL"))
}

/// The value of a query that may return NULL.
pub fn maybe<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn count(sql: &str) -> i64 {
    one::<i64>(&format!("SELECT count(*) FROM ({sql}) AS counted"))
}

/// The JSON value of a query returning one json/jsonb (or text) value.
pub fn json(sql: &str) -> Value {
    let text = one::<String>(&format!("SELECT ({sql})::text"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: {e}: {text}"))
}

/// Runs `sql` in a subtransaction and returns "SQLSTATE: message | hint" of the
/// error it raises, or "no error".
pub fn error_of(sql: &str) -> String {
    if Spi::get_one::<bool>("SELECT to_regprocedure('pg_temp.audit_test_error(text)') IS NULL")
        .unwrap()
        .unwrap_or(true)
    {
        create_error_helper();
    }
    let quoted = sql.replace('\'', "''");
    one::<String>(&format!("SELECT pg_temp.audit_test_error('{quoted}')"))
}

fn create_error_helper() {
    run(
        r#"CREATE FUNCTION pg_temp.audit_test_error(statement text) RETURNS text
           LANGUAGE plpgsql AS $f$
           DECLARE state text; message text; hint text;
           BEGIN
               EXECUTE statement;
               RETURN 'no error';
           EXCEPTION WHEN OTHERS THEN
               GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
               RETURN state || ': ' || message || ' | ' || hint;
           END $f$"#,
    );
}

/// Asserts that `sql` fails with `sqlstate` and a message containing `fragment`, and a hint.
pub fn assert_error(sql: &str, sqlstate: &str, fragment: &str) {
    let error = error_of(sql);
    assert!(
        error.starts_with(&format!("{sqlstate}: ")) && error.contains(fragment),
        "{sql}\n expected {sqlstate} containing {fragment:?}\n got {error}"
    );
    let hint = error.rsplit(" | ").next().unwrap_or_default();
    assert!(!hint.is_empty(), "{sql}: error without a hint: {error}");
}
