//! The materializer: turns the chunks that capture wrote into the WAL into rows
//! of `audit.event_chunks`, once their transactions have committed, and seals
//! them into the hash chain in the same transaction.
//!
//! It reads the WAL in order, as `pg_walinspect` does (flushed WAL only,
//! never waiting), and keeps, per transaction, its chunk messages: copied while
//! the copies fit in `COPY_BUDGET`, else where they are, to be read again.
//! A commit record (which lists the transaction's committed subtransactions)
//! makes them a batch entry, in commit order; an abort record, or finding the
//! transaction neither running nor committed (it died in a crash), drops them.
//! A batch is stored in one transaction that also writes its ledger block and
//! where to resume (`audit.materializer_state`): a restart neither loses nor
//! repeats a chunk. The replication slot `audit_<database oid>` keeps the WAL
//! from being recycled before the materializer is past it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::time::{Duration, Instant};

use audit_core::actions::WAL_GAP;
use audit_core::canonical::{self, event_hash};
use audit_core::chunk::{
    month_of, Chunk, ChunkWriter, Context as ChunkContext, Packer, Row, Shared,
};
use audit_core::ledger::{block_hash, merkle_root, BlockHeader, Hash, GENESIS_PREV_HASH};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;

use crate::emit::{slot_exists, slot_name, MESSAGE_PREFIX};
use crate::ledger::{read_chunk, CHUNK_COLUMNS};
use crate::worker::upkeep;
use crate::{entity_index, gucs, shmem, store};

/// Chunks stored per transaction, at most.
const BATCH_MESSAGES: usize = 2_000;
/// Chunk bytes stored per transaction, at most: 29,000 bulk-statement events
/// of one changed field (27 bytes each in a message), one commit every 69 ms
/// (median; 95th percentile 173 ms) while catching up beside four writers of
/// 1,000-row UPDATEs on 2 cores. A store transaction holds back the horizon
/// up to which every audited table can prune the row versions its writers
/// leave; at 200,000 events (2,000 chunks of 100) one took up to a second,
/// and updates stopped being HOT (measured in a 4-client run of 1,000-row
/// UPDATEs).
const BATCH_BYTES: usize = 768 << 10;
/// How long a batch may collect before it is stored.
const BATCH_TIME: Duration = Duration::from_millis(100);
/// Events per block, at most (a chunk is never split between blocks).
const MAX_BLOCK_EVENTS: usize = 10_000;
/// How often transactions left without commit or abort record are looked up,
/// and the replication slot is moved up.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Bytes of chunk messages kept in memory until their transactions end; past
/// it (a huge open transaction), messages are read from the WAL again.
const COPY_BUDGET: usize = 64 << 20;

/// `xl_logical_message` (replication/message.h): not in pgrx's bindings.
#[repr(C)]
struct LogicalMessage {
    db_id: pg_sys::Oid,
    transactional: bool,
    prefix_size: usize,
    message_size: usize,
    // followed by the prefix (NUL-terminated) and the message
}

// The local WAL page reader pg_walinspect uses; pgrx binds them only as Rust wrappers.
unsafe extern "C-unwind" {
    fn read_local_xlog_page_no_wait(
        state: *mut pg_sys::XLogReaderState,
        target_page: pg_sys::XLogRecPtr,
        request_length: i32,
        target_record: pg_sys::XLogRecPtr,
        page: *mut c_char,
    ) -> i32;
    fn wal_segment_open(
        state: *mut pg_sys::XLogReaderState,
        segment: pg_sys::XLogSegNo,
        timeline: *mut pg_sys::TimeLineID,
    );
    fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
}

pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// A WAL reader over the flushed WAL of this server, allocated for the life of the process.
struct Reader {
    state: *mut pg_sys::XLogReaderState,
    private: *mut pg_sys::ReadLocalXLogPageNoWaitPrivate,
}

