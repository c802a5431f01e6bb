//! Pure logic of the `audit` PostgreSQL extension.
//!
//! Nothing here knows about PostgreSQL's memory, catalogs or types: every
//! function takes and returns plain Rust values so it can be unit tested with
//! `cargo test -p audit-core` and reused by external verifiers.

pub mod actions;
pub mod canonical;
pub mod changes;
pub mod chunk;
pub mod context;
pub mod entity_key;
pub mod entity_runs;
pub mod ledger;
pub mod pg_text;
pub mod query;
pub mod retention;
pub mod utf8;
pub mod varint;
