//! State shared between backends and the materializer (needs the library in
//! `shared_preload_libraries`, like the worker itself).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic, PgLwLock};

/// Every commit whose record ends at or before this WAL position is in
/// `audit.event_chunks` (0: the materializer has not reported yet).
static MATERIALIZED_THROUGH: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"audit_materialized_through") };
/// Every commit ending at or before this WAL position is sealed into a block.
static SEALED_THROUGH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"audit_sealed_through") };
/// Someone waits in `audit.seal()`: seal the open block now.
static SEAL_REQUESTED: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"audit_seal_requested") };
/// `pgprocno` of the running materializer, -1 when there is none.
static MATERIALIZER_PROC: PgAtomic<AtomicI32> =
    unsafe { PgAtomic::new(c"audit_materializer_proc") };

/// Why the materializer last failed to store (NUL-terminated; empty: it did not).
/// The worker restarts after an error, so the log is not the only place to look.
static STORE_PROBLEM: PgLwLock<[u8; 512]> = unsafe { PgLwLock::new(c"audit_store_problem") };

/// Set in the postmaster while the library is preloaded; backends inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(MATERIALIZED_THROUGH);
    pg_shmem_init!(SEALED_THROUGH);
    pg_shmem_init!(SEAL_REQUESTED);
    pg_shmem_init!(MATERIALIZER_PROC = AtomicI32::new(-1));
    pg_shmem_init!(STORE_PROBLEM = [0u8; 512]);
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

pub fn materialized_through() -> u64 {
    if !preloaded() {
        return 0;
    }
    MATERIALIZED_THROUGH.get().load(Ordering::Acquire)
}

pub fn set_materialized_through(lsn: u64) {
    MATERIALIZED_THROUGH.get().fetch_max(lsn, Ordering::AcqRel);
}

pub fn sealed_through() -> u64 {
    if !preloaded() {
        return 0;
    }
    SEALED_THROUGH.get().load(Ordering::Acquire)
}

pub fn set_sealed_through(lsn: u64) {
    SEALED_THROUGH.get().fetch_max(lsn, Ordering::AcqRel);
}

pub fn request_seal() {
    SEAL_REQUESTED.get().store(true, Ordering::Release);
}

pub fn take_seal_request() -> bool {
    SEAL_REQUESTED.get().swap(false, Ordering::AcqRel)
}

/// Called by the materializer when it starts and stops. A worker that exits
/// on an error unregisters too (`before_shmem_exit`), so waiters stop waiting.
pub fn register_materializer(running: bool) {
    let procno = if running {
        unsafe { (*pg_sys::MyProc).pgprocno }
    } else {
        -1
    };
    MATERIALIZER_PROC.get().store(procno, Ordering::Release);
}

unsafe extern "C-unwind" fn unregister_on_exit(_code: i32, _arg: pg_sys::Datum) {
    let me = unsafe { (*pg_sys::MyProc).pgprocno };
    let _ = MATERIALIZER_PROC
        .get()
        .compare_exchange(me, -1, Ordering::AcqRel, Ordering::Acquire);
}

/// Run once by the worker process.
pub fn unregister_materializer_at_exit() {
    unsafe { pg_sys::before_shmem_exit(Some(unregister_on_exit), pg_sys::Datum::from(0)) };
}

/// Records why storing failed (empty: it works again).
pub fn set_store_problem(problem: &str) {
    let mut buffer = STORE_PROBLEM.exclusive();
    let mut end = problem.len().min(buffer.len() - 1);
    while !problem.is_char_boundary(end) {
        end -= 1;
    }
    buffer[..end].copy_from_slice(&problem.as_bytes()[..end]);
    buffer[end] = 0;
}

pub fn store_problem() -> Option<String> {
    if !preloaded() {
        return None;
    }
    let buffer = STORE_PROBLEM.share();
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    (end > 0).then(|| String::from_utf8_lossy(&buffer[..end]).into_owned())
}

pub fn materializer_running() -> bool {
    preloaded() && MATERIALIZER_PROC.get().load(Ordering::Acquire) >= 0
}

/// Wakes the materializer now instead of at its next poll.
pub fn wake_materializer() {
    if !preloaded() {
        return;
    }
    let procno = MATERIALIZER_PROC.get().load(Ordering::Acquire);
    if procno >= 0 {
        unsafe {
            let proc = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}
