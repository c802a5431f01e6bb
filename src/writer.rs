//! Writes events: allocates ids, hashes each event over its canonical encoding
//! and appends the batch to `audit.events` (see `append`).
//!
//! Everything that does not change within a backend (catalog oids, the owner
//! the rows are written as, the client address) is looked up once and cached;
//! the relcache callback in `capture` resets it when the extension is dropped
//! or recreated.

use std::cell::RefCell;
use std::ffi::CString;
use std::rc::Rc;

use audit_core::canonical::{self, EventFields, UNIX_TO_PG_EPOCH_MICROS};
use audit_core::changes::{Changes, Member};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};

use crate::append::{self, Field, Values};
use crate::context::Context;
use crate::errors::raise;

/// Per-backend facts about the extension's own objects.
struct Catalog {
    events_relid: pg_sys::Oid,
    sequence_relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    client_addr: Option<String>,
}

thread_local! {
    static CATALOG: RefCell<Option<Rc<Catalog>>> = const { RefCell::new(None) };
}

/// Forgets cached facts that `relid` (InvalidOid: anything) may have changed.
pub fn invalidate(relid: pg_sys::Oid) {
    let events_relid = CATALOG.with(|c| {
        let Ok(mut slot) = c.try_borrow_mut() else {
            return None;
        };
        let events = slot.as_ref().map(|cat| cat.events_relid);
        let ours = slot.as_ref().is_some_and(|cat| {
            relid == pg_sys::InvalidOid || relid == cat.events_relid || relid == cat.sequence_relid
        });
        if ours {
            *slot = None;
        }
        events
    });
    append::invalidate(relid, events_relid);
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
    }
}

fn catalog() -> Rc<Catalog> {
    if let Some(found) = CATALOG.with(|c| c.borrow().clone()) {
        return found;
    }
    let loaded = Rc::new(load_catalog());
    CATALOG.with(|c| *c.borrow_mut() = Some(loaded.clone()));
    loaded
}

/// The role that owns the audit storage (the extension's installer).
pub fn storage_owner() -> pg_sys::Oid {
    catalog().owner
}

/// The client's address (`inet_client_addr()`), NULL over a unix socket.
pub fn client_addr() -> Option<String> {
    catalog().client_addr.clone()
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

unsafe extern "C-unwind" {
    #[link_name = "nextval_internal"]
    fn nextval_internal_raw(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// `nextval()` without the permission check: events are numbered on behalf of
/// roles that may not touch the sequence themselves.
unsafe fn nextval_internal(relid: pg_sys::Oid) -> i64 {
    pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| nextval_internal_raw(relid, false))
}

/// One event of a batch: what differs between the events of a statement.
pub struct NewEvent<'a> {
    pub entity_id: Option<String>,
    pub changes: Option<Changes<'a>>,
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

/// Datums for `append`, allocated in the current memory context.
mod datum {
    use super::*;

    unsafe extern "C-unwind" {
        pub fn jsonb_in(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
        pub fn inet_in(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    }

    pub fn text(s: &str) -> pg_sys::Datum {
        // text and bytea share the varlena layout.
        bytes(s.as_bytes())
    }

    fn jsonb_string(s: &str) -> pg_sys::JsonbValue {
        let mut v = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvString,
            ..Default::default()
        };
        v.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
            len: s.len() as i32,
            val: s.as_ptr().cast_mut().cast(),
        };
        v
    }

    fn jsonb_object(pairs: &mut [pg_sys::JsonbPair]) -> pg_sys::JsonbValue {
        // jsonb keeps object keys shorter-first, then bytewise.
        pairs.sort_unstable_by(|a, b| unsafe {
            let (a, b) = (a.key.val.string, b.key.val.string);
            let bytes = |s: pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1| {
                std::slice::from_raw_parts(s.val.cast::<u8>(), s.len as usize)
            };
            (a.len, bytes(a)).cmp(&(b.len, bytes(b)))
        });
        let mut v = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvObject,
            ..Default::default()
        };
        v.val.object = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_3 {
            nPairs: pairs.len() as i32,
            pairs: pairs.as_mut_ptr(),
        };
        v
    }

    /// The change set as `jsonb`, built as a value tree (no JSON text to parse).
    /// Field names are distinct columns, so keys need no de-duplication.
    pub fn changes(changes: &Changes<'_>) -> pg_sys::Datum {
        let member = |key: &str, value: Member<'_>| {
            let value = match value {
                Member::Text(s) => jsonb_string(s),
                Member::Null => pg_sys::JsonbValue {
                    type_: pg_sys::jbvType::jbvNull,
                    ..Default::default()
                },
                Member::True => {
                    let mut v = pg_sys::JsonbValue {
                        type_: pg_sys::jbvType::jbvBool,
                        ..Default::default()
                    };
                    v.val.boolean = true;
                    v
                }
            };
            pg_sys::JsonbPair {
                key: jsonb_string(key),
                value,
                order: 0,
            }
        };
        let mut members: Vec<Vec<pg_sys::JsonbPair>> = changes
            .fields()
            .iter()
            .map(|(_, change)| change.members().map(|(k, v)| member(k, v)).collect())
            .collect();
        let mut fields: Vec<pg_sys::JsonbPair> = changes
            .fields()
            .iter()
            .zip(members.iter_mut())
            .map(|((name, _), members)| pg_sys::JsonbPair {
                key: jsonb_string(name),
                value: jsonb_object(members),
                order: 0,
            })
            .collect();
        let mut root = jsonb_object(&mut fields);
        unsafe { pg_sys::JsonbValueToJsonb(&mut root).into() }
    }

    pub fn bytes(b: &[u8]) -> pg_sys::Datum {
        unsafe { pg_sys::cstring_to_text_with_len(b.as_ptr().cast(), b.len() as i32).into() }
    }

    /// Through the type's input function (`jsonb_in`, `inet_in`): the text is
    /// already known valid, this only builds the binary value.
    pub fn parsed(
        input: unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
        s: &str,
    ) -> pg_sys::Datum {
        let cstr = CString::new(s).expect("JSON and inet text hold no NUL");
        unsafe {
            pg_sys::DirectFunctionCall1Coll(
                Some(input),
                pg_sys::InvalidOid,
                pg_sys::Datum::from(cstr.as_ptr()),
            )
        }
    }
}

