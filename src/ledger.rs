//! Sealing events into the hash chain and verifying it.
//!
//! A seal takes `H`, the xmin of its snapshot: every transaction with an xid
//! below `H` has ended, so the events with `txid` in `[previous H, H)` are final
//! and visible; nothing later can add to that range. Writers are never waited
//! for: a transaction still open simply stays above `H` until a later seal.
//!
//! To find those events without an index on `txid`, each seal records a mark
//! `(next_xid N, id_floor Q)` read in that order: any transaction that gets an
//! xid at or after `N` numbers its events after `Q` (capture assigns the xid
//! before it draws ids). A range starting at xid `lo` therefore needs only the
//! events above the floor of the newest mark with `N <= lo`.

use std::collections::{HashMap, HashSet};

use audit_core::canonical::{self, EventRecord};
use audit_core::ledger::{
    self, block_hash, compare_block, merkle_root, BlockHeader, Hash, Problem, ProblemKind,
    GENESIS_PREV_HASH,
};
use pgrx::datum::{DatumWithOid, Inet};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};

use crate::errors::raise;
use crate::writer::{as_storage_owner, storage_owner};

/// Events per block: bounds a block's row and what verify holds per block.
const MAX_BLOCK_EVENTS: usize = 10_000;
const SEAL_LOCK_KEY: i64 = 0x6175_6469_7473_6561; // "auditsea"
const FETCH_BATCH: i64 = 10_000;

fn spi_error(e: pgrx::spi::Error) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("audit ledger: {e}"),
        "Report this with the server log.",
    )
}

fn to_hash(bytes: &[u8], what: &str) -> Hash {
    bytes.try_into().unwrap_or_else(|_| {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("{what} is {} bytes, not 32", bytes.len()),
            "Run SELECT * FROM audit.verify() to locate the damage.",
        )
    })
}

fn xid8(value: i64) -> DatumWithOid<'static> {
    DatumWithOid::from(value.to_string())
}

/// One block written by a seal.
pub struct SealedBlock {
    pub block_id: i64,
    pub event_count: i64,
    pub first_event_id: i64,
    pub last_event_id: i64,
    pub xid_lo: i64,
    pub xid_hi: i64,
}

/// Seals every event whose transaction has ended; returns the blocks written.
pub fn seal_now() -> Vec<SealedBlock> {
    as_storage_owner(storage_owner(), || {
        Spi::connect_mut(seal_with).unwrap_or_else(|e| spi_error(e))
    })
}

