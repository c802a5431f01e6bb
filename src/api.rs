//! SQL functions written in Rust: the acting context and application events.

use std::ffi::CString;

use audit_core::actions::normalize_application_action;
use audit_core::canonical::{
    event_hash, push_canonical_json, EventFields, UNIX_TO_PG_EPOCH_MICROS,
};
use audit_core::entity_key::key_hash;
use pgrx::datum::{Inet, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;

use crate::context::{checked_source, Context};
use crate::emit::{self, Emitter, Origin};
use crate::errors::raise;
use crate::gucs::{self, CONTEXT_GUCS};
use crate::shmem;

fn set_guc(name: &std::ffi::CStr, value: Option<&str>, is_local: bool) {
    let value = CString::new(value.unwrap_or("")).unwrap_or_else(|_| {
        raise(
            PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            "audit context values cannot contain NUL characters",
            "Remove the NUL character from the value.",
        )
    });
    let action = if is_local {
        pg_sys::GucAction::GUC_ACTION_LOCAL
    } else {
        pg_sys::GucAction::GUC_ACTION_SET
    };
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pgrx::PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// Sets who is acting for the rest of the transaction (or the session when
/// `is_local` is false). Arguments left NULL fall back to the session defaults.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn set_context(
    actor: default!(Option<&str>, "NULL"),
    actor_role: default!(Option<&str>, "NULL"),
    ip: default!(Option<Inet>, "NULL"),
    user_agent: default!(Option<&str>, "NULL"),
    session_id: default!(Option<&str>, "NULL"),
    source: default!(Option<&str>, "NULL"),
    org_id: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
    is_local: default!(bool, true),
) {
    let source = source.map(checked_source);
    let metadata = metadata.map(|m| match m.0 {
        Value::Object(_) => m.0.to_string(),
        _ => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "audit metadata must be a JSON object",
            r#"Pass an object such as '{"conversation_id": "c_42"}'."#,
        ),
    });
    let ip = ip.map(|i| i.0);
    let values = [
        actor,
        actor_role,
        ip.as_deref(),
        user_agent,
        session_id,
        source,
        org_id,
        metadata.as_deref(),
    ];
    for ((name, _, _), value) in CONTEXT_GUCS.iter().zip(values) {
        set_guc(name, value, is_local);
    }
}

/// Clears the acting context, transaction-local and session-wide alike.
#[pg_extern(volatile, parallel_unsafe)]
fn clear_context() {
    for (name, _, _) in CONTEXT_GUCS {
        set_guc(name, None, false);
    }
}

/// Records an application event no trigger sees (LOGIN, EXPORT, API_CALL ...).
/// It is numbered and stored once the transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
fn log_event(
    action: &str,
    entity_type: default!(Option<&str>, "NULL"),
    entity_id: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "'{}'"),
) {
    let action = normalize_application_action(action).unwrap_or_else(|msg| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            msg,
            "Use a documented action (LOGIN, LOGIN_FAILED, EXPORT, API_CALL, CONFIG_CHANGE, ...) or a custom UPPER_SNAKE_CASE name.",
        )
    });
    let metadata = match metadata.map(|m| m.0) {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "audit.log_event metadata must be a JSON object",
            r#"Pass an object such as '{"reason": "bad password"}'."#,
        ),
    };
    let mut emitter = Emitter::new(
        Context::current(),
        &action,
        entity_type,
        metadata,
        Origin::Application,
    );
    emitter.push(entity_id, None);
    emitter.flush();
}

/// Waits until `reached()`, waking the materializer; false when `timeout_ms` passed first.
fn wait_for_materializer(timeout_ms: i32, reached: impl Fn() -> bool) -> bool {
    if let Some((message, hint)) = emit::not_ready_reason() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            message,
            hint,
        );
    }
    if !shmem::materializer_running() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "the audit worker is not running",
            "It starts with the server when audit is in shared_preload_libraries; see the server log for why it stopped.",
        );
    }
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms.max(0) as u64);
    loop {
        if reached() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        if !shmem::materializer_running() {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "the audit worker stopped",
                "It restarts within seconds; see audit.status() and the server log.",
            );
        }
        shmem::wake_materializer();
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                1,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

fn flushed_wal() -> u64 {
    unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) }
}

/// Waits until every event committed before the call is in the trail (stored
/// by the materializer, visible to queries that start afterwards). Returns
/// false if `timeout_ms` passed first.
#[pg_extern(volatile, parallel_unsafe)]
fn sync(timeout_ms: default!(i32, 10000)) -> bool {
    let target = flushed_wal();
    wait_for_materializer(timeout_ms, || shmem::materialized_through() >= target)
}

/// Seals now: waits until every event committed before the call is stored
/// and sealed into a block. Returns false if `timeout_ms` passed first.
#[pg_extern(volatile, parallel_unsafe)]
fn seal(timeout_ms: default!(i32, 10000)) -> bool {
    let target = flushed_wal();
    // Asked again on every wait: a round that began before this commit was
    // read may take the request and seal short of it.
    wait_for_materializer(timeout_ms, || {
        let sealed = shmem::sealed_through() >= target;
        if !sealed {
            shmem::request_seal();
        }
        sealed
    })
}

