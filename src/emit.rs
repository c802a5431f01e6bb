//! Emits captured events into the WAL.
//!
//! The events of a statement are grouped into chunks of up to
//! `CHUNK_CAPACITY`; each chunk takes one value of `audit.events_id_seq` (which
//! advances by that much) and is written as one transactional WAL message.
//! Nothing else happens on the writer's path: the materializer reads the
//! message once the transaction has committed, and stores, indexes and seals
//! the chunk (see `materializer`). A transaction that rolls back leaves a
//! message nobody materializes.

use std::cell::Cell;
use std::ffi::{c_char, CStr, CString};
use std::rc::Rc;

use audit_core::canonical;
use audit_core::changes::Changes;
use audit_core::chunk::{ChunkWriter, Shared};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};

use crate::catalog;
use crate::context::Context;
use crate::errors::raise;
use crate::{gucs, pending, shmem};

/// Prefix of the WAL messages that carry chunks.
pub const MESSAGE_PREFIX: &CStr = c"audit";

unsafe extern "C-unwind" {
    #[link_name = "LogLogicalMessage"]
    fn log_logical_message_raw(
        prefix: *const c_char,
        message: *const c_char,
        size: usize,
        transactional: bool,
    ) -> pg_sys::XLogRecPtr;
    #[link_name = "nextval_internal"]
    fn nextval_internal_raw(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// The replication slot that keeps the WAL of a database until its chunks are materialized.
pub fn slot_name(database: pg_sys::Oid) -> String {
    format!("audit_{}", database.to_u32())
}

fn current_database_name() -> String {
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

pub fn slot_exists(database: pg_sys::Oid) -> bool {
    let name = CString::new(slot_name(database)).expect("slot names hold no NUL");
    unsafe { !pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true).is_null() }
}

/// Why capture cannot run in this database, or None when it can.
pub fn not_ready_reason() -> Option<(String, String)> {
    if !shmem::preloaded() {
        return Some((
            "audit capture needs the audit library preloaded".into(),
            "Add audit to shared_preload_libraries, set audit.database to this database's name, and restart PostgreSQL.".into(),
        ));
    }
    let here = current_database_name();
    let configured = gucs::text(&gucs::DATABASE).unwrap_or_default();
    if configured != here {
        return Some((
            format!("audit capture is not set up for database \"{here}\" (audit.database is \"{configured}\")"),
            format!("Set audit.database = '{here}' in postgresql.conf and restart PostgreSQL."),
        ));
    }
    if !slot_exists(unsafe { pg_sys::MyDatabaseId }) {
        return Some((
            format!(
                "the replication slot {} that keeps audit events until they are stored is missing",
                slot_name(unsafe { pg_sys::MyDatabaseId })
            ),
            "Run SELECT audit.setup_capture(); (or restart PostgreSQL: the audit worker recreates it).".into(),
        ));
    }
    None
}

thread_local! {
    /// Capture was found ready once; the setup does not change without a restart.
    static READY: Cell<bool> = const { Cell::new(false) };
}

/// Raises unless this database captures (checked once per backend).
pub fn ensure_ready() {
    if READY.get() {
        return;
    }
    if let Some((message, hint)) = not_ready_reason() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            message,
            hint,
        );
    }
    READY.set(true);
}

/// What kind of events an [`Emitter`] writes.
pub enum Origin {
    /// A statement's row changes (or TRUNCATE): the events share a statement id,
    /// the id of the statement's first event. `rows` > 1 marks a bulk operation.
    Statement { rows: i64 },
    /// An application event (`audit.log_event`): no statement id.
    Application,
}

/// Writes the events of one statement (or one application event) as chunks.
pub struct Emitter {
    context: Rc<Context>,
    action: String,
    entity_type: Option<String>,
    /// Merged over the context's metadata (these keys win).
    metadata: Map<String, Value>,
    origin: Origin,
    occurred_at: i64,
    txid: u64,
    statement_id: Option<i64>,
    metadata_text: Option<String>,
    chunk: Option<ChunkWriter>,
    first_event_id: Option<i64>,
}

impl Emitter {
    pub fn new(
        context: Rc<Context>,
        action: &str,
        entity_type: Option<&str>,
        metadata: Map<String, Value>,
        origin: Origin,
    ) -> Self {
        Emitter {
            context,
            action: action.to_owned(),
            entity_type: entity_type.map(str::to_owned),
            metadata,
            origin,
            occurred_at: 0,
            txid: 0,
            statement_id: None,
            metadata_text: None,
            chunk: None,
            first_event_id: None,
        }
    }

    /// The id of the first event written, once one was.
    pub fn first_event_id(&self) -> Option<i64> {
        self.first_event_id
    }

    pub fn push(&mut self, entity_id: Option<&str>, changes: Option<&Changes<'_>>) {
        if self.chunk.is_none() {
            self.start_chunk();
        }
        let chunk = self.chunk.as_mut().expect("started above");
        chunk.push(entity_id, changes);
        if chunk.is_full() {
            self.flush();
        }
    }

    fn start_chunk(&mut self) {
        ensure_ready();
        let first_id = unsafe {
            let relid = catalog::get().sequence_relid;
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| nextval_internal_raw(relid, false))
        };
        if self.first_event_id.is_none() {
            self.first_event_id = Some(first_id);
            // The xid is what the chunk is materialized under; the statement's
            // start is when its events happened.
            self.txid = unsafe { pg_sys::GetTopFullTransactionId().value };
            self.occurred_at = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
            if let Origin::Statement { rows } = self.origin {
                self.statement_id = Some(first_id);
                if rows > 1 {
                    self.metadata
                        .insert("bulk_operation_id".into(), Value::from(first_id));
                }
            }
            let mut metadata = self.context.metadata.clone();
            metadata.extend(std::mem::take(&mut self.metadata));
            self.metadata_text = (!metadata.is_empty()).then(|| {
                let mut text = String::new();
                canonical::push_canonical_json(&mut text, &Value::Object(metadata));
                text
            });
        }
        let ctx = &self.context;
        self.chunk = Some(ChunkWriter::new(
            first_id,
            &Shared {
                occurred_at: self.occurred_at,
                txid: self.txid,
                statement_id: self.statement_id,
                action: &self.action,
                entity_type: self.entity_type.as_deref(),
                actor: Some(&ctx.actor),
                actor_role: ctx.actor_role.as_deref(),
                ip: ctx.ip.as_deref(),
                user_agent: ctx.user_agent.as_deref(),
                session_id: ctx.session_id.as_deref(),
                source: Some(ctx.source),
                org_id: ctx.org_id.as_deref(),
                metadata: self.metadata_text.as_deref(),
            },
        ));
    }

    /// Writes the open chunk, if any.
    pub fn flush(&mut self) {
        let Some(mut chunk) = self.chunk.take() else {
            return;
        };
        let bytes = chunk.finish();
        unsafe {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                log_logical_message_raw(
                    MESSAGE_PREFIX.as_ptr(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    true,
                )
            });
        }
        pending::remember(bytes);
    }
}