fn seal_with(client: &mut SpiClient<'_>) -> Result<Vec<SealedBlock>, pgrx::spi::Error> {
    client.update(
        "SELECT pg_advisory_xact_lock($1)",
        None,
        &[SEAL_LOCK_KEY.into()],
    )?;
    let last = client.select(
        "SELECT block_id, xid_hi::text::int8, block_hash FROM audit.blocks ORDER BY block_id DESC LIMIT 1",
        None,
        &[],
    )?;
    let (mut block_id, xid_lo, mut prev_hash) = if last.is_empty() {
        (0, 0, GENESIS_PREV_HASH)
    } else {
        let row = last.first();
        (
            row.get::<i64>(1)?.unwrap_or(0),
            row.get::<i64>(2)?.unwrap_or(0),
            to_hash(&row.get::<Vec<u8>>(3)?.unwrap_or_default(), "block hash"),
        )
    };

    // The mark: read the id floor first, then the next xid.
    let seq = client
        .select(
            "SELECT last_value, is_called FROM audit.events_id_seq",
            None,
            &[],
        )?
        .first();
    let last_value = seq.get::<i64>(1)?.unwrap_or(0);
    let id_floor = if seq.get::<bool>(2)?.unwrap_or(false) {
        last_value
    } else {
        last_value - 1
    };
    let next_xid = unsafe { pg_sys::ReadNextFullTransactionId().value } as i64;
    client.update(
        "INSERT INTO audit.seal_marks (next_xid, id_floor) VALUES ($1::xid8, $2) ON CONFLICT DO NOTHING",
        None,
        &[xid8(next_xid), id_floor.into()],
    )?;

    let horizon = client
        .select(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8",
            None,
            &[],
        )?
        .first()
        .get::<i64>(1)?
        .unwrap_or(0);
    let scan_floor = client
        .select(
            "SELECT coalesce(max(id_floor), 0) FROM audit.seal_marks WHERE next_xid <= $1::xid8",
            None,
            &[xid8(xid_lo)],
        )?
        .first()
        .get::<i64>(1)?
        .unwrap_or(0);

    let mut leaves: Vec<(i64, Hash)> = Vec::new();
    if horizon > xid_lo {
        let rows = client.select(
            "SELECT id, hash FROM audit.events WHERE id > $1 AND txid >= $2::xid8 AND txid < $3::xid8 ORDER BY id",
            None,
            &[scan_floor.into(), xid8(xid_lo), xid8(horizon)],
        )?;
        for row in rows {
            let id = row.get::<i64>(1)?.unwrap_or(0);
            leaves.push((
                id,
                to_hash(&row.get::<Vec<u8>>(2)?.unwrap_or_default(), "event hash"),
            ));
        }
    }

    let mut sealed = Vec::new();
    if !leaves.is_empty() {
        let sealed_at = unsafe { pg_sys::GetCurrentTimestamp() };
        for chunk in leaves.chunks(MAX_BLOCK_EVENTS) {
            block_id += 1;
            let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
            let header = BlockHeader {
                block_id,
                prev_hash,
                merkle_root: merkle_root(chunk),
                event_count: chunk.len() as i64,
                first_event_id: ids[0],
                last_event_id: ids[ids.len() - 1],
                xid_lo: xid_lo as u64,
                xid_hi: horizon as u64,
                sealed_at_unix_micros: sealed_at + canonical::UNIX_TO_PG_EPOCH_MICROS,
            };
            let hash = block_hash(&header);
            let leaf_hashes: Vec<u8> = chunk.iter().flat_map(|(_, h)| h.iter().copied()).collect();
            let args = unsafe {
                [
                    DatumWithOid::from(block_id),
                    DatumWithOid::new(sealed_at, pg_sys::TIMESTAMPTZOID),
                    xid8(xid_lo),
                    xid8(horizon),
                    DatumWithOid::from(header.first_event_id),
                    DatumWithOid::from(header.last_event_id),
                    DatumWithOid::from(header.event_count),
                    DatumWithOid::from(ledger::ranges_to_multirange_text(&ledger::ids_to_ranges(
                        &ids,
                    ))),
                    DatumWithOid::from(leaf_hashes),
                    DatumWithOid::from(header.merkle_root.to_vec()),
                    DatumWithOid::from(prev_hash.to_vec()),
                    DatumWithOid::from(hash.to_vec()),
                ]
            };
            client.update(
                "INSERT INTO audit.blocks (block_id, sealed_at, xid_lo, xid_hi, first_event_id, last_event_id,
                     event_count, event_ids, leaf_hashes, merkle_root, prev_hash, block_hash)
                 VALUES ($1, $2, $3::xid8, $4::xid8, $5, $6, $7, $8::int8multirange, $9, $10, $11, $12)",
                None,
                &args,
            )?;
            sealed.push(SealedBlock {
                block_id,
                event_count: header.event_count,
                first_event_id: header.first_event_id,
                last_event_id: header.last_event_id,
                xid_lo,
                xid_hi: horizon,
            });
            prev_hash = hash;
        }
    }
    // Keep only the newest mark a future range (starting at or after the horizon) can use.
    client.update(
        "DELETE FROM audit.seal_marks WHERE next_xid < (SELECT max(next_xid) FROM audit.seal_marks WHERE next_xid <= $1::xid8)",
        None,
        &[xid8(if sealed.is_empty() { xid_lo } else { horizon })],
    )?;
    Ok(sealed)
}

