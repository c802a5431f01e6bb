//! The search syntax compiled for SQL; the functions that run it are in sql/search.sql.

use audit_core::query;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

/// The condition over `audit._event_rows r` for a search query, its parameter
/// values (which the condition reads as `$1[n]`), and whether it names a
/// record. Raises a syntax error with the position and the fix.
#[pg_extern(immutable, parallel_safe, strict)]
fn _compile_search(
    query: &str,
) -> TableIterator<
    'static,
    (
        name!(condition, String),
        name!(params, Vec<String>),
        name!(record_lookup, bool),
    ),
> {
    match query::compile(query) {
        Ok(compiled) => {
            TableIterator::once((compiled.condition, compiled.params, compiled.record_lookup))
        }
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("search query: {e}"),
            e.hint,
        ),
    }
}
