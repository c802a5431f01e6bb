//! SQL functions written in Rust: the acting context and application events.

use std::ffi::CString;

use audit_core::actions::normalize_application_action;
use pgrx::datum::Inet;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::Value;

use crate::context::{checked_source, Context};
use crate::errors::raise;
use crate::gucs::CONTEXT_GUCS;
use crate::writer::{self, Batch, NewEvent, StatementId};

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

/// Records an application event no trigger sees (LOGIN, EXPORT, API_CALL ...)
/// and returns its id.
#[pg_extern(volatile, parallel_unsafe)]
fn log_event(
    action: &str,
    entity_type: default!(Option<&str>, "NULL"),
    entity_id: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "'{}'"),
) -> i64 {
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
    let context = Context::current();
    let batch = Batch {
        context: &context,
        action: &action,
        entity_type,
        metadata,
        statement_id: StatementId::None,
        bulk: false,
    };
    let event = NewEvent {
        entity_id: entity_id.map(str::to_owned),
        changes: None,
    };
    writer::write(&batch, vec![event])[0]
}

/// The role that called into the extension: SET ROLE counts, SECURITY DEFINER
/// functions (ours included) do not. Lets `enable`/`disable` check the caller.
#[pg_extern(stable, parallel_safe)]
fn _caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}
