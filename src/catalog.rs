//! Per-backend facts about the extension's own objects: looked up once, kept
//! until a relcache invalidation says the extension may have changed.

use std::cell::RefCell;
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

pub struct Catalog {
    pub chunks_relid: pg_sys::Oid,
    /// `inet_client_addr()`, NULL over a unix socket.
    pub client_addr: Option<String>,
}

thread_local! {
    static CATALOG: RefCell<Option<Rc<Catalog>>> = const { RefCell::new(None) };
}

/// Forgets the facts if `relid` (InvalidOid: anything) is one of the extension's relations.
/// Returns the chunk table's oid as it was known, for caches keyed on it.
pub fn invalidate(relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    CATALOG.with(|c| {
        let Ok(mut slot) = c.try_borrow_mut() else {
            return None;
        };
        let chunks = slot.as_ref().map(|cat| cat.chunks_relid);
        let ours = slot
            .as_ref()
            .is_some_and(|cat| relid == pg_sys::InvalidOid || relid == cat.chunks_relid);
        if ours {
            *slot = None;
        }
        chunks
    })
}

fn load() -> Catalog {
    let (chunks, client_addr) = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT 'audit.event_chunks'::regclass::oid, inet_client_addr()",
                None,
                &[],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<pg_sys::Oid>(1)?,
            row.get::<pgrx::datum::Inet>(2)?.map(|ip| ip.0),
        ))
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("audit storage is missing: {e}"),
            "Reinstall the extension: DROP EXTENSION audit; CREATE EXTENSION audit;",
        )
    });
    Catalog {
        chunks_relid: chunks.expect("regclass is never null"),
        client_addr,
    }
}

pub fn get() -> Rc<Catalog> {
    if let Some(found) = CATALOG.with(|c| c.borrow().clone()) {
        return found;
    }
    let loaded = Rc::new(load());
    CATALOG.with(|c| *c.borrow_mut() = Some(loaded.clone()));
    loaded
}
