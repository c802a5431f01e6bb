//! Writes events: resolves the acting context, allocates ids, hashes each
//! event over its canonical encoding and inserts the batch with one cached plan.
//!
//! Everything that does not change within a backend (catalog oids, the owner
//! the rows are written as, the insert plan, the partition horizon) is looked
//! up once and cached; the relcache callback in `capture` resets it when the
//! extension is dropped or recreated.

use std::cell::RefCell;
use std::ffi::CStr;
use std::net::IpAddr;

use audit_core::canonical::{self, EventFields, UNIX_TO_PG_EPOCH_MICROS};
use audit_core::context::{normalize_source, source_hint, DEFAULT_SOURCE};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};

use crate::errors::raise;
use crate::gucs;

/// Per-backend facts about the extension's own objects.
struct Catalog {
    events_relid: pg_sys::Oid,
    sequence_relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    client_addr: Option<String>,
    /// Events up to this instant (Unix microseconds) have a partition.
    partitions_until: i64,
    insert_plan: Option<OwnedPreparedStatement>,
}

thread_local! {
    static CATALOG: RefCell<Option<Catalog>> = const { RefCell::new(None) };
}

/// Forgets the cached catalog facts if `relid` is one of ours (or on a full reset).
pub fn invalidate(relid: pg_sys::Oid) {
    CATALOG.with(|c| {
        let Ok(mut slot) = c.try_borrow_mut() else {
            return;
        };
        let ours = slot.as_ref().is_some_and(|cat| {
            relid == pg_sys::InvalidOid || relid == cat.events_relid || relid == cat.sequence_relid
        });
        if ours {
            *slot = None;
        }
    });
}

fn load_catalog() -> Catalog {
    let (events, sequence, owner, client_addr) = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT 'audit.events'::regclass::oid, 'audit.events_id_seq'::regclass::oid,
                        c.relowner, inet_client_addr()
                   FROM pg_catalog.pg_class c WHERE c.oid = 'audit.events'::regclass",
                None,
                &[],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<pg_sys::Oid>(1)?,
            row.get::<pg_sys::Oid>(2)?,
            row.get::<pg_sys::Oid>(3)?,
            row.get::<pgrx::datum::Inet>(4)?.map(|ip| ip.0),
        ))
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("audit storage is missing: {e}"),
            "Reinstall the extension: DROP EXTENSION audit; CREATE EXTENSION audit;",
        )
    });
    Catalog {
        events_relid: events.expect("regclass is never null"),
        sequence_relid: sequence.expect("regclass is never null"),
        owner: owner.expect("relowner is never null"),
        client_addr,
        partitions_until: i64::MIN,
        insert_plan: None,
    }
}

fn with_catalog<R>(f: impl FnOnce(&mut Catalog) -> R) -> R {
    let mut catalog = CATALOG
        .with(|c| c.borrow_mut().take())
        .unwrap_or_else(load_catalog);
    let result = f(&mut catalog);
    CATALOG.with(|c| *c.borrow_mut() = Some(catalog));
    result
}

/// The role that owns the audit storage (the extension's installer).
pub fn storage_owner() -> pg_sys::Oid {
    with_catalog(|c| c.owner)
}

/// Runs `f` as the owner of the audit storage (the only role that may write it),
/// restoring the caller's identity afterwards, on error too.
pub fn as_storage_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let mut user = pg_sys::InvalidOid;
    let mut sec_context = 0;
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec_context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let _restore = Restore(user, sec_context);
    f()
}

/// Who is acting, resolved once per statement.
pub struct Context {
    pub actor: String,
    pub actor_role: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    pub source: &'static str,
    pub org_id: Option<String>,
    pub metadata: Map<String, Value>,
}

/// `text` as PostgreSQL prints it after reading it as type `type_oid`
/// (how `inet` and `jsonb` values look once stored).
fn text_through_type(text: &str, type_oid: pg_sys::Oid) -> String {
    let cstr = std::ffi::CString::new(text).expect("caller checked for NUL");
    unsafe {
        let (mut input_fn, mut io_param, mut output_fn, mut is_varlena) = (
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            false,
        );
        pg_sys::getTypeInputInfo(type_oid, &mut input_fn, &mut io_param);
        pg_sys::getTypeOutputInfo(type_oid, &mut output_fn, &mut is_varlena);
        let value = pg_sys::OidInputFunctionCall(input_fn, cstr.as_ptr().cast_mut(), io_param, -1);
        let out = pg_sys::OidOutputFunctionCall(output_fn, value);
        CStr::from_ptr(out).to_string_lossy().into_owned()
    }
}

