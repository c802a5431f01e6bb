//! The chunks this backend emitted that the materializer has not stored yet.
//!
//! A session sees its own events at once, as it sees its own row changes: in
//! its open transaction, and after commit until the materializer has stored
//! them (the view `audit.events` adds them through `audit._own_pending_chunks()`).
//! Chunks of a rolled-back subtransaction or transaction are forgotten with it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use audit_core::chunk::{Chunk, Row, StoredEvent};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgTupleDesc};

use crate::shmem;
use crate::store::chunk_values;

/// Bytes of chunks kept per backend; beyond, the oldest committed ones go first.
const KEEP_BYTES: usize = 64 << 20;

struct Open {
    subxact: pg_sys::SubTransactionId,
    bytes: Vec<u8>,
}

struct Committed {
    /// End of the commit record: stored once the materializer passed it.
    commit_end: u64,
    bytes: Vec<u8>,
}

thread_local! {
    static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
    static COMMITTED: RefCell<VecDeque<Committed>> = const { RefCell::new(VecDeque::new()) };
    static KEPT: Cell<usize> = const { Cell::new(0) };
    /// Chunks of the open transaction were dropped for room: say so when read.
    static INCOMPLETE: Cell<bool> = const { Cell::new(false) };
}

/// Keeps a chunk written in subtransaction `subxact` until it is stored.
pub fn remember(bytes: Vec<u8>, subxact: pg_sys::SubTransactionId) {
    while KEPT.get() + bytes.len() > KEEP_BYTES {
        let Some(oldest) = COMMITTED.with(|c| c.borrow_mut().pop_front()) else {
            INCOMPLETE.set(true);
            return;
        };
        KEPT.set(KEPT.get() - oldest.bytes.len());
    }
    KEPT.set(KEPT.get() + bytes.len());
    OPEN.with(|o| o.borrow_mut().push(Open { subxact, bytes }));
}

fn forget_open(keep: impl Fn(&Open) -> bool) {
    OPEN.with(|o| {
        let mut open = o.borrow_mut();
        let before: usize = open.iter().map(|e| e.bytes.len()).sum();
        open.retain(keep);
        let after: usize = open.iter().map(|e| e.bytes.len()).sum();
        KEPT.set(KEPT.get() - (before - after));
    });
}

/// Drops the committed chunks whose commits end at or before `stored`.
fn forget_stored(stored: u64) {
    COMMITTED.with(|c| {
        let mut committed = c.borrow_mut();
        while committed.front().is_some_and(|e| e.commit_end <= stored) {
            let gone = committed.pop_front().expect("checked above");
            KEPT.set(KEPT.get() - gone.bytes.len());
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            let commit_end = unsafe { pg_sys::XactLastCommitEnd };
            // Drained, not taken: the list keeps its room for the next transaction.
            OPEN.with(|o| {
                COMMITTED.with(|c| {
                    c.borrow_mut()
                        .extend(o.borrow_mut().drain(..).map(|e| Committed {
                            commit_end,
                            bytes: e.bytes,
                        }))
                })
            });
            // Every later snapshot sees what the materializer has stored by
            // now: a session that never reads its pending events keeps only
            // the last moments' worth, not KEEP_BYTES.
            forget_stored(shmem::materialized_through());
            INCOMPLETE.set(false);
        }
        // A prepared transaction's chunks are stored after COMMIT PREPARED, by whichever session runs it.
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            forget_open(|_| false);
            INCOMPLETE.set(false);
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => OPEN.with(|o| {
            for e in o.borrow_mut().iter_mut().filter(|e| e.subxact == subxact) {
                e.subxact = parent;
            }
        }),
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => forget_open(|e| e.subxact != subxact),
        _ => {}
    }
}

pub fn init() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// Where the materializer stood in the snapshot of the running query: commits
/// ending at or before it are in `audit.event_chunks` for this snapshot too
/// (the materializer updates its state in the transaction that stores them).
fn materialized_in_snapshot() -> u64 {
    // A read-only query: it runs in the calling query's snapshot.
    Spi::connect(|client| {
        client
            .select(
                "SELECT (materialized_lsn - '0/0'::pg_lsn)::int8 FROM audit.materializer_state",
                Some(1),
                &[],
            )?
            .first()
            .get::<i64>(1)
    })
    .ok()
    .flatten()
    .unwrap_or(0) as u64
}

/// A message's events as a row, before the materializer numbers them.
fn unnumbered_row(chunk: Chunk<'_>) -> Row<'_> {
    let shared = chunk.shared;
    Row {
        context: shared.context,
        events: chunk
            .events
            .into_iter()
            .map(|e| StoredEvent {
                id: 0,
                occurred_at: shared.occurred_at,
                txid: shared.txid,
                statement_id: None,
                entity_id: e.entity_id,
                changes: e.changes,
            })
            .collect(),
    }
}

/// This session's events not in `audit.event_chunks` for the running query,
/// as rows without ids (the materializer numbers events when it stores them).
#[pg_extern(stable, parallel_restricted, requires = ["schema"])]
fn _own_pending_chunks(
) -> SetOfIterator<'static, pgrx::composite_type!('static, "audit.event_chunks")> {
    let has_open = OPEN.with(|o| !o.borrow().is_empty());
    let has_committed = COMMITTED.with(|c| !c.borrow().is_empty());
    if INCOMPLETE.get() {
        pgrx::notice!(
            "some audit events of this transaction are shown only once it commits and they are stored"
        );
    }
    if !has_open && !has_committed {
        return SetOfIterator::new(Vec::new());
    }
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    if has_committed {
        // Stored for this snapshot, hence for every later one.
        forget_stored(materialized_in_snapshot());
        COMMITTED.with(|c| chunks.extend(c.borrow().iter().map(|e| e.bytes.clone())));
    }
    OPEN.with(|o| chunks.extend(o.borrow().iter().map(|e| e.bytes.clone())));
    let rows: Vec<_> = chunks
        .iter()
        .map(|bytes| {
            let row = unnumbered_row(Chunk::decode(bytes).expect("this backend encoded it"));
            let tupdesc = PgTupleDesc::for_composite_type("audit.event_chunks")
                .expect("audit.event_chunks exists");
            unsafe {
                PgHeapTuple::from_datums(tupdesc, chunk_values(&row, None))
                    .expect("one datum per column")
            }
        })
        .collect();
    SetOfIterator::new(rows)
}