impl Reader {
    fn new() -> Reader {
        unsafe {
            let previous = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let private =
                pg_sys::palloc0(std::mem::size_of::<pg_sys::ReadLocalXLogPageNoWaitPrivate>())
                    as *mut pg_sys::ReadLocalXLogPageNoWaitPrivate;
            let mut routine = pg_sys::XLogReaderRoutine {
                page_read: Some(read_local_xlog_page_no_wait),
                segment_open: Some(wal_segment_open),
                segment_close: Some(wal_segment_close),
            };
            let state = pg_sys::XLogReaderAllocate(
                pg_sys::wal_segment_size,
                std::ptr::null(),
                &mut routine,
                private.cast(),
            );
            pg_sys::MemoryContextSwitchTo(previous);
            assert!(!state.is_null(), "out of memory allocating a WAL reader");
            Reader { state, private }
        }
    }

    /// Positions the reader on the first record at or after `lsn`; false when
    /// there is none yet.
    fn seek(&mut self, lsn: u64) -> bool {
        unsafe {
            (*self.private).end_of_wal = false;
            let found = pg_sys::XLogFindNextRecord(self.state, lsn);
            if found == 0 {
                return false;
            }
            pg_sys::XLogBeginRead(self.state, found);
            true
        }
    }

    /// Continues reading at `lsn` (a record start).
    fn begin(&mut self, lsn: u64) {
        unsafe {
            (*self.private).end_of_wal = false;
            pg_sys::XLogBeginRead(self.state, lsn);
        }
    }

    /// The next record, or None at the end of the flushed WAL.
    fn next(&mut self) -> Option<*mut pg_sys::DecodedXLogRecord> {
        unsafe {
            let mut error: *mut c_char = std::ptr::null_mut();
            let record = pg_sys::XLogReadRecord(self.state, &mut error);
            if record.is_null() {
                if (*self.private).end_of_wal {
                    return None;
                }
                let detail = if error.is_null() {
                    "no detail".to_owned()
                } else {
                    CStr::from_ptr(error).to_string_lossy().into_owned()
                };
                error!(
                    "audit materializer could not read WAL at {}: {detail}",
                    lsn_text((*self.state).EndRecPtr)
                );
            }
            Some((*self.state).record)
        }
    }

    fn read_at(&self) -> u64 {
        unsafe { (*self.state).ReadRecPtr }
    }

    fn end_at(&self) -> u64 {
        unsafe { (*self.state).EndRecPtr }
    }

    /// The chunk message at `lsn`, copied.
    fn message_at(&mut self, lsn: u64) -> Vec<u8> {
        self.begin(lsn);
        let record = self.next().unwrap_or_else(|| {
            error!(
                "audit materializer: the chunk at {} is no longer readable",
                lsn_text(lsn)
            )
        });
        unsafe { message_payload(record) }
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| error!("audit materializer: no chunk at {}", lsn_text(lsn)))
    }
}

/// The payload of an audit chunk message of this database, if `record` is one.
unsafe fn message_payload<'a>(record: *mut pg_sys::DecodedXLogRecord) -> Option<&'a [u8]> {
    unsafe {
        let header = &(*record).header;
        if header.xl_rmid != pg_sys::RmgrIds::RM_LOGICALMSG_ID as u8
            || (header.xl_info as u32 & !pg_sys::XLR_INFO_MASK) != 0
        {
            return None;
        }
        let message = (*record).main_data as *const LogicalMessage;
        if (*message).db_id != pg_sys::MyDatabaseId || !(*message).transactional {
            return None;
        }
        let data = (message as *const u8).add(std::mem::size_of::<LogicalMessage>());
        let prefix = std::slice::from_raw_parts(data, (*message).prefix_size);
        if prefix.strip_suffix(&[0]) != Some(MESSAGE_PREFIX.to_bytes()) {
            return None;
        }
        Some(std::slice::from_raw_parts(
            data.add((*message).prefix_size),
            (*message).message_size,
        ))
    }
}

/// A transaction's outcome, as its xact record tells it.
enum Outcome {
    Committed { xid: u32, subxacts: Vec<u32> },
    Aborted { xids: Vec<u32> },
}