/// A stored block, as verify reads it.
struct StoredBlock {
    header: BlockHeader,
    stored_hash: Vec<u8>,
    sealed: Vec<(i64, Hash)>,
    checked: bool,
}

fn load_blocks(
    client: &SpiClient<'_>,
    from: i64,
    to: i64,
) -> Result<Vec<StoredBlock>, pgrx::spi::Error> {
    // Headers of every block (to place events), leaves only for the checked range.
    let rows = client.select(
        "SELECT block_id, (extract(epoch FROM sealed_at) * 1000000)::int8, xid_lo::text::int8, xid_hi::text::int8,
                first_event_id, last_event_id, event_count, merkle_root, prev_hash, block_hash,
                CASE WHEN block_id BETWEEN $1 AND $2 THEN event_ids::text END,
                CASE WHEN block_id BETWEEN $1 AND $2 THEN leaf_hashes END
           FROM audit.blocks ORDER BY block_id",
        None,
        &[from.into(), to.into()],
    )?;
    let mut blocks = Vec::new();
    for row in rows {
        let block_id = row.get::<i64>(1)?.unwrap_or(0);
        let ids_text = row.get::<String>(11)?;
        let leaf_bytes = row.get::<Vec<u8>>(12)?;
        let header = BlockHeader {
            block_id,
            sealed_at_unix_micros: row.get::<i64>(2)?.unwrap_or(0),
            xid_lo: row.get::<i64>(3)?.unwrap_or(0) as u64,
            xid_hi: row.get::<i64>(4)?.unwrap_or(0) as u64,
            first_event_id: row.get::<i64>(5)?.unwrap_or(0),
            last_event_id: row.get::<i64>(6)?.unwrap_or(0),
            event_count: row.get::<i64>(7)?.unwrap_or(0),
            merkle_root: row
                .get::<Vec<u8>>(8)?
                .unwrap_or_default()
                .try_into()
                .unwrap_or([0; 32]),
            prev_hash: row
                .get::<Vec<u8>>(9)?
                .unwrap_or_default()
                .try_into()
                .unwrap_or([0xff; 32]),
        };
        let sealed = match (ids_text, leaf_bytes) {
            (Some(ids), Some(bytes)) => {
                let ids = ledger::parse_multirange_text(&ids)
                    .map(|r| ledger::ranges_to_ids(&r))
                    .unwrap_or_default();
                let hashes = ledger::split_hashes(&bytes).unwrap_or_default();
                ids.into_iter().zip(hashes).collect()
            }
            _ => Vec::new(),
        };
        blocks.push(StoredBlock {
            checked: (from..=to).contains(&block_id),
            header,
            stored_hash: row.get::<Vec<u8>>(10)?.unwrap_or_default(),
            sealed,
        });
    }
    Ok(blocks)
}

/// Checks each block's own hash, Merkle root and link to its predecessor.
fn check_chain(blocks: &[StoredBlock]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let bad = |block_id: i64, detail: String| Problem {
        kind: ProblemKind::BadLink,
        event_id: None,
        block_id: Some(block_id),
        detail,
    };
    for (i, block) in blocks.iter().enumerate() {
        let h = &block.header;
        let expected_prev = match i {
            0 if h.block_id == 1 => Some(GENESIS_PREV_HASH.to_vec()),
            0 => None,
            _ => Some(blocks[i - 1].stored_hash.clone()),
        };
        if !block.checked {
            continue;
        }
        if i > 0 && blocks[i - 1].header.block_id != h.block_id - 1 {
            problems.push(bad(
                h.block_id,
                format!(
                    "blocks {} to {} are missing",
                    blocks[i - 1].header.block_id + 1,
                    h.block_id - 1
                ),
            ));
        }
        if i == 0 && h.block_id != 1 {
            problems.push(bad(
                h.block_id,
                format!("blocks 1 to {} are missing", h.block_id - 1),
            ));
        }
        if let Some(prev) = expected_prev {
            if prev != h.prev_hash.to_vec() {
                problems.push(bad(
                    h.block_id,
                    format!(
                        "block {} does not link to block {}",
                        h.block_id,
                        h.block_id - 1
                    ),
                ));
            }
        }
        if block_hash(h).to_vec() != block.stored_hash {
            problems.push(bad(
                h.block_id,
                format!(
                    "block {} was altered: its hash does not match its contents",
                    h.block_id
                ),
            ));
        }
        if block.sealed.len() as i64 != h.event_count || merkle_root(&block.sealed) != h.merkle_root
        {
            problems.push(bad(
                h.block_id,
                format!(
                    "block {}'s sealed events do not match its Merkle root",
                    h.block_id
                ),
            ));
        }
    }
    problems
}

