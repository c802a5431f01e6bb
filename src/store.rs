//! Appends chunk rows to `audit.event_chunks` without the executor.
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
use std::ffi::{CStr, CString};

use audit_core::changes::{Changes, Member};
use audit_core::chunk::Row;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

/// The columns of `audit.event_chunks`, in the order `Values` holds them.
#[derive(Clone, Copy)]
pub enum Column {
    Id,
    BlockId,
    OccurredAt,
    Txid,
    StatementId,
    EventCount,
    OccurredUntil,
    OccurredAts,
    Txids,
    StatementIds,
    Actor,
    ActorRole,
    Action,
    EntityType,
    Ip,
    UserAgent,
    SessionId,
    Source,
    OrgId,
    Metadata,
    EntityIds,
    Changes,
}

const COLUMNS: usize = 22;

impl Column {
    const ALL: [Column; COLUMNS] = [
        Column::Id,
        Column::BlockId,
        Column::OccurredAt,
        Column::Txid,
        Column::StatementId,
        Column::EventCount,
        Column::OccurredUntil,
        Column::OccurredAts,
        Column::Txids,
        Column::StatementIds,
        Column::Actor,
        Column::ActorRole,
        Column::Action,
        Column::EntityType,
        Column::Ip,
        Column::UserAgent,
        Column::SessionId,
        Column::Source,
        Column::OrgId,
        Column::Metadata,
        Column::EntityIds,
        Column::Changes,
    ];

    fn name(self) -> &'static CStr {
        match self {
            Column::Id => c"id",
            Column::BlockId => c"block_id",
            Column::OccurredAt => c"occurred_at",
            Column::Txid => c"txid",
            Column::StatementId => c"statement_id",
            Column::EventCount => c"event_count",
            Column::OccurredUntil => c"occurred_until",
            Column::OccurredAts => c"occurred_ats",
            Column::Txids => c"txids",
            Column::StatementIds => c"statement_ids",
            Column::Actor => c"actor",
            Column::ActorRole => c"actor_role",
            Column::Action => c"action",
            Column::EntityType => c"entity_type",
            Column::Ip => c"ip",
            Column::UserAgent => c"user_agent",
            Column::SessionId => c"session_id",
            Column::Source => c"source",
            Column::OrgId => c"org_id",
            Column::Metadata => c"metadata",
            Column::EntityIds => c"entity_ids",
            Column::Changes => c"changes",
        }
    }
}

/// One chunk row as datums, by `Column`; `None` is SQL NULL.
pub type Values = [Option<pg_sys::Datum>; COLUMNS];

