//! Appends event rows to `audit.events` without the executor.
//!
//! An INSERT through SPI costs, per statement, a plan-cache check, executor
//! start-up (a ModifyTable over a partitioned table), tuple routing and the
//! opening of every index, before any row is written. Capture is on every
//! audited write's path, so rows go straight into the month's partition with
//! `heap_multi_insert` and then into each of its indexes, which is what the
//! executor would end up doing, minus the set-up.
//!
//! What does not change between statements is cached per backend and
//! partition: the tuple descriptor, where each event field sits in it, and the
//! partition's indexes with their prepared predicates and expressions. The
//! relcache callback forgets a partition when it or its parent changes (any
//! ALTER, CREATE/DROP INDEX, DROP); a write in flight keeps its `Rc`.

use std::cell::RefCell;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

/// The columns of `audit.events`, in the order `Values` holds them.
#[derive(Clone, Copy)]
pub enum Field {
    Id,
    OccurredAt,
    Txid,
    StatementId,
    Actor,
    ActorRole,
    Action,
    EntityType,
    EntityId,
    Changes,
    Ip,
    UserAgent,
    SessionId,
    Source,
    OrgId,
    Metadata,
    Hash,
}

impl Field {
    const ALL: [Field; 17] = [
        Field::Id,
        Field::OccurredAt,
        Field::Txid,
        Field::StatementId,
        Field::Actor,
        Field::ActorRole,
        Field::Action,
        Field::EntityType,
        Field::EntityId,
        Field::Changes,
        Field::Ip,
        Field::UserAgent,
        Field::SessionId,
        Field::Source,
        Field::OrgId,
        Field::Metadata,
        Field::Hash,
    ];

    fn column(self) -> &'static CStr {
        match self {
            Field::Id => c"id",
            Field::OccurredAt => c"occurred_at",
            Field::Txid => c"txid",
            Field::StatementId => c"statement_id",
            Field::Actor => c"actor",
            Field::ActorRole => c"actor_role",
            Field::Action => c"action",
            Field::EntityType => c"entity_type",
            Field::EntityId => c"entity_id",
            Field::Changes => c"changes",
            Field::Ip => c"ip",
            Field::UserAgent => c"user_agent",
            Field::SessionId => c"session_id",
            Field::Source => c"source",
            Field::OrgId => c"org_id",
            Field::Metadata => c"metadata",
            Field::Hash => c"hash",
        }
    }
}

/// One event row as datums, by `Field`; `None` is SQL NULL.
pub type Values = [Option<pg_sys::Datum>; 17];

struct CachedIndex {
    oid: pg_sys::Oid,
    info: *mut pg_sys::IndexInfo,
    /// Plain-column indexes take their values straight from the row.
    plain: bool,
    check_unique: pg_sys::IndexUniqueCheck::Type,
}

/// What writing into one partition needs, built once per backend.
struct Partition {
    relid: pg_sys::Oid,
    /// The month it holds, as PostgreSQL timestamps: `[from, until)`.
    from: i64,
    until: i64,
    memory: pg_sys::MemoryContext,
    /// A copy not tied to the relcache entry, so slots need no pin.
    tupdesc: pg_sys::TupleDesc,
    /// Attribute index of each `Field`.
    positions: [usize; 17],
    indexes: Vec<CachedIndex>,
    /// Evaluates index predicates and expressions; lives as long as the cache entry.
    estate: *mut pg_sys::EState,
}

impl Drop for Partition {
    fn drop(&mut self) {
        unsafe {
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::MemoryContextDelete(self.memory);
        }
    }
}

thread_local! {
    static PARTITION: RefCell<Option<Rc<Partition>>> = const { RefCell::new(None) };
}

/// Relcache invalidation: forget the cached partition if `relid` is it, its
/// parent or anything at all (InvalidOid).
pub fn invalidate(relid: pg_sys::Oid, events_relid: Option<pg_sys::Oid>) {
    PARTITION.with(|p| {
        let Ok(mut slot) = p.try_borrow_mut() else {
            return;
        };
        let stale = slot.as_ref().is_some_and(|part| {
            relid == pg_sys::InvalidOid || relid == part.relid || Some(relid) == events_relid
        });
        if stale {
            *slot = None;
        }
    });
}

fn cached() -> Option<Rc<Partition>> {
    PARTITION.with(|p| p.borrow().clone())
}

