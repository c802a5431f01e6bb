//! The entity index of several-event chunks, in `audit.entity_runs` and
//! `audit.entity_run_rows` (the layout is `audit_core::entity_runs`).
//!
//! A GIN index over the chunks' record keys cost the materializer about
//! 3.3 µs per bulk event, a quarter of an audited 1,000-row UPDATE's CPU
//! (inserting into its pending list, then merging that into the tree; measured
//! in a 4-client run). Here a store transaction writes its bulk chunks' keys
//! as one sorted run of a few rows, and merging runs rewrites each key once
//! per level.

use std::cell::RefCell;

use audit_core::chunk::Row;
use audit_core::entity_key::key_hash;
use audit_core::entity_runs::{
    chunks_of, decode_row, encode_run, lowest_key, merge_due, slots_of, sort_run, Merger, Pair,
    FANOUT,
};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::{PgOid, PgSqlErrorCode};

use crate::errors::raise;

thread_local! {
    /// Plans kept for the life of the backend: a run is written per store
    /// transaction, and looked up per record lookup.
    static INSERT_RUN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static INSERT_ROWS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static RUN_ROWS_OF_SLOTS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    /// The merge's statements: the worker runs one after each store, and
    /// planning them (the partitions of `audit.event_chunks`) cost it 14% of
    /// its CPU.
    static OLDEST_ROW: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static DROP_DEAD_RUNS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static LIST_RUNS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static RUN_ROW_ORDER: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static TAKE_RUN_ROWS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static DELETE_RUNS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

type KeptPlan = &'static std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>;

/// Runs `sql` through the plan kept in `plan`, preparing it the first time.
fn run_kept<'conn>(
    client: &mut SpiClient<'conn>,
    plan: KeptPlan,
    sql: &str,
    types: &[pg_sys::Oid],
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<SpiTupleTable<'conn>, pgrx::spi::Error> {
    plan.with_borrow_mut(|plan| {
        if plan.is_none() {
            let types: Vec<PgOid> = types.iter().map(|&t| t.into()).collect();
            *plan = Some(client.prepare_mut(sql, &types)?.keep());
        }
        client.update(plan.as_ref().unwrap(), None, args)
    })
}

/// Writes the record keys of the several-event rows among `rows` as a run of
/// level 0; returns whether there were any.
pub fn write_run(rows: &[Row<'_>]) -> bool {
    let pairs: Vec<Pair> = rows
        .iter()
        .filter(|row| row.events.len() > 1)
        .flat_map(|row| {
            row.events
                .iter()
                .filter_map(move |e| e.entity_id.map(|id| (key_hash(id), row.first_id())))
        })
        .collect();
    if pairs.is_empty() {
        return false;
    }
    let run = sort_run(pairs);
    let run_id = run.iter().map(|p| p.1).min().unwrap_or_default();
    Spi::connect_mut(|client| insert_run(client, run_id, 0, &run))
        .unwrap_or_else(|e| error!("audit materializer cannot write the entity index: {e}"));
    true
}

/// Writes a sorted run: its rows, then its entry in `audit.entity_runs`.
pub(crate) fn insert_run(
    client: &mut SpiClient<'_>,
    run_id: i64,
    level: i16,
    run: &[Pair],
) -> Result<(), pgrx::spi::Error> {
    insert_rows(client, run_id, encode_run(run))?;
    insert_run_entry(client, run_id, level, run.len())
}

/// Lists a run whose rows are written in `audit.entity_runs`.
fn insert_run_entry(
    client: &mut SpiClient<'_>,
    run_id: i64,
    level: i16,
    pairs: usize,
) -> Result<(), pgrx::spi::Error> {
    run_kept(
        client,
        &INSERT_RUN,
        "INSERT INTO audit.entity_runs (run_id, level, pairs) VALUES ($1, $2, $3)",
        &[pg_sys::INT8OID, pg_sys::INT2OID, pg_sys::INT4OID],
        &[run_id.into(), level.into(), (pairs as i32).into()],
    )
    .map(|_| ())
}

/// Writes rows of run `run_id`: (slot, encoded pairs).
fn insert_rows(
    client: &mut SpiClient<'_>,
    run_id: i64,
    rows: Vec<(i64, Vec<u8>)>,
) -> Result<(), pgrx::spi::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (slots, pairs): (Vec<i64>, Vec<Vec<u8>>) = rows.into_iter().unzip();
    run_kept(
        client,
        &INSERT_ROWS,
        "INSERT INTO audit.entity_run_rows (slot, run_id, pairs)
         SELECT s, $1, p FROM unnest($2::int8[], $3::bytea[]) AS u(s, p)",
        &[pg_sys::INT8OID, pg_sys::INT8ARRAYOID, pg_sys::BYTEAARRAYOID],
        &[run_id.into(), slots.into(), pairs.into()],
    )
    .map(|_| ())
}