/// Datums of the row, allocated in the current memory context. A row not
/// stored yet (a session's own pending events) has no ids and no block.
pub fn chunk_values(row: &Row<'_>, block_id: Option<i64>) -> Values {
    let c = &row.context;
    let first = &row.events[0];
    let stored = block_id.is_some();
    let text = |t: Option<&str>| t.map(datum::text);
    let mut v: Values = [None; COLUMNS];
    v[Column::Id as usize] = stored.then(|| first.id.into());
    v[Column::BlockId as usize] = block_id.map(Into::into);
    v[Column::EventCount as usize] = Some((row.events.len() as i16).into());
    let earliest = row
        .events
        .iter()
        .map(|e| e.occurred_at)
        .min()
        .unwrap_or(first.occurred_at);
    let latest = row
        .events
        .iter()
        .map(|e| e.occurred_at)
        .max()
        .unwrap_or(first.occurred_at);
    v[Column::OccurredAt as usize] = Some(earliest.into());
    if !row.uniform(|e| e.occurred_at) {
        v[Column::OccurredUntil as usize] = Some(latest.into());
        v[Column::OccurredAts as usize] = Some(datum::int8_array(
            row.events.iter().map(|e| Some(e.occurred_at)),
            pg_sys::TIMESTAMPTZOID,
        ));
    }
    v[Column::Txid as usize] = Some((first.txid as i64).into());
    if !row.uniform(|e| e.txid) {
        v[Column::Txids as usize] = Some(datum::int8_array(
            row.events.iter().map(|e| Some(e.txid as i64)),
            pg_sys::XID8OID,
        ));
    }
    if stored {
        v[Column::StatementId as usize] = first.statement_id.map(Into::into);
        if !row.uniform(|e| e.statement_id) {
            v[Column::StatementIds as usize] = Some(datum::int8_array(
                row.events.iter().map(|e| e.statement_id),
                pg_sys::INT8OID,
            ));
        }
    }
    v[Column::Actor as usize] = text(c.actor);
    v[Column::ActorRole as usize] = text(c.actor_role);
    v[Column::Action as usize] = text(Some(&c.action));
    v[Column::EntityType as usize] = text(c.entity_type);
    v[Column::Ip as usize] = c.ip.map(|ip| datum::parsed(datum::inet_in, ip));
    v[Column::UserAgent as usize] = text(c.user_agent);
    v[Column::SessionId as usize] = text(c.session_id);
    v[Column::Source as usize] = text(c.source);
    v[Column::OrgId as usize] = text(c.org_id);
    v[Column::Metadata as usize] = c
        .metadata
        .as_deref()
        .map(|m| datum::parsed(datum::jsonb_in, m));
    v[Column::EntityIds as usize] = Some(datum::varlena_array(
        row.events.iter().map(|e| e.entity_id.map(datum::text)),
        pg_sys::TEXTOID,
    ));
    v[Column::Changes as usize] = Some(datum::varlena_array(
        row.events
            .iter()
            .map(|e| e.changes.as_ref().map(datum::changes)),
        pg_sys::JSONBOID,
    ));
    v
}

/// Datums built from Rust values, in the current memory context.
mod datum {
    use super::*;

