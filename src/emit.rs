//! Emits captured events into the WAL.
//!
//! The events of a statement are written as transactional WAL messages of up
//! to `CHUNK_CAPACITY` events. Nothing else happens on the writer's path: the
//! materializer reads the messages once the transaction has committed, numbers
//! the events in commit order, and stores, indexes and seals them (see
//! `materializer`). A transaction that rolls back leaves messages nobody stores.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::rc::Rc;

use std::borrow::Cow;

use audit_core::canonical;
use audit_core::changes::Changes;
use audit_core::chunk::{self, ChunkWriter, Shared};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};

use crate::context::Context;
use crate::errors::raise;
use crate::{gucs, pending, shmem, unguarded};

/// Prefix of the WAL messages that carry chunks.
pub const MESSAGE_PREFIX: &CStr = c"audit";

/// The replication slot that keeps the WAL of a database until its chunks are materialized.
pub fn slot_name(database: pg_sys::Oid) -> String {
    format!("audit_{}", database.to_u32())
}

pub fn current_database_name() -> String {
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
            "Run SELECT audit._prepare_capture(); as a superuser to recreate it, or restart PostgreSQL (the audit worker recreates it).".into(),
        ));
    }
    None
}

thread_local! {
    /// Capture was found ready once; the setup does not change without a restart.
    static READY: Cell<bool> = const { Cell::new(false) };
    /// The transaction and number of the last statement that emitted.
    static LAST_STATEMENT: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
    /// The size of the last message: the next one (most likely the same
    /// statement again) starts with that much room instead of growing into it.
    static LAST_MESSAGE_BYTES: Cell<usize> = const { Cell::new(256) };
}

/// The next statement's number within transaction `txid`.
fn next_statement(txid: u64) -> u32 {
    let (last_txid, last) = LAST_STATEMENT.get();
    let n = if last_txid == txid { last + 1 } else { 0 };
    LAST_STATEMENT.set((txid, n));
    n
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

/// What the messages of one emitter share, read when its first event comes.
struct SharedFacts {
    occurred_at: i64,
    txid: u64,
    /// The subtransaction the messages belong to (forgotten if it rolls back).
    subxact: pg_sys::SubTransactionId,
    statement: Option<u32>,
    /// Canonical JSON of the context's metadata merged with the emitter's.
    metadata: Option<String>,
}

/// Writes the events of one statement (or one application event) as messages.
pub struct Emitter<'a> {
    context: Rc<Context>,
    action: &'a str,
    entity_type: Option<&'a str>,
    /// Merged over the context's metadata (these keys win).
    metadata: Map<String, Value>,
    origin: Origin,
    /// What the messages share, set when the first event comes.
    shared: Option<SharedFacts>,
    chunk: Option<ChunkWriter>,
}

impl<'a> Emitter<'a> {
    pub fn new(
        context: Rc<Context>,
        action: &'a str,
        entity_type: Option<&'a str>,
        metadata: Map<String, Value>,
        origin: Origin,
    ) -> Self {
        Emitter {
            context,
            action,
            entity_type,
            metadata,
            origin,
            shared: None,
            chunk: None,
        }
    }

    pub fn push(&mut self, entity_id: Option<&str>, changes: Option<&Changes<'_>>) {
        self.chunk().push(entity_id, changes);
        self.event_written();
    }

    /// The message the next event goes into, started when none is open. After
    /// writing one event into it, call [`Self::event_written`].
    pub fn chunk(&mut self) -> &mut ChunkWriter {
        if self.chunk.is_none() {
            self.start_chunk();
        }
        self.chunk.as_mut().expect("started above")
    }

    /// Writes the message once it holds as many events as a message may.
    pub fn event_written(&mut self) {
        if self.chunk.as_ref().is_some_and(ChunkWriter::is_full) {
            self.flush();
        }
    }

    fn start_chunk(&mut self) {
        let facts = self.shared.get_or_insert_with(|| {
            ensure_ready();
            // The statement's start is when its events happened.
            let (occurred_at, txid, subxact) = unsafe {
                unguarded::batch(|| {
                    (
                        unguarded::statement_start_timestamp(),
                        unguarded::top_full_transaction_id().value,
                        unguarded::current_subtransaction_id(),
                    )
                })
            };
            let statement =
                matches!(self.origin, Origin::Statement { .. }).then(|| next_statement(txid));
            // The emitter's keys win over the context's.
            let merged;
            let metadata = if self.metadata.is_empty() {
                &self.context.metadata
            } else {
                let mut with_emitter_keys = self.context.metadata.clone();
                with_emitter_keys.extend(std::mem::take(&mut self.metadata));
                merged = with_emitter_keys;
                &merged
            };
            let metadata = (!metadata.is_empty()).then(|| {
                let mut text = String::new();
                canonical::push_canonical_json_object(&mut text, metadata);
                text
            });
            SharedFacts {
                occurred_at,
                txid,
                subxact,
                statement,
                metadata,
            }
        });
        let ctx = &self.context;
        self.chunk = Some(ChunkWriter::with_capacity(
            &Shared {
                occurred_at: facts.occurred_at,
                txid: facts.txid,
                statement: facts.statement,
                bulk: matches!(self.origin, Origin::Statement { rows } if rows > 1),
                context: chunk::Context {
                    action: Cow::Borrowed(self.action),
                    entity_type: self.entity_type,
                    actor: Some(&ctx.actor),
                    actor_role: ctx.actor_role.as_deref(),
                    ip: ctx.ip.as_deref(),
                    user_agent: ctx.user_agent.as_deref(),
                    session_id: ctx.session_id.as_deref(),
                    source: Some(ctx.source),
                    org_id: ctx.org_id.as_deref(),
                    metadata: facts.metadata.as_deref().map(Cow::Borrowed),
                },
            },
            LAST_MESSAGE_BYTES.get(),
        ));
    }

    /// Writes the open message, if any.
    pub fn flush(&mut self) {
        let Some(chunk) = self.chunk.take() else {
            return;
        };
        let bytes = chunk.finish();
        LAST_MESSAGE_BYTES.set(bytes.len().clamp(256, 64 << 10));
        let (message, size) = (bytes.as_ptr(), bytes.len());
        unsafe {
            unguarded::batch(|| {
                unguarded::log_logical_message(MESSAGE_PREFIX.as_ptr(), message.cast(), size, true)
            });
        }
        let subxact = self.shared.as_ref().expect("set with the chunk").subxact;
        pending::remember(bytes, subxact);
    }
}
