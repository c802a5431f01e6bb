//! Verifying the hash chain.
//!
//! The materializer seals what it stores: every chunk row names the block that
//! seals its events (`block_id`), and a block keeps the id and hash of each
//! event it sealed. Verification recomputes each event's hash from the stored
//! row and compares it, block by block, with what was sealed; chunks of the
//! block still open (the newest id) are unsealed, not suspect.

use std::collections::{HashMap, HashSet};

use audit_core::canonical::{self, EventRecord};
use audit_core::ledger::{
    self, block_hash, compare_block, merkle_root, BlockHeader, Hash, Problem, ProblemKind,
    GENESIS_PREV_HASH,
};
use pgrx::datum::Inet;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{JsonB, PgSqlErrorCode};
use serde_json::{json, Value};

use crate::errors::raise;

const FETCH_BATCH: i64 = 1_000;

fn spi_error(e: pgrx::spi::Error) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("audit ledger: {e}"),
        "Report this with the server log.",
    )
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
        "SELECT block_id, (extract(epoch FROM sealed_at) * 1000000)::int8,
                (lsn_lo - '0/0'::pg_lsn)::int8, (lsn_hi - '0/0'::pg_lsn)::int8,
                first_event_id, last_event_id, event_count, merkle_root, prev_hash, block_hash,
                CASE WHEN block_id BETWEEN $1 AND $2 THEN leaf_hashes END
           FROM audit.blocks ORDER BY block_id",
        None,
        &[from.into(), to.into()],
    )?;
    let mut blocks = Vec::new();
    for row in rows {
        let block_id = row.get::<i64>(1)?.unwrap_or(0);
        let leaf_bytes = row.get::<Vec<u8>>(11)?;
        let header = BlockHeader {
            block_id,
            sealed_at_unix_micros: row.get::<i64>(2)?.unwrap_or(0),
            lsn_lo: row.get::<i64>(3)?.unwrap_or(0) as u64,
            lsn_hi: row.get::<i64>(4)?.unwrap_or(0) as u64,
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
        // A block seals every id from its first to its last.
        let sealed = leaf_bytes
            .map(|bytes| {
                (header.first_event_id..)
                    .zip(ledger::split_hashes(&bytes).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
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

/// The columns `read_chunk` reads, in its order.
pub const CHUNK_COLUMNS: &str = "block_id, id, (extract(epoch FROM occurred_at) * 1000000)::int8, txid::text::int8,
    statement_id, actor, actor_role, action, entity_type, entity_ids, changes, ip, user_agent, session_id,
    source, org_id, metadata,
    (SELECT array_agg((extract(epoch FROM t) * 1000000)::int8 ORDER BY n)
       FROM unnest(occurred_ats) WITH ORDINALITY u(t, n)),
    txids::text[]::int8[], statement_ids";

/// The events of a chunk row as read back.
pub struct StoredChunk {
    pub block_id: i64,
    pub events: Vec<EventRecord>,
}

fn canonical_text(json: Option<JsonB>) -> Option<String> {
    json.map(|j| {
        let mut s = String::new();
        canonical::push_canonical_json(&mut s, &j.0);
        s
    })
}

/// A row of `SELECT CHUNK_COLUMNS FROM audit.event_chunks`.
pub fn read_chunk(row: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<StoredChunk, pgrx::spi::Error> {
    let text = |i: usize| row.get::<String>(i);
    let first_id = row.get::<i64>(2)?.unwrap_or(0);
    let entity_ids = row.get::<Vec<Option<String>>>(10)?.unwrap_or_default();
    let changes: Vec<Option<String>> = row
        .get::<Vec<Option<JsonB>>>(11)?
        .unwrap_or_default()
        .into_iter()
        .map(canonical_text)
        .collect();
    let shared = EventRecord {
        id: first_id,
        occurred_at_unix_micros: row.get::<i64>(3)?.unwrap_or(0),
        txid: row.get::<i64>(4)?.unwrap_or(0) as u64,
        statement_id: row.get::<i64>(5)?,
        actor: text(6)?,
        actor_role: text(7)?,
        action: text(8)?.unwrap_or_default(),
        entity_type: text(9)?,
        entity_id: None,
        changes: None,
        ip: row.get::<Inet>(12)?.map(|i| i.0),
        user_agent: text(13)?,
        session_id: text(14)?,
        source: text(15)?,
        org_id: text(16)?,
        metadata: canonical_text(row.get::<JsonB>(17)?),
    };
    // What differs between a row's events, when it does.
    let occurred_ats = row.get::<Vec<i64>>(18)?;
    let txids = row.get::<Vec<i64>>(19)?;
    let statement_ids = row.get::<Vec<Option<i64>>>(20)?;
    let events = entity_ids
        .into_iter()
        .zip(changes.into_iter().chain(std::iter::repeat(None)))
        .enumerate()
        .map(|(i, (entity_id, changes))| EventRecord {
            id: first_id + i as i64,
            occurred_at_unix_micros: occurred_ats
                .as_ref()
                .and_then(|t| t.get(i).copied())
                .unwrap_or(shared.occurred_at_unix_micros),
            txid: txids
                .as_ref()
                .and_then(|t| t.get(i).copied())
                .map_or(shared.txid, |t| t as u64),
            statement_id: match &statement_ids {
                Some(ids) => ids.get(i).copied().flatten(),
                None => shared.statement_id,
            },
            entity_id,
            changes,
            ..shared.clone()
        })
        .collect();
    Ok(StoredChunk {
        block_id: row.get::<i64>(1)?.unwrap_or(0),
        events,
    })
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

/// Checks the events stored as sealed by one block against what it sealed.
struct BlockCheck<'a> {
    block: &'a StoredBlock,
    found: Vec<(i64, Hash)>,
    /// Events that differ from what was sealed for their id, kept to tell moved from modified.
    suspects: HashMap<i64, EventRecord>,
}

impl<'a> BlockCheck<'a> {
    fn new(block: &'a StoredBlock) -> Self {
        BlockCheck {
            block,
            found: Vec::new(),
            suspects: HashMap::new(),
        }
    }

    fn add(&mut self, chunk: StoredChunk, sealed: &HashMap<i64, Hash>) {
        for record in chunk.events {
            let recomputed = record.hash();
            if sealed.get(&record.id) != Some(&recomputed) {
                self.suspects.insert(record.id, record.clone());
            }
            self.found.push((record.id, recomputed));
        }
    }

    fn finish(mut self, deleted: &HashSet<i64>, problems: &mut Vec<Problem>) {
        self.found.sort_unstable_by_key(|(id, _)| *id);
        let block_id = self.block.header.block_id;
        let suspects = &self.suspects;
        let hash_as = |at: i64, as_id: i64| suspects.get(&at).map(|r| r.hash_as(as_id));
        problems.extend(compare_block(
            block_id,
            &self.block.sealed,
            &self.found,
            &hash_as,
            &|id| deleted.contains(&id),
        ));
    }
}

fn verify_with(
    client: &SpiClient<'_>,
    from: i64,
    to: i64,
    through_end: bool,
) -> Result<Verification, pgrx::spi::Error> {
    let blocks = load_blocks(client, from, to)?;
    let mut problems = check_chain(&blocks);
    let by_id: HashMap<i64, &StoredBlock> = blocks.iter().map(|b| (b.header.block_id, b)).collect();
    let open_block = blocks.last().map_or(1, |b| b.header.block_id + 1);
    let checked = blocks.iter().filter(|b| b.checked).count() as i64;
    let deleted = deleted_ids(client)?;
    let upper = if through_end { i64::MAX } else { to };
    let (mut events_checked, mut unsealed) = (0i64, 0i64);
    let mut current: Option<(BlockCheck<'_>, HashMap<i64, Hash>)> = None;
    let mut seen_blocks: HashSet<i64> = HashSet::new();
    // Archived events are still part of the chain. One block at a time, in block order.
    let query = format!(
        "SELECT {CHUNK_COLUMNS}
           FROM (SELECT * FROM audit.event_chunks UNION ALL SELECT * FROM audit_archive.event_chunks) c
          WHERE block_id >= $1 AND block_id <= $2 ORDER BY block_id, id"
    );
    let mut cursor = client.open_cursor(&query, &[from.into(), upper.into()]);
    loop {
        let batch = cursor.fetch(FETCH_BATCH)?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            let chunk = read_chunk(&row)?;
            let block_id = chunk.block_id;
            if current
                .as_ref()
                .is_some_and(|(c, _)| c.block.header.block_id != block_id)
            {
                let (check, _) = current.take().expect("checked above");
                check.finish(&deleted, &mut problems);
            }
            match by_id.get(&block_id) {
                Some(block) if block.checked => {
                    events_checked += chunk.events.len() as i64;
                    seen_blocks.insert(block_id);
                    let (check, sealed) = current.get_or_insert_with(|| {
                        (
                            BlockCheck::new(block),
                            block.sealed.iter().copied().collect(),
                        )
                    });
                    check.add(chunk, sealed);
                }
                Some(_) => {}
                None if block_id == open_block => {
                    // Stored since the last seal: nothing to compare with yet.
                    events_checked += chunk.events.len() as i64;
                    unsealed += chunk.events.len() as i64;
                }
                None => {
                    for record in &chunk.events {
                        events_checked += 1;
                        problems.push(Problem {
                            kind: ProblemKind::Inserted,
                            event_id: Some(record.id),
                            block_id: None,
                            detail: format!(
                                "event {} names block {block_id}, which does not exist",
                                record.id
                            ),
                        });
                    }
                }
            }
        }
    }
    if let Some((check, _)) = current.take() {
        check.finish(&deleted, &mut problems);
    }
    // A checked block none of whose events is stored any more.
    for block in blocks
        .iter()
        .filter(|b| b.checked && !seen_blocks.contains(&b.header.block_id))
    {
        BlockCheck::new(block).finish(&deleted, &mut problems);
    }
    problems.sort_by_key(|p| (p.block_id, p.event_id));
    Ok(Verification {
        valid: problems.is_empty(),
        events_checked,
        blocks_checked: checked,
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
