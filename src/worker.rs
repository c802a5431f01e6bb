//! The background worker of `audit.database`: runs the materializer (which
//! stores and seals what capture wrote into the WAL), creates partitions
//! ahead and applies the retention policies. Registered only when the library
//! is in `shared_preload_libraries`.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::api::PREPARE_CAPTURE_LOCK;
use crate::materializer::{self, Materializer};
use crate::{emit, gucs, shmem};

/// How often the worker makes sure the next months have partitions.
const PARTITION_CHECK_EVERY: Duration = Duration::from_secs(3600);
/// How often the worker looks whether the extension was dropped (or created).
const EXTENSION_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long the materializer sleeps at the end of the WAL unless woken (by
/// `audit.sync`, `audit.seal`). A store's fixed costs (its transaction, the
/// entity-run write and merges) are paid per wake-up, and every wake-up
/// takes CPU from the writers on a small machine.
const IDLE_POLL: Duration = Duration::from_millis(300);

pub fn register() {
    BackgroundWorkerBuilder::new("audit worker")
        .set_type("audit")
        .set_function("audit_worker_main")
        .set_library("audit")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The message of an error caught in the worker.
fn caught_message(error: &CaughtError) -> String {
    match error {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
            report.message().to_string()
        }
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// Runs one upkeep step in a transaction of its own. An error, a PostgreSQL
/// ERROR included, aborts that transaction and becomes a WARNING saying what
/// could not be done: upkeep is tried again at its next turn, whereas exiting
/// would stop the storing of events until the worker restarts. Steps that
/// fail because DROP EXTENSION took their objects away are only logged: the
/// worker notices the drop within a second and starts over.
pub fn upkeep<R>(what: &str, step: impl FnOnce() -> Result<R, pgrx::spi::Error>) -> Option<R> {
    PgTryBuilder::new(AssertUnwindSafe(|| {
        BackgroundWorker::transaction(AssertUnwindSafe(step)).map_err(|e| e.to_string())
    }))
    .catch_others(|e| {
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(caught_message(&e))
    })
    .execute()
    .map_err(|message| {
        if installed_extension().is_some() {
            warning!("audit worker could not {what}: {message}")
        } else {
            log!("audit worker could not {what} (the extension is not installed): {message}")
        }
    })
    .ok()
}

/// The extension's oid in this database, if it is installed: a new oid is a
/// new trail (dropped and created again), which the materializer starts afresh on.
fn installed_extension() -> Option<pg_sys::Oid> {
    BackgroundWorker::transaction(extension_oid)
}

/// The extension's oid, as the current transaction sees it.
fn extension_oid() -> Option<pg_sys::Oid> {
    Spi::get_one::<pg_sys::Oid>("SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'audit'")
        .ok()
        .flatten()
}

/// Applies the retention policies one batch per transaction, so that a run
/// killed midway keeps every finished batch and the next run completes it.
fn run_retention() {
    let offset = gucs::text(&gucs::RETENTION_TIME_OFFSET).unwrap_or_else(|| "0".to_owned());
    let batch = gucs::RETENTION_BATCH_SIZE.get();
    let (mut archived, mut deleted) = (0i64, 0i64);
    // Events newer than the run's start wait for the next run, so a run ends.
    let Some(up_to_id) = upkeep("apply retention", || {
        Spi::get_one::<i64>("SELECT audit._newest_event_id()")
    }) else {
        return;
    };
    let up_to_id = up_to_id.unwrap_or(0);
    loop {
        let step = upkeep("apply retention", || {
            Spi::get_two_with_args::<i64, i64>(
                "SELECT coalesce(sum(archived), 0)::int8, coalesce(sum(deleted), 0)::int8
                   FROM audit._retention_step(now() + $1::interval, $2, $3)",
                &[offset.as_str().into(), batch.into(), up_to_id.into()],
            )
        });
        match step {
            Some((Some(a), Some(d))) if a + d > 0 => {
                archived += a;
                deleted += d;
            }
            _ => break,
        }
        if BackgroundWorker::sigterm_received() {
            break;
        }
    }
    log!("audit worker retention run: {archived} events archived, {deleted} deleted");
}

/// Sleeps up to `wait` (a latch set by a waiting session ends it early);
/// false when the worker must exit.
fn sleep(wait: Duration) -> bool {
    if !BackgroundWorker::wait_latch(Some(wait)) {
        return false;
    }
    if BackgroundWorker::sighup_received() {
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
    true
}

/// Drops the audit replication slots that keep WAL for nobody: this
/// database's while it has no extension, and those of dropped databases.
fn drop_unused_slots(installed: bool) {
    upkeep("drop unused replication slots", || {
        // Not this database's slot while a CREATE EXTENSION that made it is
        // still open (its _prepare_capture holds the lock until it ends): the
        // extension is looked up again once the lock is taken.
        let drop_own = !installed
            && Spi::get_one::<bool>(&format!(
                "SELECT pg_try_advisory_xact_lock({PREPARE_CAPTURE_LOCK})"
            ))?
            .unwrap_or(false)
            && extension_oid().is_none();
        Spi::run_with_args(
            "SELECT pg_drop_replication_slot(s.slot_name) FROM pg_replication_slots s
              WHERE s.slot_name ~ '^audit_[0-9]+$' AND NOT s.active
                AND (NOT EXISTS (SELECT FROM pg_database d WHERE d.oid = substr(s.slot_name, 7)::oid)
                     OR ($1 AND s.slot_name = $2))",
            &[drop_own.into(), emit::slot_name(unsafe { pg_sys::MyDatabaseId }).into()],
        )
    });
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn audit_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::text(&gucs::DATABASE).unwrap_or_else(|| "postgres".to_owned());
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // The materializer writes its own WAL out at each commit, so that the
    // writers' commits do not have to; it need not wait for standbys (a
    // commit lost in a failover is redone from the state it also loses).
    // (`local`, not `off`: with `off` a block that audit.seal() reported, and
    // that a digest was taken of, could be lost in a crash and sealed again
    // with another hash, and the digest would no longer verify.)
    upkeep("set synchronous_commit", || {
        Spi::run("SET synchronous_commit = local")
    });
    log!("audit worker started in database \"{database}\"");
    shmem::unregister_materializer_at_exit();
    'installations: loop {
        let extension = loop {
            if let Some(oid) = installed_extension() {
                break oid;
            }
            drop_unused_slots(false);
            if !sleep(Duration::from_secs(1)) {
                break 'installations;
            }
        };
        drop_unused_slots(true);
        let created = BackgroundWorker::transaction(materializer::ensure_slot);
        if created {
            log!(
                "audit worker created replication slot {}",
                emit::slot_name(unsafe { pg_sys::MyDatabaseId })
            );
        }
        let mut materializer = Materializer::start();
        shmem::register_materializer(true);
        // Not at once: pg_restore creates the dumped partitions right after its
        // CREATE EXTENSION, and creating them here at the same time fails one
        // of the two. Until the first check, audit.enable() and the store path
        // (audit._partition_for) make the partitions they need.
        let mut partitions_checked = Instant::now();
        let mut retention_ran: Option<Instant> = None;
        let mut extension_checked = Instant::now();
        loop {
            let at_end = run_materializer(&mut materializer);
            if partitions_checked.elapsed() >= PARTITION_CHECK_EVERY {
                upkeep("create partitions ahead", || {
                    Spi::run("SELECT audit.ensure_partitions()")
                });
                partitions_checked = Instant::now();
            }
            let retention_every = gucs::RETENTION_INTERVAL_S.get();
            if retention_every > 0
                && retention_ran
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(retention_every as u64))
            {
                run_retention();
                retention_ran = Some(Instant::now());
            }
            if extension_checked.elapsed() >= EXTENSION_CHECK_EVERY {
                extension_checked = Instant::now();
                if installed_extension() != Some(extension) {
                    shmem::register_materializer(false);
                    log!("audit worker: the extension was dropped");
                    continue 'installations;
                }
            }
            if BackgroundWorker::sigterm_received() {
                break 'installations;
            }
            if at_end && !sleep(IDLE_POLL) {
                break 'installations;
            }
        }
    }
    shmem::register_materializer(false);
    log!("audit worker exiting");
}

/// One materializer round; an error is recorded for `audit.status()` before the
/// worker exits on it (and restarts).
fn run_materializer(materializer: &mut Materializer) -> bool {
    PgTryBuilder::new(AssertUnwindSafe(|| materializer.run_once()))
        .catch_others(|e| {
            shmem::set_store_problem(&caught_message(&e));
            e.rethrow()
        })
        .execute()
}
