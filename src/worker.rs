//! The background worker: seals the trail every `audit.seal_interval`.
//! Registered only when the library is in `shared_preload_libraries`; capture
//! never depends on it, and `audit.seal()` does the same work on demand.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;

use crate::{gucs, ledger};

/// How often the worker makes sure the next months have partitions.
const PARTITION_CHECK_EVERY: Duration = Duration::from_secs(3600);

pub fn register() {
    BackgroundWorkerBuilder::new("audit worker")
        .set_type("audit")
        .set_function("audit_worker_main")
        .set_library("audit")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn extension_installed() -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'audit')",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    })
}

/// Applies the retention policies one batch per transaction, so that a run
/// killed midway keeps every finished batch and the next run completes it.
fn run_retention() {
    let offset = gucs::text(&gucs::RETENTION_TIME_OFFSET).unwrap_or_else(|| "0".to_owned());
    let batch = gucs::RETENTION_BATCH_SIZE.get();
    let (mut archived, mut deleted) = (0i64, 0i64);
    // Events newer than the run's start wait for the next run, so a run ends.
    let up_to_id =
        BackgroundWorker::transaction(|| Spi::get_one::<i64>("SELECT audit._newest_event_id()"))
            .ok()
            .flatten()
            .unwrap_or(0);
    loop {
        let step = BackgroundWorker::transaction(|| {
            Spi::get_two_with_args::<i64, i64>(
                "SELECT coalesce(sum(archived), 0)::int8, coalesce(sum(deleted), 0)::int8
                   FROM audit._retention_step(now() + $1::interval, $2, $3)",
                &[offset.as_str().into(), batch.into(), up_to_id.into()],
            )
        });
        match step {
            Ok((Some(a), Some(d))) if a + d > 0 => {
                archived += a;
                deleted += d;
            }
            Ok(_) => break,
            Err(e) => {
                warning!("audit worker retention failed: {e}");
                break;
            }
        }
        if BackgroundWorker::sigterm_received() {
            break;
        }
    }
    log!("audit worker retention run: {archived} events archived, {deleted} deleted");
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn audit_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::text(&gucs::DATABASE).unwrap_or_else(|| "postgres".to_owned());
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("audit worker started in database \"{database}\"");
    let mut partitions_checked: Option<Instant> = None;
    let mut retention_ran: Option<Instant> = None;
    loop {
        let interval = gucs::SEAL_INTERVAL_MS.get();
        let wait = Duration::from_millis(if interval > 0 {
            interval as u64
        } else {
            60_000
        });
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !extension_installed() {
            continue;
        }
        let retention_every = gucs::RETENTION_INTERVAL_S.get();
        if retention_every > 0
            && retention_ran
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(retention_every as u64))
        {
            run_retention();
            retention_ran = Some(Instant::now());
        }
        if gucs::SEAL_INTERVAL_MS.get() <= 0 {
            continue;
        }
        if partitions_checked.is_none_or(|t| t.elapsed() >= PARTITION_CHECK_EVERY) {
            BackgroundWorker::transaction(|| Spi::run("SELECT audit.ensure_partitions()"))
                .unwrap_or_else(|e| {
                    warning!("audit worker could not create partitions ahead: {e}")
                });
            partitions_checked = Some(Instant::now());
        }
        let sealed = BackgroundWorker::transaction(ledger::seal_now);
        if let Some(last) = sealed.last() {
            let events: i64 = sealed.iter().map(|b| b.event_count).sum();
            pgrx::debug1!(
                "audit worker sealed {events} events into blocks up to {}",
                last.block_id
            );
        }
    }
    log!("audit worker exiting");
}
