//! Every GUC of the extension.
//!
//! The acting-context settings (`audit.actor` ...) are what `audit.set_context`
//! writes with `set_config`, so they follow transaction and savepoint rollback
//! exactly like any setting. Capture reads them once per statement.

use std::ffi::{CStr, CString};

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static ACTOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ACTOR_ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static IP: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static USER_AGENT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SESSION_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SOURCE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ORG_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static METADATA: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// (GUC name, setting, description) of the acting context, in `set_context` argument order.
pub const CONTEXT_GUCS: [(&CStr, &GucSetting<Option<CString>>, &CStr); 8] = [
    (
        c"audit.actor",
        &ACTOR,
        c"Who is acting (defaults to current_user).",
    ),
    (
        c"audit.actor_role",
        &ACTOR_ROLE,
        c"Application role of the actor.",
    ),
    (
        c"audit.ip",
        &IP,
        c"Client IP address (defaults to inet_client_addr()).",
    ),
    (
        c"audit.user_agent",
        &USER_AGENT,
        c"Client user agent (defaults to application_name).",
    ),
    (c"audit.session_id", &SESSION_ID, c"Application session id."),
    (
        c"audit.source",
        &SOURCE,
        c"UI, API, AUTOMATION, IMPORT, SYSTEM, AI or SQL (default).",
    ),
    (c"audit.org_id", &ORG_ID, c"Tenant organization id."),
    (
        c"audit.metadata",
        &METADATA,
        c"JSON object merged into every event's metadata.",
    ),
];

/// Set (transaction-locally) only by `audit.revert`: a JSON object naming the
/// reverted event. While set, captured changes are recorded as REVERT events.
/// Superuser-only, so that no application can label its own changes as reverts.
pub static REVERT_CONTEXT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Set (transaction-locally) only by retention, whose deletes the guards then let through.
pub static MAINTENANCE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Retention knobs read by the SQL in sql/retention.sql.
pub static ARCHIVE_TABLESPACE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static ARCHIVE_GRACE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"90 days"));
pub static RETENTION_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Seconds between retention runs of the background worker (0 turns it off).
pub static RETENTION_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// Shifts the worker's clock for retention (tests, dry runs looking ahead).
pub static RETENTION_TIME_OFFSET: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Database the background worker serves.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
/// How long stored events wait, at most, before the worker seals them into a block.
pub static SEAL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Settings read by the background worker; defined only when preloaded.
pub fn init_worker() {
    GucRegistry::define_string_guc(
        c"audit.database",
        c"Database whose audit trail the background worker maintains.",
        c"The worker connects at server start; changing it needs a restart.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"audit.retention_interval",
        c"How often the background worker applies the retention policies.",
        c"0 turns retention by the worker off; audit.run_retention() still works.",
        &RETENTION_INTERVAL_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"audit.retention_time_offset",
        c"Interval added to now() when the worker applies retention (testing and dry runs).",
        c"",
        &RETENTION_TIME_OFFSET,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"audit.seal_interval",
        c"How long stored events wait, at most, before the worker seals them into the hash chain.",
        c"0 seals with every batch the worker stores; audit.seal() seals at once.",
        &SEAL_INTERVAL_MS,
        0,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

pub fn init() {
    GucRegistry::define_string_guc(
        c"audit.maintenance",
        c"Internal: set by retention while it removes expired events.",
        c"Superuser-only; the append-only guards let deletes through while it is on.",
        &MAINTENANCE,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"audit.archive_tablespace",
        c"Tablespace for new archive partitions (cold storage); empty: the default tablespace.",
        c"",
        &ARCHIVE_TABLESPACE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"audit.archive_grace",
        c"How long archived events are kept before they are deleted for good.",
        c"An interval, such as '90 days'.",
        &ARCHIVE_GRACE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"audit.retention_batch_size",
        c"Events archived or deleted per batch (the worker commits after each).",
        c"",
        &RETENTION_BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"audit.revert_context",
        c"Internal: set by audit.revert() while it changes a row.",
        c"Captured changes made while it is set are recorded as REVERT events.",
        &REVERT_CONTEXT,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL,
    );
    for (name, setting, description) in CONTEXT_GUCS {
        GucRegistry::define_string_guc(
            name,
            description,
            c"Set through audit.set_context(); read by capture once per statement.",
            setting,
            GucContext::Userset,
            GucFlags::default(),
        );
    }
}

/// The setting's value, with the empty string meaning "not set".
pub fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.is_empty())
}