unsafe extern "C-unwind" {
    #[link_name = "nextval_internal"]
    fn nextval_internal_raw(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// `nextval()` without the permission check: events are numbered on behalf of
/// roles that may not touch the sequence themselves.
unsafe fn nextval_internal(relid: pg_sys::Oid) -> i64 {
    pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| nextval_internal_raw(relid, false))
}

/// Checks an IP address or CIDR and returns PostgreSQL's text form of it.
pub fn canonical_ip(text: &str) -> String {
    let trimmed = text.trim();
    let (addr, prefix) = match trimmed.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (trimmed, None),
    };
    let valid = match addr.parse::<IpAddr>() {
        Ok(ip) => prefix.is_none_or(|p| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            p.parse::<u8>().is_ok_and(|bits| bits <= max)
        }),
        Err(_) => false,
    };
    if !valid {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!("invalid audit ip {text:?}"),
            "Give an IPv4 or IPv6 address such as 203.0.113.42 or 2001:db8::1.",
        );
    }
    text_through_type(trimmed, pg_sys::INETOID)
}

/// Parses a metadata JSON object (as `jsonb` prints it) or raises a clear error.
pub fn parse_metadata(text: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "audit metadata must be a JSON object",
            r#"Pass an object such as '{"conversation_id": "c_42"}'."#,
        ),
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!("audit metadata is not valid JSON: {e}"),
            r#"Pass an object such as '{"conversation_id": "c_42"}'."#,
        ),
    }
}

/// Normalizes JSON text the way `jsonb` stores it (numbers, duplicate keys).
fn jsonb_normalized(text: &str) -> String {
    let cstr = std::ffi::CString::new(text).unwrap_or_else(|_| {
        raise(
            PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
            "audit metadata contains a NUL character",
            "Remove \\u0000 from the metadata.",
        )
    });
    text_through_type(
        &cstr.into_string().expect("built from a str"),
        pg_sys::JSONBOID,
    )
}

pub fn checked_source(text: &str) -> &'static str {
    normalize_source(text).unwrap_or_else(|msg| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            msg,
            source_hint(),
        )
    })
}

impl Context {
    /// The context in force now: what `audit.set_context` set, else the session's defaults.
    pub fn current() -> Context {
        let actor = gucs::text(&gucs::ACTOR).unwrap_or_else(|| unsafe {
            CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false))
                .to_string_lossy()
                .into_owned()
        });
        let ip = match gucs::text(&gucs::IP) {
            Some(ip) => Some(canonical_ip(&ip)),
            None => with_catalog(|c| c.client_addr.clone()),
        };
        let user_agent = gucs::text(&gucs::USER_AGENT).or_else(|| unsafe {
            let name = pg_sys::application_name;
            (!name.is_null())
                .then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
        });
        let source = gucs::text(&gucs::SOURCE).map_or(DEFAULT_SOURCE, |s| checked_source(&s));
        let metadata = gucs::text(&gucs::METADATA)
            .map(|m| parse_metadata(&jsonb_normalized(&m)))
            .unwrap_or_default();
        Context {
            actor,
            actor_role: gucs::text(&gucs::ACTOR_ROLE),
            ip,
            user_agent,
            session_id: gucs::text(&gucs::SESSION_ID),
            source,
            org_id: gucs::text(&gucs::ORG_ID),
            metadata,
        }
    }
}

/// One event of a batch: what differs between the events of a statement.
pub struct NewEvent {
    pub entity_id: Option<String>,
    pub changes: Option<String>,
}

/// What all events of a batch share.
pub struct Batch<'a> {
    pub context: &'a Context,
    pub action: &'a str,
    pub entity_type: Option<&'a str>,
    /// Merged over the context's metadata (these keys win).
    pub metadata: Map<String, Value>,
    pub statement_id: StatementId,
    /// A multi-row statement: its statement id is also `metadata.bulk_operation_id`.
    pub bulk: bool,
}

/// The statement id a batch's events carry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StatementId {
    /// Application events belong to no statement.
    None,
    /// The id of the batch's first event (a statement's first batch).
    FirstEvent,
    /// The id given to an earlier batch of the same statement.
    Given(i64),
}

const INSERT_SQL: &str = "INSERT INTO audit.events (id, occurred_at, txid, statement_id, actor, actor_role, \
    action, entity_type, entity_id, changes, ip, user_agent, session_id, source, org_id, metadata, hash) \
    SELECT u.id, $2, $3::text::xid8, $4, $5, $6, $7, $8, u.entity_id, u.changes::jsonb, $11::inet, $12, \
    $13, $14, $15, $16::jsonb, u.hash \
    FROM unnest($1::int8[], $9::text[], $10::text[], $17::bytea[]) AS u(id, entity_id, changes, hash)";