/// The partition of `audit.events` that holds the month of `occurred_at`,
/// created if missing. Runs SQL, so the caller must be allowed to (the storage owner).
fn resolve(occurred_at: i64) -> Rc<Partition> {
    let ts = unsafe { DatumWithOid::new(occurred_at, pg_sys::TIMESTAMPTZOID) };
    let found = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT partition::oid, from_ts, until_ts FROM audit._partition_for($1)",
                Some(1),
                &[ts],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<pg_sys::Oid>(1)?,
            row.get::<pgrx::datum::TimestampWithTimeZone>(2)?,
            row.get::<pgrx::datum::TimestampWithTimeZone>(3)?,
        ))
    })
    .unwrap_or_else(|e| panic!("audit: finding the partition for an event failed: {e}"));
    let (Some(relid), Some(from), Some(until)) = found else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "audit.events has no partition bounded by exactly the month of this event",
            "A partition with other bounds was attached in its place; detach it, then run SELECT audit.ensure_partitions();",
        )
    };
    let relation = unsafe { pg_sys::table_open(relid, pg_sys::AccessShareLock as _) };
    let partition = unsafe { build(relation, from.into_inner(), until.into_inner()) };
    unsafe { pg_sys::table_close(relation, pg_sys::AccessShareLock as _) };
    let partition = Rc::new(partition);
    PARTITION.with(|p| *p.borrow_mut() = Some(partition.clone()));
    partition
}

/// Builds the cache entry. It owns its memory from the start, so that a refusal
/// below frees what was built (the entry is dropped while the error unwinds).
unsafe fn build(relation: pg_sys::Relation, from: i64, until: i64) -> Partition {
    let memory = pg_sys::AllocSetContextCreateInternal(
        pg_sys::TopMemoryContext,
        c"audit partition cache".as_ptr(),
        0,
        1024,
        8 * 1024,
    );
    let previous = pg_sys::MemoryContextSwitchTo(memory);
    let mut partition = Partition {
        relid: (*relation).rd_id,
        from,
        until,
        memory,
        tupdesc: pg_sys::CreateTupleDescCopy((*relation).rd_att),
        positions: [usize::MAX; 17],
        indexes: Vec::new(),
        estate: pg_sys::CreateExecutorState(),
    };
    pg_sys::MemoryContextSwitchTo(previous);
    let relname = CStr::from_ptr((*(*relation).rd_rel).relname.data.as_ptr()).to_string_lossy();
    for index in 0..(*partition.tupdesc).natts as usize {
        let attr = &*(*partition.tupdesc).attrs.as_ptr().add(index);
        let name = CStr::from_ptr(attr.attname.data.as_ptr());
        if let (false, Some(field)) = (
            attr.attisdropped,
            Field::ALL.into_iter().find(|f| f.column() == name),
        ) {
            partition.positions[field as usize] = index;
        }
    }
    if let Some(missing) = Field::ALL
        .into_iter()
        .find(|f| partition.positions[*f as usize] == usize::MAX)
    {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "partition {relname} of audit.events has no column {}",
                missing.column().to_string_lossy()
            ),
            "Reinstall the extension: DROP EXTENSION audit; CREATE EXTENSION audit;",
        );
    }
    let list = pg_sys::RelationGetIndexList(relation);
    for n in 0..pg_sys::list_length(list) {
        let oid = pg_sys::list_nth_oid(list, n);
        let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as _);
        let (unique, immediate) = (
            (*(*index).rd_index).indisunique,
            (*(*index).rd_index).indimmediate,
        );
        let previous = pg_sys::MemoryContextSwitchTo(memory);
        let info = pg_sys::BuildIndexInfo(index);
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::index_close(index, pg_sys::AccessShareLock as _);
        if !(*info).ii_ExclusionOps.is_null() || (unique && !immediate) {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "audit.events cannot carry exclusion constraints or deferrable unique indexes",
                "Drop that constraint or index from audit.events.",
            );
        }
        if !(*info).ii_Predicate.is_null() {
            (*info).ii_PredicateState =
                pg_sys::ExecPrepareQual((*info).ii_Predicate, partition.estate);
        }
        partition.indexes.push(CachedIndex {
            oid,
            info,
            plain: (*info).ii_Expressions.is_null(),
            check_unique: if unique {
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
            } else {
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
            },
        });
    }
    partition
}

/// Opens the partition for `occurred_at` with RowExclusiveLock. Taking the lock
/// processes pending invalidations; if they dropped the cached entry, it is
/// rebuilt so that the index list is the one the lock now protects.
unsafe fn open(occurred_at: i64) -> (Rc<Partition>, pg_sys::Relation) {
    loop {
        let partition = match cached() {
            Some(p) if (p.from..p.until).contains(&occurred_at) => p,
            _ => resolve(occurred_at),
        };
        let relation = pg_sys::try_table_open(partition.relid, pg_sys::RowExclusiveLock as _);
        if relation.is_null() {
            // Dropped since it was cached.
            invalidate(partition.relid, None);
            continue;
        }
        if cached().is_some_and(|p| Rc::ptr_eq(&p, &partition)) {
            return (partition, relation);
        }
        pg_sys::table_close(relation, pg_sys::RowExclusiveLock as _);
    }
}