unsafe fn xact_outcome(record: *mut pg_sys::DecodedXLogRecord) -> Option<Outcome> {
    unsafe {
        let header = &(*record).header;
        if header.xl_rmid != pg_sys::RmgrIds::RM_XACT_ID as u8 {
            return None;
        }
        let op = header.xl_info as u32 & pg_sys::XLOG_XACT_OPMASK;
        let list = |ptr: *mut pg_sys::TransactionId, n: i32| -> Vec<u32> {
            if n <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(ptr, n as usize)
                    .iter()
                    .map(|x| x.into_inner())
                    .collect()
            }
        };
        match op {
            pg_sys::XLOG_XACT_COMMIT | pg_sys::XLOG_XACT_COMMIT_PREPARED => {
                let mut parsed: pg_sys::xl_xact_parsed_commit = std::mem::zeroed();
                pg_sys::ParseCommitRecord(header.xl_info, (*record).main_data.cast(), &mut parsed);
                let xid = if op == pg_sys::XLOG_XACT_COMMIT {
                    header.xl_xid
                } else {
                    parsed.twophase_xid
                };
                Some(Outcome::Committed {
                    xid: xid.into_inner(),
                    subxacts: list(parsed.subxacts, parsed.nsubxacts),
                })
            }
            pg_sys::XLOG_XACT_ABORT | pg_sys::XLOG_XACT_ABORT_PREPARED => {
                let mut parsed: pg_sys::xl_xact_parsed_abort = std::mem::zeroed();
                pg_sys::ParseAbortRecord(header.xl_info, (*record).main_data.cast(), &mut parsed);
                let xid = if op == pg_sys::XLOG_XACT_ABORT {
                    header.xl_xid
                } else {
                    parsed.twophase_xid
                };
                let mut xids = list(parsed.subxacts, parsed.nsubxacts);
                xids.push(xid.into_inner());
                Some(Outcome::Aborted { xids })
            }
            _ => None,
        }
    }
}

/// A chunk message of a transaction not yet stored.
struct Message {
    lsn: u64,
    len: usize,
    /// The payload, when it fitted in the copy budget.
    copy: Option<Vec<u8>>,
}

/// The messages of a committed transaction, to be stored.
struct Commit {
    lsn: u64,
    end: u64,
    messages: Vec<Message>,
}

/// The block being filled: chunks stored since the last seal carry its id.
struct OpenBlock {
    id: i64,
    prev_hash: Hash,
    /// Start of the first commit record stored into it.
    lsn_lo: Option<u64>,
    lsn_hi: u64,
    leaves: Vec<(i64, Hash)>,
    opened: Instant,
}

pub struct Materializer {
    reader: Reader,
    fetcher: Reader,
    /// Where reading continues (a record start), None before the first seek.
    next: Option<u64>,
    /// Chunk messages per (sub)transaction still open, in WAL order.
    open: HashMap<u32, Vec<Message>>,
    /// Bytes of the copies in `open`.
    copied: usize,
    /// Commits ending at or before this are stored already.
    materialized: u64,
    restart: u64,
    /// The id the next stored event gets.
    next_id: i64,
    block: OpenBlock,
    housekeeping: Instant,
    /// Entity runs were written since levels were last merged.
    runs_to_merge: bool,
    /// The trail was found as `start` read it, before the first store.
    trail_checked: bool,
    /// The per-batch state update, planned once: a batch can be a handful of events.
    save_state: Option<OwnedPreparedStatement>,
    /// WAL skipped at start (from, to) because it was gone: recorded in the
    /// trail as a `WAL_GAP` event with the next batch stored.
    gap: Option<(u64, u64)>,
}

