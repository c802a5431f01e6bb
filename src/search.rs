//! The search syntax compiled for SQL; the functions that run it are in sql/search.sql.

use audit_core::query;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

/// The condition over `audit.events e` for a search query, and its parameter
/// values, which the condition reads as `$1[n]`. Raises a syntax error with the
/// position and the fix.
#[pg_extern(immutable, parallel_safe, strict)]
fn _compile_search(
    query: &str,
) -> TableIterator<'static, (name!(condition, String), name!(params, Vec<String>))> {
    match query::compile(query) {
        Ok(compiled) => TableIterator::once((compiled.condition, compiled.params)),
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("search query: {e}"),
            e.hint,
        ),
    }
}
