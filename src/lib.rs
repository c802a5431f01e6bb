//! `audit`: a tamper-evident, field-level audit trail inside PostgreSQL.
//!
//! This crate is the thin PostgreSQL glue; the pure logic (change sets,
//! canonical encoding and hashing, search grammar, policy rules) lives in the
//! `audit-core` crate.

use pgrx::prelude::*;

mod api;
mod capture;
mod catalog;
mod context;
mod emit;
mod entity_index;
mod errors;
mod gucs;
mod ledger;
mod materializer;
mod output_style;
mod pending;
mod retention;
mod search;
mod shmem;
mod store;
mod unguarded;
mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/ledger.sql", name = "ledger", requires = ["schema"]);
extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = [
        "schema",
        "ledger",
        capture,
        capture_row,
        api::log_event,
        api::_caller,
        api::sync,
        api::seal,
        api::entity_hash,
        entity_index::_entity_chunks,
        entity_index::_merge_entity_runs,
        api::_event_hash,
        api::_check_capture,
        api::_prepare_capture,
        api::status,
        pending::_own_pending_chunks,
        ledger::verify,
        ledger::verify_digest
    ]
);
extension_sql_file!(
    "../sql/revert.sql",
    name = "revert_functions",
    requires = ["api"]
);
extension_sql_file!(
    "../sql/retention.sql",
    name = "retention_policies",
    requires = [
        "revert_functions",
        retention::retention_categories,
        retention::action_category,
        retention::set_retention
    ]
);
extension_sql_file!(
    "../sql/search.sql",
    name = "search_functions",
    requires = ["retention_policies", search::_compile_search],
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    capture::init();
    pending::init();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::init();
        gucs::init_worker();
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[path = "../pgrx-tests/mod.rs"]
mod tests;

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// Capture needs the worker: preloaded, serving the test database.
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'audit'",
            "audit.database = 'pgrx_tests'",
        ]
    }
}