impl Materializer {
    /// Starts where the last run stopped (`audit.materializer_state`), with the
    /// chunks stored since the last seal back in the open block.
    pub fn start() -> Materializer {
        let (restart, materialized, lsn_lo, mut next_id, head, leaves) = BackgroundWorker::transaction(|| {
            Spi::connect(|client| {
                let state = client
                    .select(
                        "SELECT (restart_lsn - '0/0'::pg_lsn)::int8, (materialized_lsn - '0/0'::pg_lsn)::int8,
                                (open_block_lsn - '0/0'::pg_lsn)::int8,
                                greatest(next_event_id, (SELECT max(last_event_id) + 1 FROM audit.blocks))
                           FROM audit.materializer_state",
                        None,
                        &[],
                    )?
                    .first();
                let restart = state.get::<i64>(1)?.unwrap_or(0) as u64;
                let materialized = state.get::<i64>(2)?.unwrap_or(0) as u64;
                let lsn_lo = state.get::<i64>(3)?.map(|l| l as u64);
                let next_id = state.get::<i64>(4)?.unwrap_or(1);
                let head = chain_head(client)?;
                let mut leaves = Vec::new();
                for row in client.select(
                    &format!("SELECT {CHUNK_COLUMNS} FROM audit.event_chunks WHERE block_id = $1"),
                    None,
                    &[(head.0 + 1).into()],
                )? {
                    leaves.extend(read_chunk(&row)?.events.iter().map(|e| (e.id, e.hash())));
                }
                Ok::<_, pgrx::spi::Error>((restart, materialized, lsn_lo, next_id, head, leaves))
            })
        })
        .unwrap_or_else(|e| error!("audit materializer cannot read its state: {e}"));
        let gap = oldest_wal_segment_start()
            .filter(|&oldest| restart < oldest)
            .map(|oldest| (restart, oldest));
        if let Some((from, to)) = gap {
            warning!(
                "audit materializer: the WAL from {} to {} is no longer on this server; \
                 events committed there that were not stored yet are missing from the trail \
                 (a WAL_GAP event records it)",
                lsn_text(from),
                lsn_text(to)
            );
        }
        let restart = gap.map_or(restart, |(_, to)| to);
        log!(
            "audit materializer resumes at {} (stored through {}, block {} open with {} events)",
            lsn_text(restart),
            lsn_text(materialized),
            head.0 + 1,
            leaves.len()
        );
        // A restored database numbers on from its restored trail.
        next_id = next_id.max(leaves.iter().map(|(id, _)| id + 1).max().unwrap_or(1));
        shmem::set_materialized_through(materialized);
        Materializer {
            reader: Reader::new(),
            fetcher: Reader::new(),
            next: None,
            open: HashMap::new(),
            copied: 0,
            materialized,
            restart,
            next_id,
            block: OpenBlock {
                id: head.0 + 1,
                prev_hash: head.1,
                lsn_lo,
                lsn_hi: materialized,
                leaves,
                opened: Instant::now(),
            },
            housekeeping: Instant::now(),
            runs_to_merge: true,
            trail_checked: false,
            save_state: None,
            gap,
        }
    }