/// Inserts the rows, all of which belong to the month of `occurred_at`.
/// `build_rows` runs in a memory context freed after the insert, so it may
/// allocate the datums it returns there.
pub fn insert(occurred_at: i64, build_rows: impl FnOnce() -> Vec<Values>) {
    unsafe {
        let memory = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"audit append".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let previous = pg_sys::MemoryContextSwitchTo(memory);
        let (partition, relation) = open(occurred_at);
        let rows = build_rows();
        write_rows(&partition, relation, &rows);
        pg_sys::table_close(relation, pg_sys::NoLock as _);
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextDelete(memory);
    }
}

unsafe fn write_rows(partition: &Partition, relation: pg_sys::Relation, rows: &[Values]) {
    let natts = (*partition.tupdesc).natts as usize;
    let mut datums = vec![pg_sys::Datum::from(0); natts * rows.len()];
    let mut nulls = vec![true; natts * rows.len()];
    let mut slots = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let (d, n) = (
            &mut datums[i * natts..(i + 1) * natts],
            &mut nulls[i * natts..(i + 1) * natts],
        );
        for (field, value) in row.iter().enumerate() {
            if let Some(value) = value {
                d[partition.positions[field]] = *value;
                n[partition.positions[field]] = false;
            }
        }
        let tuple = pg_sys::heap_form_tuple(partition.tupdesc, d.as_mut_ptr(), n.as_mut_ptr());
        let slot = pg_sys::MakeSingleTupleTableSlot(partition.tupdesc, &pg_sys::TTSOpsHeapTuple);
        pg_sys::ExecStoreHeapTuple(tuple, slot, true);
        slots.push(slot);
    }
    let econtext = pg_sys::MakePerTupleExprContext(partition.estate);
    pg_sys::heap_multi_insert(
        relation,
        slots.as_mut_ptr(),
        slots.len() as i32,
        pg_sys::GetCurrentCommandId(true),
        0,
        std::ptr::null_mut(),
    );
    // An access method may cache state in the IndexInfo (BRIN and GIN keep
    // pointers into the index's relcache entry, which an invalidation frees
    // between statements): it lives for this write only, as the executor's
    // per-query IndexInfo would, in the write's memory context.
    for ix in &partition.indexes {
        (*ix.info).ii_AmCache = std::ptr::null_mut();
        (*ix.info).ii_Context = pg_sys::CurrentMemoryContext;
    }
    // Opened on first use: a partial index no row qualifies for is never locked.
    let mut indexes: Vec<Option<pg_sys::Relation>> = vec![None; partition.indexes.len()];
    let mut key_values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
    let mut key_nulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
    for (i, &slot) in slots.iter().enumerate() {
        (*econtext).ecxt_scantuple = slot;
        for (ix, index) in partition.indexes.iter().zip(indexes.iter_mut()) {
            let info = ix.info;
            if !(*info).ii_ReadyForInserts {
                continue;
            }
            if !(*info).ii_PredicateState.is_null()
                && !pg_sys::ExecQual((*info).ii_PredicateState, econtext)
            {
                continue;
            }
            let index = *index
                .get_or_insert_with(|| pg_sys::index_open(ix.oid, pg_sys::RowExclusiveLock as _));
            if ix.plain {
                for k in 0..(*info).ii_NumIndexAttrs as usize {
                    let at = (*info).ii_IndexAttrNumbers[k] as usize - 1 + i * natts;
                    key_values[k] = datums[at];
                    key_nulls[k] = nulls[at];
                }
            } else {
                pg_sys::FormIndexDatum(
                    info,
                    slot,
                    partition.estate,
                    key_values.as_mut_ptr(),
                    key_nulls.as_mut_ptr(),
                );
            }
            pg_sys::index_insert(
                index,
                key_values.as_mut_ptr(),
                key_nulls.as_mut_ptr(),
                &mut (*slot).tts_tid,
                relation,
                ix.check_unique,
                false,
                info,
            );
        }
        pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
    }
    (*econtext).ecxt_scantuple = std::ptr::null_mut();
    for index in indexes.into_iter().flatten() {
        pg_sys::index_close(index, pg_sys::NoLock as _);
    }
}
