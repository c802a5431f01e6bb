//! The C functions of the capture path, bound without pgrx's per-call guard.
//!
//! pgrx wraps every C call in a guard (thread check, `sigsetjmp`, error-stack
//! swap) that turns a PostgreSQL ERROR into a Rust panic. On a single-row
//! statement that was ~25 guarded calls and ~2 µs, a fifth of capture's cost.
//! These bindings are called in batches inside one
//! [`pg_sys::submodules::ffi::pg_guard_ffi_boundary`] instead, whose closure
//! holds only pointers and plain values and cannot panic: an ERROR longjmps
//! over no frame that needed unwinding, and the guard re-raises it as a panic.

use std::ffi::{c_char, c_int};

use pgrx::pg_sys;

unsafe extern "C-unwind" {
    #[link_name = "tuplestore_alloc_read_pointer"]
    pub fn tuplestore_alloc_read_pointer(
        state: *mut pg_sys::Tuplestorestate,
        eflags: c_int,
    ) -> c_int;
    #[link_name = "tuplestore_select_read_pointer"]
    pub fn tuplestore_select_read_pointer(state: *mut pg_sys::Tuplestorestate, ptr: c_int);
    #[link_name = "tuplestore_rescan"]
    pub fn tuplestore_rescan(state: *mut pg_sys::Tuplestorestate);
    #[link_name = "tuplestore_tuple_count"]
    pub fn tuplestore_tuple_count(state: *mut pg_sys::Tuplestorestate) -> i64;
    #[link_name = "tuplestore_gettupleslot"]
    pub fn tuplestore_gettupleslot(
        state: *mut pg_sys::Tuplestorestate,
        forward: bool,
        copy: bool,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> bool;
    #[link_name = "slot_getallattrs__pgrx_cshim"]
    pub fn slot_getallattrs(slot: *mut pg_sys::TupleTableSlot);
    #[link_name = "OutputFunctionCall"]
    pub fn output_function_call(flinfo: *mut pg_sys::FmgrInfo, value: pg_sys::Datum)
        -> *mut c_char;
    #[link_name = "pg_detoast_datum_packed"]
    pub fn pg_detoast_datum_packed(datum: *mut pg_sys::varlena) -> *mut pg_sys::varlena;
    #[link_name = "MemoryContextReset"]
    pub fn memory_context_reset(context: pg_sys::MemoryContext);
    #[link_name = "GetCurrentStatementStartTimestamp"]
    pub fn statement_start_timestamp() -> pg_sys::TimestampTz;
    #[link_name = "GetTopFullTransactionId"]
    pub fn top_full_transaction_id() -> pg_sys::FullTransactionId;
    #[link_name = "GetCurrentSubTransactionId"]
    pub fn current_subtransaction_id() -> pg_sys::SubTransactionId;
    #[link_name = "LogLogicalMessage"]
    pub fn log_logical_message(
        prefix: *const c_char,
        message: *const c_char,
        size: usize,
        transactional: bool,
    ) -> pg_sys::XLogRecPtr;
}

/// Runs `f` (plain values only, no panics) under one guard; see the module docs.
#[inline(always)]
pub unsafe fn batch<T>(f: impl FnOnce() -> T) -> T {
    pg_sys::submodules::ffi::pg_guard_ffi_boundary(f)
}
