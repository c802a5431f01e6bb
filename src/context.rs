//! Who is acting: what `audit.set_context` set, else the session's defaults.
//!
//! Resolving it checks and normalizes the IP and the metadata, and looks up
//! the role name, so the result is kept per backend and rebuilt only when a
//! setting, the role or `application_name` differs from the last statement's.

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::net::IpAddr;
use std::rc::Rc;

use audit_core::context::{normalize_source, source_hint, DEFAULT_SOURCE};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};

use crate::errors::raise;
use crate::gucs::{self, CONTEXT_GUCS};

/// Who is acting, as recorded in every event of a statement.
pub struct Context {
    pub actor: String,
    pub actor_role: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    pub source: &'static str,
    pub org_id: Option<String>,
    pub metadata: Map<String, Value>,
}

/// The raw inputs a `Context` is resolved from: borrowed from PostgreSQL
/// while comparing (valid until the next SET), owned once cached.
#[derive(PartialEq, Eq)]
struct Inputs<T> {
    user: pg_sys::Oid,
    settings: [Option<T>; 8],
    application_name: Option<T>,
}

/// The last context resolved, with what it was resolved from.
type Resolved = (Inputs<Vec<u8>>, Rc<Context>);

thread_local! {
    static LAST: RefCell<Option<Resolved>> = const { RefCell::new(None) };
}

unsafe fn raw<'a>(ptr: *const c_char) -> Option<&'a [u8]> {
    (!ptr.is_null())
        .then(|| CStr::from_ptr(ptr).to_bytes())
        .filter(|b| !b.is_empty())
}

impl Inputs<&[u8]> {
    unsafe fn current() -> Self {
        Inputs {
            user: pg_sys::GetUserId(),
            settings: CONTEXT_GUCS.map(|(_, setting, _)| raw(*setting.as_ptr())),
            application_name: raw(pg_sys::application_name),
        }
    }

    fn matches(&self, cached: &Inputs<Vec<u8>>) -> bool {
        let same = |a: &Option<&[u8]>, b: &Option<Vec<u8>>| *a == b.as_deref();
        self.user == cached.user
            && same(&self.application_name, &cached.application_name)
            && self
                .settings
                .iter()
                .zip(&cached.settings)
                .all(|(a, b)| same(a, b))
    }

    fn to_owned(&self) -> Inputs<Vec<u8>> {
        Inputs {
            user: self.user,
            settings: self.settings.map(|s| s.map(<[u8]>::to_vec)),
            application_name: self.application_name.map(<[u8]>::to_vec),
        }
    }
}

impl Context {
    /// The context in force now.
    pub fn current() -> Rc<Context> {
        let inputs = unsafe { Inputs::current() };
        let hit = LAST.with(|last| {
            last.borrow()
                .as_ref()
                .filter(|(cached, _)| inputs.matches(cached))
                .map(|(_, context)| context.clone())
        });
        if let Some(context) = hit {
            return context;
        }
        let context = Rc::new(Context::resolve());
        LAST.with(|last| *last.borrow_mut() = Some((inputs.to_owned(), context.clone())));
        context
    }

    fn resolve() -> Context {
        let actor = gucs::text(&gucs::ACTOR).unwrap_or_else(|| unsafe {
            CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false))
                .to_string_lossy()
                .into_owned()
        });
        let ip = match gucs::text(&gucs::IP) {
            Some(ip) => Some(canonical_ip(&ip)),
            None => crate::catalog::get().client_addr.clone(),
        };
        let user_agent = gucs::text(&gucs::USER_AGENT).or_else(|| unsafe {
            raw(pg_sys::application_name).map(|b| String::from_utf8_lossy(b).into_owned())
        });
        let source = gucs::text(&gucs::SOURCE).map_or(DEFAULT_SOURCE, |s| checked_source(&s));
        let metadata = gucs::text(&gucs::METADATA)
            .map(|m| parse_metadata(&jsonb_normalized(&m)))
            .unwrap_or_default();
        Context {
            actor,
            actor_role: gucs::text(&gucs::ACTOR_ROLE),
            ip,
            user_agent,
            session_id: gucs::text(&gucs::SESSION_ID),
            source,
            org_id: gucs::text(&gucs::ORG_ID),
            metadata,
        }
    }
}

/// `text` as PostgreSQL prints it after reading it as type `type_oid`
/// (how `inet` and `jsonb` values look once stored).
fn text_through_type(text: &str, type_oid: pg_sys::Oid) -> String {
    let cstr = std::ffi::CString::new(text).expect("settings hold no NUL");
    unsafe {
        let (mut input_fn, mut io_param, mut output_fn, mut is_varlena) = (
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            false,
        );
        pg_sys::getTypeInputInfo(type_oid, &mut input_fn, &mut io_param);
        pg_sys::getTypeOutputInfo(type_oid, &mut output_fn, &mut is_varlena);
        let value = pg_sys::OidInputFunctionCall(input_fn, cstr.as_ptr().cast_mut(), io_param, -1);
        let out = pg_sys::OidOutputFunctionCall(output_fn, value);
        CStr::from_ptr(out).to_string_lossy().into_owned()
    }
}

/// Checks an IP address or CIDR and returns PostgreSQL's text form of it.
pub fn canonical_ip(text: &str) -> String {
    let trimmed = text.trim();
    let (addr, prefix) = match trimmed.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (trimmed, None),
    };
    let valid = match addr.parse::<IpAddr>() {
        Ok(ip) => prefix.is_none_or(|p| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            p.parse::<u8>().is_ok_and(|bits| bits <= max)
        }),
        Err(_) => false,
    };
    if !valid {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!("invalid audit ip {text:?}"),
            "Give an IPv4 or IPv6 address such as 203.0.113.42 or 2001:db8::1.",
        );
    }
    text_through_type(trimmed, pg_sys::INETOID)
}

/// Parses a metadata JSON object (as `jsonb` prints it) or raises a clear error.
pub fn parse_metadata(text: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "audit metadata must be a JSON object",
            r#"Pass an object such as '{"conversation_id": "c_42"}'."#,
        ),
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            format!("audit metadata is not valid JSON: {e}"),
            r#"Pass an object such as '{"conversation_id": "c_42"}'."#,
        ),
    }
}

/// Normalizes JSON text the way `jsonb` stores it (numbers, duplicate keys).
fn jsonb_normalized(text: &str) -> String {
    text_through_type(text, pg_sys::JSONBOID)
}

pub fn checked_source(text: &str) -> &'static str {
    normalize_source(text).unwrap_or_else(|msg| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            msg,
            source_hint(),
        )
    })
}