    /// Reads and stores what is there; returns whether it reached the end of the flushed WAL.
    pub fn run_once(&mut self) -> bool {
        match self.next {
            Some(lsn) => self.reader.begin(lsn),
            None if self.reader.seek(self.restart) => {}
            None => return true,
        }
        let started = Instant::now();
        let mut batch: Vec<Commit> = Vec::new();
        let (mut messages, mut bytes) = (0usize, 0usize);
        let mut at_end = false;
        let mut records = 0u32;
        while messages < BATCH_MESSAGES && bytes < BATCH_BYTES {
            // The clock is read every 64 records: a record takes well under a microsecond.
            records = records.wrapping_add(1);
            if records.is_multiple_of(64) && started.elapsed() >= BATCH_TIME {
                break;
            }
            let Some(record) = self.reader.next() else {
                at_end = true;
                break;
            };
            let (lsn, end) = (self.reader.read_at(), self.reader.end_at());
            self.next = Some(end);
            unsafe {
                if let Some(payload) = message_payload(record) {
                    let xid = (*record).header.xl_xid.into_inner();
                    let copy = (self.copied + payload.len() <= COPY_BUDGET).then(|| {
                        self.copied += payload.len();
                        payload.to_vec()
                    });
                    self.open.entry(xid).or_default().push(Message {
                        lsn,
                        len: payload.len(),
                        copy,
                    });
                    continue;
                }
                match xact_outcome(record) {
                    Some(Outcome::Committed { xid, subxacts }) => {
                        let mut found: Vec<Message> = std::iter::once(xid)
                            .chain(subxacts)
                            .filter_map(|x| self.forget(x))
                            .flatten()
                            .collect();
                        if !found.is_empty() && end > self.materialized {
                            found.sort_unstable_by_key(|m| m.lsn);
                            messages += found.len();
                            bytes += found.iter().map(|m| m.len).sum::<usize>();
                            batch.push(Commit {
                                lsn,
                                end,
                                messages: found,
                            });
                        }
                    }
                    Some(Outcome::Aborted { xids }) => {
                        for x in xids {
                            self.forget(x);
                        }
                    }
                    None => {}
                }
            }
        }
        let through = self.next.unwrap_or(self.restart);
        self.restart = self
            .open
            .values()
            .filter_map(|m| m.first().map(|m| m.lsn))
            .min()
            .unwrap_or(through);
        if (!batch.is_empty() || self.gap.is_some()) && !self.trail_checked {
            if self.trail_replaced() {
                // pg_restore loads the trail after its CREATE EXTENSION, which
                // this materializer may have started on: numbering on from what
                // it read then would reuse restored ids and block ids. Start
                // over from the restored trail; the batch is read again.
                log!("audit materializer: a restored trail appeared, resuming from it");
                *self = Materializer::start();
                return false;
            }
            self.trail_checked = true;
        }
        let seal_due = self.seal_due();
        if !batch.is_empty() || (seal_due && !self.block.leaves.is_empty()) || self.gap.is_some() {
            self.store(&mut batch, seal_due);
        }
        // Stored (or nothing to store): whatever failed before works now.
        shmem::set_store_problem("");
        shmem::set_materialized_through(through);
        if self.block.leaves.is_empty() {
            shmem::set_sealed_through(through);
        }
        if self.housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            self.housekeeping = Instant::now();
            self.forget_dead_transactions();
            self.advance_slot();
        }
        if self.runs_to_merge {
            self.runs_to_merge = false;
            // A merge per transaction: one of a large level holds its snapshot
            // for a while, and the next store need not wait for all of them.
            while upkeep("merge the entity index", || {
                Spi::connect_mut(entity_index::merge_once)
            }) == Some(true)
            {}
        }
        at_end
    }

    /// Whether the trail holds blocks or events `start` did not find there
    /// (checked once, before the first store).
    fn trail_replaced(&self) -> bool {
        BackgroundWorker::transaction(|| {
            Spi::get_two::<i64, i64>(
                "SELECT (SELECT coalesce(max(block_id), 0) FROM audit.blocks),
                        (SELECT coalesce(max(id), 0) FROM audit.event_chunks)",
            )
        })
        .map(|(head, max_id)| {
            head != Some(self.block.id - 1) || max_id.unwrap_or(0) >= self.next_id
        })
        .unwrap_or_else(|e| error!("audit materializer cannot read the trail: {e}"))
    }

    fn seal_due(&self) -> bool {
        let interval = gucs::SEAL_INTERVAL_MS.get().max(0) as u64;
        self.block.leaves.len() >= MAX_BLOCK_EVENTS
            || self.block.opened.elapsed() >= Duration::from_millis(interval)
            || shmem::take_seal_request()
    }

    /// Takes a (sub)transaction's messages out of `open`.
    fn forget(&mut self, xid: u32) -> Option<Vec<Message>> {
        let messages = self.open.remove(&xid)?;
        self.copied -= copied_bytes(&messages);
        Some(messages)
    }

    /// Drops the messages of transactions that ended without a commit or abort
    /// record this reader will see (a crash ended them): neither running nor committed.
    fn forget_dead_transactions(&mut self) {
        let dead: Vec<u32> = self
            .open
            .keys()
            .copied()
            .filter(|&xid| unsafe {
                let xid = pg_sys::TransactionId::from(xid);
                !pg_sys::TransactionIdIsInProgress(xid) && !pg_sys::TransactionIdDidCommit(xid)
            })
            .collect();
        for xid in dead {
            self.forget(xid);
        }
    }

    /// Lets the server recycle WAL before the restart point, once that point is durable.
    fn advance_slot(&mut self) {
        let restart = self.restart;
        // The new restart point is committed and flushed before the slot moves:
        // a crash in between must not leave the state pointing at WAL the slot
        // let go. (Flushing the insert position instead errs when it is just
        // past a page header: "xlog flush request ... is not satisfied".)
        let saved = upkeep("save its restart point", || {
            Spi::run_with_args(
                "UPDATE audit.materializer_state SET restart_lsn = $1::pg_lsn, updated_at = now()
                  WHERE restart_lsn < $1::pg_lsn",
                &[lsn_text(restart).into()],
            )
        });
        if saved.is_none() {
            return;
        }
        unsafe { pg_sys::XLogFlush(pg_sys::XactLastCommitEnd) };
        upkeep("move its replication slot", || {
            let slot = slot_name(unsafe { pg_sys::MyDatabaseId });
            Spi::run_with_args(
                "SELECT pg_replication_slot_advance($1, $2::pg_lsn)
                  WHERE (SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = $1) < $2::pg_lsn",
                &[slot.into(), lsn_text(restart).into()],
            )
        });
    }

    /// Stores a batch into the open block, seals the block when `seal`, and
    /// records the new position, in one transaction.
    fn store(&mut self, batch: &mut [Commit], seal: bool) {
        // A WAL gap found at start is recorded first: the events after it follow.
        let mut payloads: Vec<Vec<u8>> = self
            .gap
            .map(|(from, to)| gap_event(from, to))
            .into_iter()
            .collect();
        payloads.extend(
            batch
                .iter_mut()
                .flat_map(|c| c.messages.iter_mut())
                .map(|m| {
                    m.copy
                        .take()
                        .unwrap_or_else(|| self.fetcher.message_at(m.lsn))
                }),
        );
        let mut packer = Packer::new(self.next_id);
        for payload in &payloads {
            packer
                .add(Chunk::decode(payload).unwrap_or_else(|e| error!("audit materializer: {e}")));
        }
        let next_id = packer.next_id();
        let rows = packer.finish();
        let mut block = std::mem::replace(
            &mut self.block,
            OpenBlock {
                id: 0,
                prev_hash: GENESIS_PREV_HASH,
                lsn_lo: None,
                lsn_hi: 0,
                leaves: Vec::new(),
                opened: Instant::now(),
            },
        );
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            block.lsn_lo.get_or_insert(first.lsn);
            block.lsn_hi = last.end;
            self.materialized = last.end;
        }
        let (restart, materialized) = (self.restart, self.materialized);
        let save_state_plan = &mut self.save_state;
        // A failed store errors out of the worker, which restarts and prepares anew.
        let (block, wrote_run) =
            BackgroundWorker::transaction(std::panic::AssertUnwindSafe(|| {
                if !seal {
                    // Not flushed at commit: the writers' next commits flush it a
                    // little later, in step with theirs, instead of waiting
                    // behind this batch's flush. A crash that loses it loses the
                    // state saved with it too, and the batch is stored again, the
                    // same. A sealing commit is flushed: once a block is visible,
                    // a digest of it must survive a crash.
                    Spi::run("SET LOCAL synchronous_commit = off")
                        .unwrap_or_else(|e| error!("audit materializer: {e}"));
                }
                let wrote_run = store_rows(&rows, &mut block);
                let next = if seal { seal_block(block) } else { block };
                save_state(save_state_plan, restart, materialized, next_id, next.lsn_lo);
                (next, wrote_run)
            }));
        self.block = block;
        self.runs_to_merge |= wrote_run;
        self.next_id = next_id;
        self.gap = None;
    }
}