    unsafe extern "C-unwind" {
        pub fn jsonb_in(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
        pub fn inet_in(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    }

    pub fn bytes(b: &[u8]) -> pg_sys::Datum {
        // text and bytea share the varlena layout.
        unsafe { pg_sys::cstring_to_text_with_len(b.as_ptr().cast(), b.len() as i32).into() }
    }

    pub fn text(s: &str) -> pg_sys::Datum {
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

    /// A change set as `jsonb`, built as a value tree (no JSON text to parse).
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

    /// Through the type's input function: the text is known valid (canonical
    /// JSON, an `inet` as PostgreSQL printed it); this only builds the value.
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

    fn array(
        (values, nulls): (Vec<pg_sys::Datum>, Vec<bool>),
        element_type: pg_sys::Oid,
        (length, by_value, align): (i32, bool, u8),
    ) -> pg_sys::Datum {
        let mut dims = [values.len() as i32];
        let mut lower_bounds = [1];
        unsafe {
            pg_sys::construct_md_array(
                values.as_ptr().cast_mut(),
                nulls.as_ptr().cast_mut(),
                1,
                dims.as_mut_ptr(),
                lower_bounds.as_mut_ptr(),
                element_type,
                length,
                by_value,
                align as _,
            )
            .into()
        }
    }

    fn split<T: Into<pg_sys::Datum>>(
        elements: impl Iterator<Item = Option<T>>,
    ) -> (Vec<pg_sys::Datum>, Vec<bool>) {
        elements
            .map(|e| match e {
                Some(v) => (v.into(), false),
                None => (pg_sys::Datum::from(0), true),
            })
            .unzip()
    }

    /// A one-dimensional array of a varlena type (text, jsonb), NULL elements allowed.
    pub fn varlena_array(
        elements: impl Iterator<Item = Option<pg_sys::Datum>>,
        element_type: pg_sys::Oid,
    ) -> pg_sys::Datum {
        array(
            split(elements),
            element_type,
            (-1, false, pg_sys::TYPALIGN_INT),
        )
    }

    /// A one-dimensional array of an 8-byte by-value type (int8, timestamptz, xid8).
    pub fn int8_array(
        elements: impl Iterator<Item = Option<i64>>,
        element_type: pg_sys::Oid,
    ) -> pg_sys::Datum {
        array(
            split(elements),
            element_type,
            (8, true, pg_sys::TYPALIGN_DOUBLE),
        )
    }
}

struct CachedIndex {
    oid: pg_sys::Oid,
    info: *mut pg_sys::IndexInfo,
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
    /// Attribute index of each `Column`.
    positions: [usize; COLUMNS],
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

/// The partition of `audit.event_chunks` that holds the month of `occurred_at`,
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
            "audit.event_chunks has no partition bounded by exactly the month of this event",
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
        positions: [usize::MAX; COLUMNS],
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
            Column::ALL.into_iter().find(|f| f.name() == name),
        ) {
            partition.positions[field as usize] = index;
        }
    }
    if let Some(missing) = Column::ALL
        .into_iter()
        .find(|f| partition.positions[*f as usize] == usize::MAX)
    {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "partition {relname} of audit.event_chunks has no column {}",
                missing.name().to_string_lossy()
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
                "audit.event_chunks cannot carry exclusion constraints or deferrable unique indexes",
                "Drop that constraint or index from audit.event_chunks.",
            );
        }
        if !(*info).ii_Predicate.is_null() {
            (*info).ii_PredicateState =
                pg_sys::ExecPrepareQual((*info).ii_Predicate, partition.estate);
        }
        partition.indexes.push(CachedIndex {
            oid,
            info,
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

/// Inserts `count` rows, all of which belong to the month of `occurred_at`.
/// `build_row(i)` runs in a memory context reset after each row (the row is
/// copied into its tuple first), so building may allocate freely.
pub fn insert(occurred_at: i64, count: usize, mut build_row: impl FnMut(usize) -> Values) {
    unsafe {
        let memory = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"audit store".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let row_memory = pg_sys::AllocSetContextCreateInternal(
            memory,
            c"audit store row".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let previous = pg_sys::MemoryContextSwitchTo(memory);
        let (partition, relation) = open(occurred_at);
        let natts = (*partition.tupdesc).natts as usize;
        let mut datums = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let slots: Vec<*mut pg_sys::TupleTableSlot> = (0..count)
            .map(|i| {
                pg_sys::MemoryContextSwitchTo(row_memory);
                let row = build_row(i);
                pg_sys::MemoryContextSwitchTo(memory);
                datums.fill(pg_sys::Datum::from(0));
                nulls.fill(true);
                for (column, value) in row.iter().enumerate() {
                    if let Some(value) = value {
                        datums[partition.positions[column]] = *value;
                        nulls[partition.positions[column]] = false;
                    }
                }
                let tuple = pg_sys::heap_form_tuple(
                    partition.tupdesc,
                    datums.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                );
                pg_sys::MemoryContextReset(row_memory);
                let slot =
                    pg_sys::MakeSingleTupleTableSlot(partition.tupdesc, &pg_sys::TTSOpsHeapTuple);
                pg_sys::ExecStoreHeapTuple(tuple, slot, true);
                slot
            })
            .collect();
        write_rows(&partition, relation, &slots);
        pg_sys::table_close(relation, pg_sys::NoLock as _);
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextDelete(memory);
    }
}

unsafe fn write_rows(
    partition: &Partition,
    relation: pg_sys::Relation,
    slots: &[*mut pg_sys::TupleTableSlot],
) {
    let econtext = pg_sys::MakePerTupleExprContext(partition.estate);
    pg_sys::heap_multi_insert(
        relation,
        slots.as_ptr().cast_mut(),
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
    for &slot in slots {
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
            pg_sys::FormIndexDatum(
                info,
                slot,
                partition.estate,
                key_values.as_mut_ptr(),
                key_nulls.as_mut_ptr(),
            );
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