/// The role that called into the extension: SET ROLE counts, SECURITY DEFINER
/// functions (ours included) do not. Lets `enable`/`disable` check the caller.
#[pg_extern(stable, parallel_safe)]
fn _caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// The lookup key of a record id (see `audit_core::entity_key::key_hash`).
#[pg_extern(immutable, parallel_safe, strict)]
fn entity_hash(entity_id: &str) -> i32 {
    key_hash(entity_id)
}

/// An event's hash (SHA-256 of its canonical encoding), from its stored
/// fields; NULL for an event not stored yet (it has no id).
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe)]
fn _event_hash(
    id: Option<i64>,
    occurred_at: TimestampWithTimeZone,
    txid: i64,
    statement_id: Option<i64>,
    actor: Option<&str>,
    actor_role: Option<&str>,
    action: &str,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    changes: Option<JsonB>,
    ip: Option<Inet>,
    user_agent: Option<&str>,
    session_id: Option<&str>,
    source: Option<&str>,
    org_id: Option<&str>,
    metadata: Option<JsonB>,
) -> Option<Vec<u8>> {
    let id = id?;
    let canonical = |j: Option<JsonB>| {
        j.map(|j| {
            let mut s = String::new();
            push_canonical_json(&mut s, &j.0);
            s
        })
    };
    let (changes, metadata) = (canonical(changes), canonical(metadata));
    let ip = ip.map(|i| i.0);
    event_hash(&EventFields {
        id,
        occurred_at_unix_micros: occurred_at.into_inner() + UNIX_TO_PG_EPOCH_MICROS,
        txid: txid as u64,
        statement_id,
        actor,
        actor_role,
        action,
        entity_type,
        entity_id,
        changes: changes.as_deref(),
        ip: ip.as_deref(),
        user_agent,
        session_id,
        source,
        org_id,
        metadata: metadata.as_deref(),
    })
    .to_vec()
    .into()
}

/// Raises, with what to do, unless changes captured in this database are stored.
#[pg_extern(stable, parallel_safe)]
fn _check_capture() {
    emit::ensure_ready();
}

fn lsn_text(lsn: u64) -> Option<String> {
    (lsn > 0).then(|| crate::materializer::lsn_text(lsn))
}

/// Whether capture works here, and how far the worker has stored and sealed.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn status() -> TableIterator<
    'static,
    (
        name!(capture_ready, bool),
        name!(problem, Option<String>),
        name!(hint, Option<String>),
        name!(worker_running, bool),
        name!(replication_slot, String),
        name!(stored_through, Option<String>),
        name!(sealed_through, Option<String>),
        name!(wal_behind_bytes, Option<i64>),
    ),
> {
    let reason = emit::not_ready_reason();
    let ready = reason.is_none();
    let problem = reason.or_else(|| {
        shmem::store_problem().map(|e| {
            (
                format!("the audit worker cannot store captured events: {e}"),
                "Remove the cause; the worker retries every few seconds and then stores everything captured meanwhile.".to_string(),
            )
        })
    });
    let stored = shmem::materialized_through();
    let behind = (stored > 0).then(|| flushed_wal().saturating_sub(stored) as i64);
    TableIterator::once((
        ready,
        problem.as_ref().map(|(message, _)| message.clone()),
        problem.map(|(_, hint)| hint),
        shmem::materializer_running(),
        emit::slot_name(unsafe { pg_sys::MyDatabaseId }),
        lsn_text(stored),
        lsn_text(shmem::sealed_through()),
        behind,
    ))
}

/// The advisory lock (key) that `_prepare_capture` holds in the transaction of
/// CREATE EXTENSION, so that the worker does not drop the slot it just made.
pub const PREPARE_CAPTURE_LOCK: &str = "hashtext('audit._prepare_capture')";

/// Run by CREATE EXTENSION: in the database the worker serves, creates the
/// replication slot at once, so that capture works before the worker looks;
/// elsewhere, says why capture is off.
#[pg_extern(volatile, parallel_unsafe)]
fn _prepare_capture() {
    let configured = shmem::preloaded()
        && gucs::text(&gucs::DATABASE).as_deref() == Some(emit::current_database_name().as_str());
    if configured {
        // Held until CREATE EXTENSION ends: the worker, which drops the slot
        // of a database without the extension, leaves it alone meanwhile.
        Spi::run(&format!(
            "SELECT pg_advisory_xact_lock_shared({PREPARE_CAPTURE_LOCK})"
        ))
        .unwrap_or_else(|e| error!("audit cannot lock its replication slot: {e}"));
        crate::materializer::ensure_slot();
    } else if let Some((message, hint)) = emit::not_ready_reason() {
        pgrx::notice!("{message}: events cannot be captured yet. {hint}");
    }
}