/// The message of a `WAL_GAP` event: the worker, as SYSTEM, records the WAL
/// range it skipped, so the trail itself shows where events may be missing.
fn gap_event(from: u64, to: u64) -> Vec<u8> {
    let mut metadata = String::new();
    canonical::push_canonical_json(
        &mut metadata,
        &serde_json::json!({ "from_lsn": lsn_text(from), "to_lsn": lsn_text(to) }),
    );
    let mut chunk = ChunkWriter::new(&Shared {
        occurred_at: unsafe { pg_sys::GetCurrentTimestamp() },
        txid: 0,
        statement: None,
        bulk: false,
        context: ChunkContext {
            action: Cow::Borrowed(WAL_GAP),
            entity_type: None,
            actor: Some("audit worker"),
            actor_role: None,
            ip: None,
            user_agent: None,
            session_id: None,
            source: Some("SYSTEM"),
            org_id: None,
            metadata: Some(Cow::Owned(metadata)),
        },
    });
    chunk.push(None, None);
    chunk.finish()
}

/// Where the oldest WAL segment file in `pg_wal` starts, on any timeline. A
/// position before it cannot be read: on a standby promoted from a base
/// backup taken after the old primary's last saved position, say, or after
/// the slot was lost. Reading resumes there instead of failing forever.
fn oldest_wal_segment_start() -> Option<u64> {
    let segment_size = unsafe { pg_sys::wal_segment_size } as u64;
    std::fs::read_dir("pg_wal")
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            // TTTTTTTTXXXXXXXXYYYYYYYY: timeline, high 32 bits, segment within them.
            if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let high = u64::from_str_radix(&name[8..16], 16).ok()?;
            let segment = u64::from_str_radix(&name[16..24], 16).ok()?;
            Some((high << 32) + segment * segment_size)
        })
        .min()
}

