//! Captured values are stored in one fixed text style, whatever the session's
//! settings: ISO dates, timestamps in UTC, `postgres` intervals, shortest exact
//! floats and hex bytea. The same value therefore always reads the same in the
//! trail, and reverts can feed it back to the type's input function.

use std::cell::Cell;
use std::ffi::c_int;

use pgrx::pg_sys;

unsafe extern "C" {
    /// `bytea_output` (utils/bytea.h), not in pgrx's bindings.
    static mut bytea_output: c_int;
}
const BYTEA_OUTPUT_HEX: c_int = 1;

thread_local! {
    static UTC: Cell<*mut pg_sys::pg_tz> = const { Cell::new(std::ptr::null_mut()) };
}

/// While alive, output functions print in the canonical style; restores the
/// session's style when dropped (on error too).
pub struct CanonicalOutput {
    date_style: c_int,
    interval_style: c_int,
    float_digits: c_int,
    bytea: c_int,
    timezone: *mut pg_sys::pg_tz,
}

impl CanonicalOutput {
    pub fn enter() -> Self {
        unsafe {
            let utc = UTC.with(|u| {
                if u.get().is_null() {
                    u.set(pg_sys::pg_tzset(c"UTC".as_ptr()));
                }
                u.get()
            });
            let saved = CanonicalOutput {
                date_style: pg_sys::DateStyle,
                interval_style: pg_sys::IntervalStyle,
                float_digits: pg_sys::extra_float_digits,
                bytea: bytea_output,
                timezone: pg_sys::session_timezone,
            };
            pg_sys::DateStyle = pg_sys::USE_ISO_DATES as c_int;
            pg_sys::IntervalStyle = pg_sys::INTSTYLE_POSTGRES as c_int;
            pg_sys::extra_float_digits = 1;
            bytea_output = BYTEA_OUTPUT_HEX;
            pg_sys::session_timezone = utc;
            saved
        }
    }
}

impl Drop for CanonicalOutput {
    fn drop(&mut self) {
        unsafe {
            pg_sys::DateStyle = self.date_style;
            pg_sys::IntervalStyle = self.interval_style;
            pg_sys::extra_float_digits = self.float_digits;
            bytea_output = self.bytea;
            pg_sys::session_timezone = self.timezone;
        }
    }
}