/// Writes the batch and returns the ids given to its events.
pub fn write(batch: &Batch<'_>, events: Vec<NewEvent<'_>>) -> Vec<i64> {
    if events.is_empty() {
        return Vec::new();
    }
    let ctx = batch.context;
    let catalog = catalog();
    // The xid is assigned before ids are drawn: sealing relies on it (see ledger).
    let txid = unsafe { pg_sys::GetTopFullTransactionId().value };
    let occurred_at_pg = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    let occurred_at = occurred_at_pg + UNIX_TO_PG_EPOCH_MICROS;
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
    let hashes: Vec<[u8; 32]> = events
        .iter()
        .zip(&ids)
        .map(|(event, &id)| {
            let changes = event.changes.as_ref().map(Changes::canonical_json);
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
                changes: changes.as_deref(),
                ip: ctx.ip.as_deref(),
                user_agent: ctx.user_agent.as_deref(),
                session_id: ctx.session_id.as_deref(),
                source: Some(ctx.source),
                org_id: ctx.org_id.as_deref(),
                metadata: metadata_text.as_deref(),
            })
        })
        .collect();

    as_storage_owner(catalog.owner, || {
        append::insert(occurred_at_pg, || {
            let opt_text = |s: Option<&str>| s.map(datum::text);
            let mut shared: Values = [None; 17];
            shared[Field::OccurredAt as usize] = Some(occurred_at_pg.into());
            shared[Field::Txid as usize] = Some(txid.into());
            shared[Field::StatementId as usize] = statement_id.map(Into::into);
            shared[Field::Actor as usize] = Some(datum::text(&ctx.actor));
            shared[Field::ActorRole as usize] = opt_text(ctx.actor_role.as_deref());
            shared[Field::Action as usize] = Some(datum::text(batch.action));
            shared[Field::EntityType as usize] = opt_text(batch.entity_type);
            shared[Field::Ip as usize] = ctx
                .ip
                .as_deref()
                .map(|ip| datum::parsed(datum::inet_in, ip));
            shared[Field::UserAgent as usize] = opt_text(ctx.user_agent.as_deref());
            shared[Field::SessionId as usize] = opt_text(ctx.session_id.as_deref());
            shared[Field::Source as usize] = Some(datum::text(ctx.source));
            shared[Field::OrgId as usize] = opt_text(ctx.org_id.as_deref());
            shared[Field::Metadata as usize] = metadata_text
                .as_deref()
                .map(|m| datum::parsed(datum::jsonb_in, m));
            events
                .iter()
                .zip(&ids)
                .zip(&hashes)
                .map(|((event, &id), hash)| {
                    let mut row = shared;
                    row[Field::Id as usize] = Some(id.into());
                    row[Field::EntityId as usize] = opt_text(event.entity_id.as_deref());
                    row[Field::Changes as usize] = event.changes.as_ref().map(datum::changes);
                    row[Field::Hash as usize] = Some(datum::bytes(hash));
                    row
                })
                .collect()
        })
    });
    ids
}