fn copied_bytes(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter_map(|m| m.copy.as_ref())
        .map(Vec::len)
        .sum()
}

/// The newest block: (block id, its hash), or the genesis values.
fn chain_head(client: &pgrx::spi::SpiClient<'_>) -> Result<(i64, Hash), pgrx::spi::Error> {
    let rows = client.select(
        "SELECT block_id, block_hash FROM audit.blocks ORDER BY block_id DESC LIMIT 1",
        None,
        &[],
    )?;
    if rows.is_empty() {
        return Ok((0, GENESIS_PREV_HASH));
    }
    let row = rows.first();
    let hash: Vec<u8> = row.get(2)?.unwrap_or_default();
    Ok((
        row.get::<i64>(1)?.unwrap_or(0),
        hash.try_into().unwrap_or(GENESIS_PREV_HASH),
    ))
}

/// Records where the materializer stands (`audit.materializer_state`), in the
/// store transaction; `plan` keeps the statement planned once.
fn save_state(
    plan: &mut Option<OwnedPreparedStatement>,
    restart: u64,
    materialized: u64,
    next_id: i64,
    open_block_lsn: Option<u64>,
) {
    let args = [
        lsn_text(restart).into(),
        lsn_text(materialized).into(),
        next_id.into(),
        open_block_lsn.map(lsn_text).into(),
    ];
    Spi::connect_mut(|client| {
        if plan.is_none() {
            *plan = Some(
                client
                    .prepare_mut(
                        "UPDATE audit.materializer_state
                            SET restart_lsn = $1::pg_lsn, materialized_lsn = $2::pg_lsn,
                                next_event_id = $3, open_block_lsn = $4::pg_lsn, updated_at = now()",
                        &[
                            pg_sys::TEXTOID.into(),
                            pg_sys::TEXTOID.into(),
                            pg_sys::INT8OID.into(),
                            pg_sys::TEXTOID.into(),
                        ],
                    )?
                    .keep(),
            );
        }
        client.update(plan.as_ref().unwrap(), None, &args).map(|_| ())
    })
    .unwrap_or_else(|e| error!("audit materializer cannot save its state: {e}"));
}