fn corrupt(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        e.to_string(),
        "Restore audit.entity_runs and audit.entity_run_rows from a backup; the trail itself is not affected (audit.verify() checks it).",
    )
}

/// Input rows read (and deleted) per statement during a merge, and output
/// rows written per statement.
const MERGE_ROWS_PER_STATEMENT: usize = 256;

/// Drops the runs that list only rows retention deleted, or else merges the
/// oldest runs of the lowest level that has `FANOUT` of them into one run of
/// the next level; false when there was nothing to do. Concurrent merges take
/// turns (a lock on `audit.entity_runs` that writing a run does not wait for).
pub fn merge_once(client: &mut SpiClient<'_>) -> Result<bool, pgrx::spi::Error> {
    client.update(
        "LOCK TABLE audit.entity_runs IN SHARE UPDATE EXCLUSIVE MODE",
        None,
        &[],
    )?;
    // Retention deletes the oldest rows first. Pairs of rows older than any
    // left are dropped: a run before the one holding the oldest row left
    // lists none but such (runs hold disjoint ranges of row ids, each run's
    // id its first), and a merge leaves them out.
    let oldest = run_kept(
        client,
        &OLDEST_ROW,
        "SELECT least((SELECT min(id) FROM audit.event_chunks),
                      (SELECT min(id) FROM audit_archive.event_chunks))",
        &[],
        &[],
    )?
    .first()
    .get::<i64>(1)?
    .unwrap_or(i64::MAX);
    let dropped = run_kept(
        client,
        &DROP_DEAD_RUNS,
        "WITH dead AS (DELETE FROM audit.entity_runs
                        WHERE run_id < (SELECT max(run_id) FROM audit.entity_runs WHERE run_id <= $1)
                       RETURNING run_id)
         DELETE FROM audit.entity_run_rows WHERE run_id IN (SELECT run_id FROM dead)",
        &[pg_sys::INT8OID],
        &[oldest.into()],
    )?;
    if !dropped.is_empty() {
        return Ok(true);
    }
    let runs = run_kept(
        client,
        &LIST_RUNS,
        "SELECT level, run_id, pairs FROM audit.entity_runs ORDER BY level, run_id",
        &[],
        &[],
    )?
    .map(|row| {
        Ok::<_, pgrx::spi::Error>((
            row.get::<i16>(1)?.unwrap_or_default(),
            row.get::<i64>(2)?.unwrap_or_default(),
            row.get::<i32>(3)?.unwrap_or_default() as usize,
        ))
    })
    .collect::<Result<Vec<_>, _>>()?;
    let Some(inputs) = runs.chunk_by(|a, b| a.0 == b.0).find_map(|level| {
        let sizes: Vec<usize> = level.iter().map(|r| r.2).collect();
        merge_due(&sizes).then(|| &level[..FANOUT])
    }) else {
        return Ok(false);
    };
    let ids: Vec<i64> = inputs.iter().map(|r| r.1).collect();
    // The input rows in order of their lowest key, read a batch at a time
    // and deleted as they are read: the new run (id: its oldest input's) is
    // written meanwhile, and none of its rows is written before every input
    // row of its slot has been read.
    let mut order = run_kept(
        client,
        &RUN_ROW_ORDER,
        "SELECT run_id, slot FROM audit.entity_run_rows WHERE run_id = ANY ($1)",
        &[pg_sys::INT8ARRAYOID],
        &[ids.clone().into()],
    )?
    .map(|row| {
        Ok::<_, pgrx::spi::Error>((
            row.get::<i64>(1)?.unwrap_or_default(),
            row.get::<i64>(2)?.unwrap_or_default(),
        ))
    })
    .collect::<Result<Vec<_>, _>>()?;
    order.sort_unstable_by_key(|&(run_id, slot)| (lowest_key(slot), run_id));
    let run_id = ids[0];
    let mut merger = Merger::new(inputs.iter().map(|r| r.2).sum(), oldest);
    let mut out: Vec<(i64, Vec<u8>)> = Vec::new();
    for batch in order.chunks(MERGE_ROWS_PER_STATEMENT) {
        let (batch_runs, batch_slots): (Vec<i64>, Vec<i64>) = batch.iter().copied().unzip();
        let mut read = std::collections::HashMap::with_capacity(batch.len());
        for row in run_kept(
            client,
            &TAKE_RUN_ROWS,
            "DELETE FROM audit.entity_run_rows r USING unnest($1::int8[], $2::int8[]) AS d(run_id, slot)
              WHERE r.run_id = d.run_id AND r.slot = d.slot
             RETURNING r.run_id, r.slot, r.pairs",
            &[pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID],
            &[batch_runs.into(), batch_slots.into()],
        )? {
            let key = (row.get::<i64>(1)?.unwrap_or_default(), row.get::<i64>(2)?.unwrap_or_default());
            let bytes = row.get::<&[u8]>(3)?.unwrap_or_default();
            read.insert(key, decode_row(bytes).unwrap_or_else(|e| corrupt(e)));
        }
        for key in batch {
            let pairs = read.remove(key).unwrap_or_else(|| {
                error!(
                    "audit: row {} of entity run {} went missing during its merge",
                    key.1, key.0
                )
            });
            out.extend(merger.add_row(key.1, pairs));
        }
        if out.len() >= MERGE_ROWS_PER_STATEMENT {
            insert_rows(client, run_id, std::mem::take(&mut out))?;
        }
    }
    let (rest, written) = merger.finish();
    out.extend(rest);
    insert_rows(client, run_id, out)?;
    run_kept(
        client,
        &DELETE_RUNS,
        "DELETE FROM audit.entity_runs WHERE run_id = ANY ($1)",
        &[pg_sys::INT8ARRAYOID],
        &[ids.into()],
    )?;
    if written > 0 {
        insert_run_entry(client, run_id, inputs[0].0 + 1, written)?;
    }
    Ok(true)
}