/// An event row as read back from `audit.events`, with its stored hash.
fn read_event(
    row: &pgrx::spi::SpiHeapTupleData<'_>,
) -> Result<(EventRecord, Vec<u8>), pgrx::spi::Error> {
    let text = |i: usize| row.get::<String>(i);
    let json_text = |i: usize| -> Result<Option<String>, pgrx::spi::Error> {
        Ok(row.get::<JsonB>(i)?.map(|j| {
            let mut s = String::new();
            canonical::push_canonical_json(&mut s, &j.0);
            s
        }))
    };
    let record = EventRecord {
        id: row.get::<i64>(1)?.unwrap_or(0),
        occurred_at_unix_micros: row.get::<i64>(2)?.unwrap_or(0),
        txid: row.get::<i64>(3)?.unwrap_or(0) as u64,
        statement_id: row.get::<i64>(4)?,
        actor: text(5)?,
        actor_role: text(6)?,
        action: text(7)?.unwrap_or_default(),
        entity_type: text(8)?,
        entity_id: text(9)?,
        changes: json_text(10)?,
        ip: row.get::<Inet>(11)?.map(|i| i.0),
        user_agent: text(12)?,
        session_id: text(13)?,
        source: text(14)?,
        org_id: text(15)?,
        metadata: json_text(16)?,
    };
    Ok((record, row.get::<Vec<u8>>(17)?.unwrap_or_default()))
}

pub struct Verification {
    pub valid: bool,
    pub events_checked: i64,
    pub blocks_checked: i64,
    pub unsealed_events: i64,
    pub problems: Vec<Problem>,
}

/// Ids removed by retention with proof (see `audit.deletion_log`).
fn deleted_ids(client: &SpiClient<'_>) -> Result<HashSet<i64>, pgrx::spi::Error> {
    let mut ids = HashSet::new();
    let exists = client
        .select(
            "SELECT to_regclass('audit.deletion_log') IS NOT NULL",
            None,
            &[],
        )?
        .first()
        .get::<bool>(1)?;
    if exists == Some(true) {
        for row in client.select(
            "SELECT unnest(event_ids) FROM audit.deletion_log",
            None,
            &[],
        )? {
            ids.extend(row.get::<i64>(1)?);
        }
    }
    Ok(ids)
}

pub fn verify_chain(from_block: Option<i64>, to_block: Option<i64>) -> Verification {
    let (from, to) = (from_block.unwrap_or(1), to_block.unwrap_or(i64::MAX));
    if from < 1 || to < from {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid block range {from} to {to}"),
            "Blocks are numbered from 1; pass from_block <= to_block, or NULL for the whole chain.",
        );
    }
    Spi::connect(|client| verify_with(client, from, to, to_block.is_none()))
        .unwrap_or_else(|e| spi_error(e))
}