/// Writes the rows as part of the open block, their events' hashes into its
/// leaves; returns whether it wrote a run into the entity index.
fn store_rows(rows: &[Row<'_>], block: &mut OpenBlock) -> bool {
    let mut changes_json = String::new();
    for row in rows {
        for (i, event) in row.events.iter().enumerate() {
            let changes = event.changes.as_ref().map(|c| {
                c.write_canonical_json(&mut changes_json);
                changes_json.as_str()
            });
            block
                .leaves
                .push((event.id, event_hash(&row.event_fields(i, changes))));
        }
    }
    // One insert per month, rows in id order within it.
    let month =
        |row: &Row<'_>| month_of(row.events.iter().map(|e| e.occurred_at).min().unwrap_or(0));
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| month(&rows[i]));
    for group in order.chunk_by(|&a, &b| month(&rows[a]) == month(&rows[b])) {
        let earliest = rows[group[0]]
            .events
            .iter()
            .map(|e| e.occurred_at)
            .min()
            .unwrap_or(0);
        store::insert(earliest, group.len(), |n| {
            store::chunk_values(&rows[group[n]], Some(block.id))
        });
    }
    entity_index::write_run(rows)
}

/// Writes the block that seals the open block's events; returns the next, empty, block.
fn seal_block(mut block: OpenBlock) -> OpenBlock {
    block.leaves.sort_unstable_by_key(|(id, _)| *id);
    let sealed_at = unsafe { pg_sys::GetCurrentTimestamp() };
    let lsn_lo = block.lsn_lo.unwrap_or(block.lsn_hi);
    let header = BlockHeader {
        block_id: block.id,
        prev_hash: block.prev_hash,
        merkle_root: merkle_root(&block.leaves),
        event_count: block.leaves.len() as i64,
        first_event_id: block.leaves[0].0,
        last_event_id: block.leaves[block.leaves.len() - 1].0,
        lsn_lo,
        lsn_hi: block.lsn_hi,
        sealed_at_unix_micros: sealed_at + canonical::UNIX_TO_PG_EPOCH_MICROS,
    };
    let hash = block_hash(&header);
    let leaf_hashes: Vec<u8> = block
        .leaves
        .iter()
        .flat_map(|(_, h)| h.iter().copied())
        .collect();
    let args = unsafe {
        [
            DatumWithOid::from(block.id),
            DatumWithOid::new(sealed_at, pg_sys::TIMESTAMPTZOID),
            DatumWithOid::from(lsn_text(lsn_lo)),
            DatumWithOid::from(lsn_text(block.lsn_hi)),
            DatumWithOid::from(header.first_event_id),
            DatumWithOid::from(header.last_event_id),
            DatumWithOid::from(header.event_count),
            DatumWithOid::from(leaf_hashes),
            DatumWithOid::from(header.merkle_root.to_vec()),
            DatumWithOid::from(block.prev_hash.to_vec()),
            DatumWithOid::from(hash.to_vec()),
        ]
    };
    Spi::run_with_args(
        "INSERT INTO audit.blocks (block_id, sealed_at, lsn_lo, lsn_hi, first_event_id, last_event_id,
             event_count, leaf_hashes, merkle_root, prev_hash, block_hash)
         VALUES ($1, $2, $3::pg_lsn, $4::pg_lsn, $5, $6, $7, $8, $9, $10, $11)",
        &args,
    )
    .unwrap_or_else(|e| error!("audit materializer cannot write block {}: {e}", block.id));
    OpenBlock {
        id: block.id + 1,
        prev_hash: hash,
        lsn_lo: None,
        lsn_hi: block.lsn_hi,
        leaves: Vec::new(),
        opened: Instant::now(),
    }
}

/// Creates the replication slot that keeps this database's WAL until it is
/// materialized, if missing. Returns whether it had to be created.
pub fn ensure_slot() -> bool {
    let database = unsafe { pg_sys::MyDatabaseId };
    if slot_exists(database) {
        return false;
    }
    Spi::run_with_args(
        "SELECT pg_create_physical_replication_slot($1, true)",
        &[slot_name(database).into()],
    )
    .unwrap_or_else(|e| error!("audit cannot create its replication slot: {e}"));
    true
}