/// The chunks of several events that the entity index lists for a record id
/// (a superset: keys are 32-bit hashes; callers compare the ids). Parallel
/// restricted: it keeps a plan for the life of the backend.
#[pg_extern(stable, parallel_restricted, strict)]
fn _entity_chunks(entity_id: &str) -> Vec<i64> {
    let key = key_hash(entity_id);
    let mut chunks = Spi::connect(|client| {
        RUN_ROWS_OF_SLOTS.with_borrow_mut(|plan| {
            if plan.is_none() {
                *plan = Some(
                    client
                        .prepare(
                            "SELECT pairs FROM audit.entity_run_rows WHERE slot = ANY ($1)",
                            &[pg_sys::INT8ARRAYOID.into()],
                        )?
                        .keep(),
                );
            }
            let mut chunks = Vec::new();
            for row in client.select(plan.as_ref().unwrap(), None, &[slots_of(key).into()])? {
                let bytes = row.get::<&[u8]>(1)?.unwrap_or_default();
                chunks.extend(chunks_of(bytes, key).unwrap_or_else(|e| corrupt(e)));
            }
            Ok::<_, pgrx::spi::Error>(chunks)
        })
    })
    .unwrap_or_else(|e| error!("audit cannot read the entity index: {e}"));
    chunks.sort_unstable();
    chunks.dedup();
    chunks
}

/// Merges every level of the entity index that is due, in the caller's
/// transaction (the worker does the same, a merge per transaction); returns
/// the merges done.
#[pg_extern(volatile, parallel_unsafe)]
fn _merge_entity_runs() -> i64 {
    Spi::connect_mut(|client| {
        let mut merges = 0;
        while merge_once(client)? {
            merges += 1;
        }
        Ok::<_, pgrx::spi::Error>(merges)
    })
    .unwrap_or_else(|e| error!("audit cannot merge the entity index: {e}"))
}
