//! Retention policy glue: the category table and `audit.set_retention`.
//! The rules live in `audit_core::retention`; the moving and deleting of rows
//! is SQL in `sql/retention.sql`.

use audit_core::actions::{
    category_of, Category, APPLICATION_ACTIONS, CAPTURE_ACTIONS, WORKER_ACTIONS,
};
use audit_core::retention::{interval_months, range_of, Keep, POLICIES};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::json;

use crate::context::Context;
use crate::emit::{Emitter, Origin};
use crate::errors::raise;

/// Every retention category with its documented actions, default and range (months; NULL max = no limit).
#[allow(clippy::type_complexity)] // pgrx needs the row type spelled out
#[pg_extern(immutable, parallel_safe)]
fn retention_categories() -> TableIterator<
    'static,
    (
        name!(category, String),
        name!(actions, Vec<String>),
        name!(default_months, Option<i32>),
        name!(min_months, i32),
        name!(max_months, Option<i32>),
    ),
> {
    TableIterator::new(POLICIES.iter().map(|p| {
        let mut actions: Vec<String> = APPLICATION_ACTIONS
            .iter()
            .filter(|(_, c)| *c == p.category)
            .map(|(a, _)| a.to_string())
            .collect();
        if p.category == Category::RecordChanges {
            actions.extend(CAPTURE_ACTIONS.iter().map(|a| a.to_string()));
        }
        actions.extend(
            WORKER_ACTIONS
                .iter()
                .filter(|a| category_of(a) == p.category)
                .map(|a| a.to_string()),
        );
        let months = |k: Keep| match k {
            Keep::Months(m) => Some(m as i32),
            Keep::Forever => None,
        };
        (
            p.category.name().to_owned(),
            actions,
            months(p.default),
            p.min_months as i32,
            p.max_months.map(|m| m as i32),
        )
    }))
}

/// The retention category of an action (custom actions count as record changes).
#[pg_extern(immutable, parallel_safe, strict)]
fn action_category(action: &str) -> &'static str {
    category_of(action).name()
}

fn parse_keep(keep: &str) -> Keep {
    if keep.trim().eq_ignore_ascii_case("infinity") {
        return Keep::Forever;
    }
    let interval: Interval =
        Spi::get_one_with_args::<Interval>("SELECT audit._interval_or_null($1)", &[keep.into()])
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                raise(
                PgSqlErrorCode::ERRCODE_INVALID_DATETIME_FORMAT,
                format!("invalid retention {keep:?}"),
                "Give an interval such as '18 months' or '7 years', or 'infinity' where allowed.",
            )
            });
    match interval_months(interval.months(), interval.days(), interval.micros()) {
        Ok(months) => Keep::Months(months),
        Err(message) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            "Give an interval such as '18 months' or '7 years', or 'infinity' where allowed.",
        ),
    }
}

/// Sets how long a category is kept; recorded as a CONFIG_CHANGE event.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
fn set_retention(
    category: &str,
    keep: &str,
) -> TableIterator<'static, (name!(category, String), name!(keep, String))> {
    let is_admin =
        Spi::get_one::<bool>("SELECT pg_has_role(audit._caller(), 'audit_admin', 'MEMBER')")
            .ok()
            .flatten()
            .unwrap_or(false);
    if !is_admin {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to change retention policies",
            "Only members of audit_admin may change retention.",
        );
    }
    let Some(category) = Category::parse(category) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown retention category {category:?}"),
            format!(
                "Use one of {}.",
                POLICIES.map(|p| p.category.name()).join(", ")
            ),
        )
    };
    let range = range_of(category);
    let keep = parse_keep(keep);
    if let Err(message) = range.check(keep) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            format!("Allowed for {}: {}.", category.name(), range.allowed()),
        );
    }
    let months = match keep {
        Keep::Months(m) => Some(m as i32),
        Keep::Forever => None,
    };
    // Described like the new value: the view's `keep` is interval text, which
    // follows the session's IntervalStyle.
    let previous = Spi::get_one_with_args::<i32>(
        "SELECT keep_months FROM audit.retention_policies WHERE category = $1",
        &[category.name().into()],
    )
    .ok()
    .flatten()
    .map_or(Keep::Forever, |m| Keep::Months(m as u32))
    .describe();
    Spi::run_with_args(
        "INSERT INTO audit.retention_settings (category, keep_months, updated_at, updated_by)
         VALUES ($1, $2, now(), audit._caller()::regrole::text)
         ON CONFLICT (category) DO UPDATE SET keep_months = excluded.keep_months,
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        &[category.name().into(), months.into()],
    )
    .unwrap_or_else(|e| panic!("audit: saving the retention policy failed: {e}"));
    let context = Context::current();
    let metadata = json!({"setting": "retention", "category": category.name(), "old": previous, "new": keep.describe()});
    let serde_json::Value::Object(metadata) = metadata else {
        unreachable!("built as an object")
    };
    let mut emitter = Emitter::new(
        context,
        "CONFIG_CHANGE",
        Some("audit.retention_policies"),
        metadata,
        Origin::Application,
    );
    emitter.push(Some(category.name()), None);
    emitter.flush();
    TableIterator::once((category.name().to_owned(), keep.describe()))
}