fn verify_with(
    client: &SpiClient<'_>,
    from: i64,
    to: i64,
    through_end: bool,
) -> Result<Verification, pgrx::spi::Error> {
    let blocks = load_blocks(client, from, to)?;
    let mut problems = check_chain(&blocks);
    let checked: Vec<&StoredBlock> = blocks.iter().filter(|b| b.checked).collect();
    let sealed_horizon = blocks.last().map_or(0, |b| b.header.xid_hi);
    let deleted = deleted_ids(client)?;

    // Which block an event belongs to: xid range first, then id range.
    let place = |txid: u64, id: i64| -> Option<usize> {
        let start = blocks.partition_point(|b| b.header.xid_hi <= txid);
        blocks[start..]
            .iter()
            .take_while(|b| b.header.xid_lo <= txid)
            .position(|b| (b.header.first_event_id..=b.header.last_event_id).contains(&id))
            .map(|p| start + p)
    };

    let min_id = if through_end && from == 1 {
        i64::MIN
    } else {
        checked
            .iter()
            .map(|b| b.header.first_event_id)
            .min()
            .unwrap_or(i64::MAX)
    };
    let max_id = if through_end {
        i64::MAX
    } else {
        checked
            .iter()
            .map(|b| b.header.last_event_id)
            .max()
            .unwrap_or(i64::MIN)
    };
    let sealed_maps: HashMap<usize, HashMap<i64, Hash>> = blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.checked)
        .map(|(i, b)| (i, b.sealed.iter().copied().collect()))
        .collect();
    let mut found: HashMap<usize, Vec<(i64, Hash)>> = HashMap::new();
    // Events that differ from what was sealed for their id, kept to tell moved from modified.
    let mut suspects: HashMap<i64, EventRecord> = HashMap::new();
    let mut hash_column_altered: Vec<(i64, i64)> = Vec::new();
    let (mut events_checked, mut unsealed) = (0i64, 0i64);
    // Archived events are still part of the chain.
    let mut cursor = client.open_cursor(
        "SELECT id, (extract(epoch FROM occurred_at) * 1000000)::int8, txid::text::int8, statement_id, actor,
                actor_role, action, entity_type, entity_id, changes, ip, user_agent, session_id, source, org_id,
                metadata, hash
           FROM (SELECT * FROM audit.events UNION ALL SELECT * FROM audit_archive.events) e
          WHERE id BETWEEN $1 AND $2 ORDER BY id",
        &[min_id.into(), max_id.into()],
    );
    loop {
        let batch = cursor.fetch(FETCH_BATCH)?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            let (record, stored) = read_event(&row)?;
            let (id, txid, recomputed) = (record.id, record.txid, record.hash());
            match place(txid, id) {
                Some(b) if blocks[b].checked => {
                    events_checked += 1;
                    found.entry(b).or_default().push((id, recomputed));
                    if stored != recomputed {
                        hash_column_altered.push((id, blocks[b].header.block_id));
                    }
                    if sealed_maps[&b].get(&id) != Some(&recomputed) {
                        suspects.insert(id, record);
                    }
                }
                Some(_) => {}
                None if txid < sealed_horizon => {
                    events_checked += 1;
                    problems.push(Problem {
                        kind: ProblemKind::Inserted,
                        event_id: Some(id),
                        block_id: None,
                        detail: format!("event {id} belongs to a sealed transaction range but no block sealed it"),
                    });
                }
                None if through_end => {
                    events_checked += 1;
                    unsealed += 1;
                    if stored != recomputed {
                        problems.push(Problem {
                            kind: ProblemKind::Modified,
                            event_id: Some(id),
                            block_id: None,
                            detail: format!("unsealed event {id} no longer matches the hash it was written with"),
                        });
                    }
                }
                None => {}
            }
        }
    }
    let mut reported: HashSet<i64> = problems.iter().filter_map(|p| p.event_id).collect();
    for (index, block) in blocks.iter().enumerate().filter(|(_, b)| b.checked) {
        let events = found.remove(&index).unwrap_or_default();
        let hash_as = |at: i64, as_id: i64| suspects.get(&at).map(|r| r.hash_as(as_id));
        for p in compare_block(
            block.header.block_id,
            &block.sealed,
            &events,
            &hash_as,
            &|id| deleted.contains(&id),
        ) {
            reported.extend(p.event_id);
            problems.push(p);
        }
    }
    for (id, block_id) in hash_column_altered
        .into_iter()
        .filter(|(id, _)| !reported.contains(id))
    {
        problems.push(Problem {
            kind: ProblemKind::Modified,
            event_id: Some(id),
            block_id: Some(block_id),
            detail: format!("event {id}'s stored hash was altered"),
        });
    }
    problems.sort_by_key(|p| (p.block_id, p.event_id));
    Ok(Verification {
        valid: problems.is_empty(),
        events_checked,
        blocks_checked: checked.len() as i64,
        unsealed_events: unsealed,
        problems,
    })
}