fn ensure_partition(catalog: &mut Catalog, occurred_at: i64) {
    if occurred_at < catalog.partitions_until {
        return;
    }
    let ts = unsafe {
        DatumWithOid::new(
            occurred_at - UNIX_TO_PG_EPOCH_MICROS,
            pg_sys::TIMESTAMPTZOID,
        )
    };
    let until = Spi::get_one_with_args::<i64>(
        // Only the event's own month: creating partitions takes a lock that
        // would block every audited writer until this transaction ends, so
        // months ahead are left to enable() and the background worker.
        "SELECT (extract(epoch FROM audit.ensure_partitions($1, 0)) * 1000000)::int8",
        &[ts],
    )
    .ok()
    .flatten()
    .unwrap_or(i64::MIN);
    catalog.partitions_until = until;
}

/// Writes the batch and returns the ids given to its events.
pub fn write(batch: &Batch<'_>, events: Vec<NewEvent>) -> Vec<i64> {
    if events.is_empty() {
        return Vec::new();
    }
    let ctx = batch.context;
    let txid = unsafe { pg_sys::GetTopFullTransactionId().value };
    let occurred_at_pg = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    let occurred_at = occurred_at_pg + UNIX_TO_PG_EPOCH_MICROS;

    with_catalog(|catalog| {
        let ids: Vec<i64> = events
            .iter()
            .map(|_| unsafe { nextval_internal(catalog.sequence_relid) })
            .collect();
        let statement_id = match batch.statement_id {
            StatementId::None => None,
            StatementId::FirstEvent => Some(ids[0]),
            StatementId::Given(id) => Some(id),
        };
        let mut metadata = ctx.metadata.clone();
        metadata.extend(batch.metadata.clone());
        if let (true, Some(id)) = (batch.bulk, statement_id) {
            metadata.insert("bulk_operation_id".into(), Value::from(id));
        }
        let metadata_text = (!metadata.is_empty()).then(|| {
            let mut s = String::new();
            canonical::push_canonical_json(&mut s, &Value::Object(metadata));
            s
        });
        let hashes: Vec<Vec<u8>> = events
            .iter()
            .zip(&ids)
            .map(|(event, &id)| {
                canonical::event_hash(&EventFields {
                    id,
                    occurred_at_unix_micros: occurred_at,
                    txid,
                    statement_id,
                    actor: Some(&ctx.actor),
                    actor_role: ctx.actor_role.as_deref(),
                    action: batch.action,
                    entity_type: batch.entity_type,
                    entity_id: event.entity_id.as_deref(),
                    changes: event.changes.as_deref(),
                    ip: ctx.ip.as_deref(),
                    user_agent: ctx.user_agent.as_deref(),
                    session_id: ctx.session_id.as_deref(),
                    source: Some(ctx.source),
                    org_id: ctx.org_id.as_deref(),
                    metadata: metadata_text.as_deref(),
                })
                .to_vec()
            })
            .collect();
        let (entity_ids, changes): (Vec<Option<String>>, Vec<Option<String>>) =
            events.into_iter().map(|e| (e.entity_id, e.changes)).unzip();

        let owner = catalog.owner;
        as_storage_owner(owner, || {
            ensure_partition(catalog, occurred_at);
            let args = unsafe {
                [
                    DatumWithOid::from(ids.clone()),
                    DatumWithOid::new(occurred_at_pg, pg_sys::TIMESTAMPTZOID),
                    DatumWithOid::from(txid.to_string()),
                    DatumWithOid::from(statement_id),
                    DatumWithOid::from(ctx.actor.as_str()),
                    DatumWithOid::from(ctx.actor_role.as_deref()),
                    DatumWithOid::from(batch.action),
                    DatumWithOid::from(batch.entity_type),
                    DatumWithOid::from(entity_ids),
                    DatumWithOid::from(changes),
                    DatumWithOid::from(ctx.ip.as_deref()),
                    DatumWithOid::from(ctx.user_agent.as_deref()),
                    DatumWithOid::from(ctx.session_id.as_deref()),
                    DatumWithOid::from(ctx.source),
                    DatumWithOid::from(ctx.org_id.as_deref()),
                    DatumWithOid::from(metadata_text.as_deref()),
                    DatumWithOid::from(hashes),
                ]
            };
            Spi::connect_mut(|client| {
                if catalog.insert_plan.is_none() {
                    let types = [
                        pg_sys::INT8ARRAYOID,
                        pg_sys::TIMESTAMPTZOID,
                        pg_sys::TEXTOID,
                        pg_sys::INT8OID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTARRAYOID,
                        pg_sys::TEXTARRAYOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::TEXTOID,
                        pg_sys::BYTEAARRAYOID,
                    ]
                    .map(pgrx::PgOid::from);
                    catalog.insert_plan = Some(client.prepare_mut(INSERT_SQL, &types)?.keep());
                }
                let plan = catalog.insert_plan.as_ref().expect("prepared above");
                client.update(plan, None, &args).map(|_| ())
            })
            .unwrap_or_else(|e| panic!("audit: writing events failed: {e}"));
        });
        ids
    })
}
