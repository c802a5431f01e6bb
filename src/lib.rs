//! `audit`: a tamper-evident, field-level audit trail inside PostgreSQL.
//!
//! This crate is the thin PostgreSQL glue; the pure logic (change sets,
//! canonical encoding and hashing, search grammar, policy rules) lives in the
//! `audit-core` crate.

use pgrx::prelude::*;

mod api;
mod capture;
mod errors;
mod gucs;
mod output_style;
mod writer;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = ["schema", capture, capture_row, api::log_event, api::_caller],
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    capture::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[path = "../pgrx-tests/mod.rs"]
mod tests;

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