fn problems_json(problems: &[Problem]) -> Value {
    Value::Array(
        problems
            .iter()
            .map(|p| json!({"kind": p.kind.name(), "event_id": p.event_id, "block_id": p.block_id, "detail": p.detail}))
            .collect(),
    )
}

/// Seals every event whose transaction has ended, now; returns the blocks written.
#[pg_extern(volatile, parallel_unsafe)]
fn seal() -> TableIterator<
    'static,
    (
        name!(block_id, i64),
        name!(event_count, i64),
        name!(first_event_id, i64),
        name!(last_event_id, i64),
        name!(xid_lo, i64),
        name!(xid_hi, i64),
    ),
> {
    TableIterator::new(seal_now().into_iter().map(|b| {
        (
            b.block_id,
            b.event_count,
            b.first_event_id,
            b.last_event_id,
            b.xid_lo,
            b.xid_hi,
        )
    }))
}

/// Verifies events and blocks; every problem comes with its event or block id.
#[pg_extern(stable, parallel_safe)]
fn verify(
    from_block: default!(Option<i64>, "NULL"),
    to_block: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(valid, bool),
        name!(events_checked, i64),
        name!(blocks_checked, i64),
        name!(unsealed_events, i64),
        name!(problems, JsonB),
    ),
> {
    let v = verify_chain(from_block, to_block);
    TableIterator::once((
        v.valid,
        v.events_checked,
        v.blocks_checked,
        v.unsealed_events,
        JsonB(problems_json(&v.problems)),
    ))
}

/// Confirms that the chain still holds the block a digest was taken of,
/// unchanged, that every later block still links back to it, and that the
/// events sealed up to it still match.
#[pg_extern(stable, parallel_safe)]
fn verify_digest(
    digest: JsonB,
) -> TableIterator<'static, (name!(valid, bool), name!(detail, String))> {
    let bad_digest = || -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "not an audit digest",
            r#"Pass the document returned by audit.digest(), e.g. {"block_id": 42, "block_hash": "9f2c..."}."#,
        )
    };
    let block_id = digest
        .0
        .get("block_id")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| bad_digest());
    let expected = digest
        .0
        .get("block_hash")
        .and_then(Value::as_str)
        .unwrap_or_else(|| bad_digest())
        .to_owned();
    let result = Spi::connect(|client| -> Result<(bool, String), pgrx::spi::Error> {
        let blocks = load_blocks(client, block_id, i64::MAX)?;
        let Some(block) = blocks.iter().find(|b| b.header.block_id == block_id) else {
            return Ok((false, format!("block {block_id} is no longer in the chain")));
        };
        let recomputed = canonical::to_hex(&block_hash(&block.header));
        if recomputed != expected {
            return Ok((false, format!("block {block_id} changed: its contents now hash to {recomputed}, the digest says {expected}")));
        }
        if canonical::to_hex(&block.stored_hash) != expected {
            return Ok((false, format!("block {block_id}'s stored hash no longer matches the digest")));
        }
        let chain = check_chain(&blocks);
        if let Some(p) = chain.first() {
            return Ok((false, format!("the chain after block {block_id} is broken: {}", p.detail)));
        }
        let events = verify_with(client, 1, block_id, false)?;
        if let Some(p) = events.problems.first() {
            return Ok((false, format!("the events sealed up to block {block_id} changed: {}", p.detail)));
        }
        Ok((true, format!("block {block_id} is unchanged and {} later block(s) link back to it", blocks.iter().filter(|b| b.header.block_id > block_id).count())))
    })
    .unwrap_or_else(|e| spi_error(e));
    TableIterator::once(result)
}
