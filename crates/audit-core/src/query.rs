//! The search syntax: `user:sales.admin action:UPDATE entity:Opportunity
//! field:stage old_value:Qualification ip:203.0.113.0/24 date:>2026-05-01`.
//!
//! [`parse`] turns a query into terms; [`compile`] turns terms into a SQL
//! condition over `audit._event_rows r` (events with their chunk's columns)
//! whose values are all parameters: the condition refers to them as `$1[n]`
//! (one `text[]` parameter), so no value of the query is ever spliced into SQL
//! text. A record id or bare word also filters chunk rows (through the entity
//! index, or the chunk's text), before their events are unnested.
//!
//! Same key repeated: OR. Different keys: AND. `-key:value`: NOT (rows whose
//! column is NULL are kept). Bare words: full-text match (all must match).

use std::net::IpAddr;

use crate::context::normalize_source;

pub const KEYS: [&str; 13] = [
    "user",
    "role",
    "action",
    "entity",
    "id",
    "field",
    "old_value",
    "new_value",
    "source",
    "ip",
    "org",
    "session",
    "date",
];

/// A query error: where (1-based character position), what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchError {
    pub position: usize,
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

fn error<T>(
    position: usize,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> Result<T, SearchError> {
    Err(SearchError {
        position,
        message: message.into(),
        hint: hint.into(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// `None` for a bare word.
    pub key: Option<&'static str>,
    pub value: String,
    pub negated: bool,
    /// 1-based character position of the term, and of its value.
    pub position: usize,
    pub value_position: usize,
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            current.push(
                (previous[j] + usize::from(ca != *cb))
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

fn key_hint(given: &str) -> String {
    let closest = KEYS
        .iter()
        .map(|k| (edit_distance(given, k), *k))
        .min()
        .filter(|(d, _)| *d <= 2);
    match closest {
        Some((_, key)) => format!("Did you mean {key}:? Keys: {}.", KEYS.join(", ")),
        None => format!("Keys: {}.", KEYS.join(", ")),
    }
}

/// Reads a value starting at `chars[i]`: quoted (with `\"` and `\\`) or up to whitespace.
fn read_value(chars: &[char], mut i: usize) -> Result<(String, usize), SearchError> {
    let mut value = String::new();
    if chars.get(i) == Some(&'"') {
        let open = i + 1;
        i += 1;
        loop {
            match chars.get(i) {
                None => {
                    return error(
                        open,
                        "unterminated quote",
                        "Close the quoted value with \".",
                    )
                }
                Some('"') => return Ok((value, i + 1)),
                Some('\\') if matches!(chars.get(i + 1), Some('"') | Some('\\')) => {
                    value.push(chars[i + 1]);
                    i += 2;
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
    }
    while let Some(c) = chars.get(i).filter(|c| !c.is_whitespace()) {
        value.push(*c);
        i += 1;
    }
    Ok((value, i))
}

/// Splits a query into terms, checking keys and quoting.
pub fn parse(query: &str) -> Result<Vec<Term>, SearchError> {
    let chars: Vec<char> = query.chars().collect();
    let mut terms = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let negated = chars[i] == '-' && chars.get(i + 1).is_some_and(|c| c.is_alphabetic());
        let body = if negated { i + 1 } else { i };
        let mut j = body;
        while chars
            .get(j)
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
        {
            j += 1;
        }
        if j > body && chars.get(j) == Some(&':') {
            let given: String = chars[body..j].iter().collect::<String>().to_lowercase();
            let Some(key) = KEYS.iter().copied().find(|k| *k == given) else {
                return error(
                    start + 1,
                    format!("unknown search key \"{given}\""),
                    key_hint(&given),
                );
            };
            let (value, end) = read_value(&chars, j + 1)?;
            if value.is_empty() {
                return error(
                    j + 2,
                    format!("{key}: needs a value"),
                    format!("Write {key}:value, or quote it: {key}:\"two words\"."),
                );
            }
            terms.push(Term {
                key: Some(key),
                value,
                negated,
                position: start + 1,
                value_position: j + 2,
            });
            i = end;
        } else {
            let (value, end) = read_value(&chars, i)?;
            if !value.is_empty() {
                terms.push(Term {
                    key: None,
                    value,
                    negated: false,
                    position: start + 1,
                    value_position: start + 1,
                });
            }
            i = end;
        }
    }
    Ok(terms)
}

/// The compiled condition and its parameter values (`$1[1]`, `$1[2]`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledSearch {
    pub condition: String,
    pub params: Vec<String>,
    /// The query names a record (`id:`): its events are few, and are best
    /// found through the entity index before they are sorted (left to itself,
    /// the planner may walk the id index newest first and filter every chunk).
    pub record_lookup: bool,
}

struct Compiler {
    params: Vec<String>,
}

impl Compiler {
    fn param(&mut self, value: impl Into<String>) -> String {
        self.params.push(value.into());
        format!("$1[{}]", self.params.len())
    }
}

fn like_escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        _ => 28,
    }
}

const DATE_FORMS: &str = "Use today, 7d/30d/90d (any Nd), a day YYYY-MM-DD, a timestamp YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|+HH:MM], \
                          >X, >=X, <X, <=X or X..Y.";

/// A day or timestamp: (text for PostgreSQL, is it a whole day).
fn parse_instant(text: &str, position: usize) -> Result<(String, bool), SearchError> {
    let bad = |what: &str| {
        error(
            position,
            format!("invalid date \"{text}\": {what}"),
            DATE_FORMS,
        )
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (day, time) = match text.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let parts: Vec<&str> = day.split('-').collect();
    if parts.len() != 3 || !digits(parts[0], 4) || !digits(parts[1], 2) || !digits(parts[2], 2) {
        return bad("expected YYYY-MM-DD");
    }
    let (y, m, d): (u32, u32, u32) = (
        parts[0].parse().unwrap_or(0),
        parts[1].parse().unwrap_or(0),
        parts[2].parse().unwrap_or(0),
    );
    if !(1..=12).contains(&m) {
        return bad("month must be 01 to 12");
    }
    if d == 0 || d > days_in_month(y, m) {
        return bad(&format!(
            "day must be 01 to {:02} in that month",
            days_in_month(y, m)
        ));
    }
    let Some(time) = time else {
        return Ok((day.to_owned(), true));
    };
    let (clock, zone) = match time.find(['Z', 'z', '+', '-']) {
        Some(at) => (&time[..at], Some(&time[at..])),
        None => (time, None),
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) => (hms, Some(f)),
        None => (clock, None),
    };
    let fields: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&fields.len()) || fields.iter().any(|f| !digits(f, 2)) {
        return bad("expected a time HH:MM or HH:MM:SS");
    }
    let limits = [24, 60, 60];
    if fields
        .iter()
        .zip(limits)
        .any(|(f, limit)| f.parse::<u32>().unwrap_or(99) >= limit)
    {
        return bad("hour must be below 24, minutes and seconds below 60");
    }
    if fraction
        .is_some_and(|f| f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("fractional seconds take 1 to 6 digits");
    }
    if let Some(zone) = zone {
        let ok = zone.eq_ignore_ascii_case("z")
            || (zone.len() == 6
                && zone[1..3].bytes().all(|b| b.is_ascii_digit())
                && &zone[3..4] == ":"
                && zone[4..6].bytes().all(|b| b.is_ascii_digit())
                && zone[1..3].parse::<u32>().unwrap_or(99) <= 14
                && zone[4..6].parse::<u32>().unwrap_or(99) < 60);
        if !ok {
            return bad("time zone must be Z or +HH:MM / -HH:MM");
        }
    }
    Ok((text.to_owned(), false))
}

impl Compiler {
    /// `r.occurred_at <op> X`, X a day or a timestamp.
    fn bound(&mut self, op: &str, text: &str, position: usize) -> Result<String, SearchError> {
        let (instant, is_day) = parse_instant(text, position)?;
        let p = self.param(instant);
        Ok(match (op, is_day) {
            // A day counts whole: after it means from the next day on.
            (">", true) => format!("r.occurred_at >= ({p}::date + 1)::timestamptz"),
            (">=", true) => format!("r.occurred_at >= {p}::date::timestamptz"),
            ("<", true) => format!("r.occurred_at < {p}::date::timestamptz"),
            ("<=", true) => format!("r.occurred_at < ({p}::date + 1)::timestamptz"),
            (op, _) => format!("r.occurred_at {op} {p}::timestamptz"),
        })
    }

    fn date(&mut self, term: &Term) -> Result<String, SearchError> {
        let v = term.value.trim();
        let pos = term.value_position;
        if v.eq_ignore_ascii_case("today") {
            return Ok("r.occurred_at >= date_trunc('day', now())".into());
        }
        if let Some(n) = v
            .strip_suffix(['d', 'D'])
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            let days: u32 = n.parse().unwrap_or(0);
            if !(1..=3650).contains(&days) {
                return error(
                    pos,
                    format!("invalid date range \"{v}\": days must be 1 to 3650"),
                    DATE_FORMS,
                );
            }
            let p = self.param(format!("{days} days"));
            return Ok(format!("r.occurred_at >= now() - {p}::interval"));
        }
        for op in [">=", "<=", ">", "<"] {
            if let Some(rest) = v.strip_prefix(op) {
                return self.bound(op, rest, pos + op.len());
            }
        }
        if let Some((from, to)) = v.split_once("..") {
            let lower = self.bound(">=", from, pos)?;
            let upper = self.bound("<=", to, pos + from.chars().count() + 2)?;
            return Ok(format!("({lower} AND {upper})"));
        }
        let (instant, is_day) = parse_instant(v, pos)?;
        let p = self.param(instant);
        Ok(if is_day {
            format!("(r.occurred_at >= {p}::date::timestamptz AND r.occurred_at < ({p}::date + 1)::timestamptz)")
        } else {
            format!("r.occurred_at = {p}::timestamptz")
        })
    }

    fn ip(&mut self, term: &Term) -> Result<String, SearchError> {
        let v = term.value.trim();
        let hint = "Give an address (203.0.113.42, 2001:db8::1) or a network (203.0.113.0/24).";
        let (addr, prefix) = match v.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (v, None),
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            return error(
                term.value_position,
                format!("invalid IP address \"{v}\""),
                hint,
            );
        };
        let Some(prefix) = prefix else {
            let p = self.param(v);
            return Ok(format!("r.ip = {p}::inet"));
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let Some(bits) = prefix.parse::<u32>().ok().filter(|b| *b <= max) else {
            return error(
                term.value_position,
                format!("invalid network \"{v}\": prefix must be 0 to {max}"),
                hint,
            );
        };
        let network = match ip {
            IpAddr::V4(a) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        };
        if network != ip {
            return error(
                term.value_position,
                format!("invalid network \"{v}\": host bits are set"),
                format!("Did you mean {network}/{bits}?"),
            );
        }
        let p = self.param(v);
        Ok(format!("r.ip <<= {p}::inet"))
    }

    fn term(&mut self, term: &Term, fields: &[String]) -> Result<String, SearchError> {
        let v = term.value.as_str();
        Ok(match term.key {
            None => {
                let p = self.param(format!("%{}%", like_escape(v)));
                // The chunk's text first (any of its events may match), then the event's.
                format!(
                    "(r.actor ILIKE {p} OR r.entity_type ILIKE {p} OR r.action ILIKE {p} OR r.metadata::text ILIKE {p} \
                     OR array_to_string(r.chunk_entity_ids, ' ') ILIKE {p} OR array_to_string(r.chunk_changes, ' ') ILIKE {p}) \
                     AND (r.actor ILIKE {p} OR r.entity_type ILIKE {p} OR r.entity_id ILIKE {p} OR r.action ILIKE {p} \
                     OR r.changes::text ILIKE {p} OR r.metadata::text ILIKE {p})"
                )
            }
            Some("user") => match v.strip_suffix('*') {
                Some(prefix) => format!(
                    "r.actor LIKE {}",
                    self.param(format!("{}%", like_escape(prefix)))
                ),
                None => format!("r.actor = {}", self.param(v)),
            },
            Some("role") => format!("lower(r.actor_role) = lower({})", self.param(v)),
            Some("action") => format!("r.action = upper({})", self.param(v)),
            // audit._entity_types() resolves the name (any case, or a table name)
            // to stored entity types. As a sub-select it runs once per query:
            // the type is a filter on each row the entity_id index returns.
            Some("entity") => format!(
                "r.entity_type = ANY ((SELECT audit._entity_types({}))::text[])",
                self.param(v)
            ),
            // The entity indexes find the chunks (a lone event's id hash, or
            // the runs of several-event chunks; this session's events not
            // stored yet have no chunk id); the event's own id is checked after.
            // The runs are read once per query, in a sub-select.
            Some("id") => {
                let p = self.param(v);
                format!(
                    "((r.chunk_events = 1 AND audit.entity_hash(r.chunk_entity_ids[1]) = audit.entity_hash({p})) \
                     OR r.chunk_id = ANY ((SELECT audit._entity_chunks({p}))::bigint[]) OR r.chunk_id IS NULL) \
                     AND r.entity_id = {p}"
                )
            }
            Some("field") => format!("r.changes ? {}", self.param(v)),
            Some(side @ ("old_value" | "new_value")) => {
                let side = if side == "old_value" { "old" } else { "new" };
                let p = self.param(v);
                let restriction = if fields.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> = fields.iter().map(|f| self.param(f.clone())).collect();
                    format!(" AND c.field IN ({})", list.join(", "))
                };
                format!(
                    "EXISTS (SELECT 1 FROM jsonb_each(r.changes) AS c(field, change) WHERE c.change->>'{side}' = {p}{restriction})"
                )
            }
            Some("source") => match normalize_source(v) {
                Ok(source) => format!("r.source = {}", self.param(source)),
                Err(message) => {
                    return error(
                        term.value_position,
                        message,
                        "Sources: UI, API, AUTOMATION, IMPORT, SYSTEM, AI, SQL.",
                    )
                }
            },
            Some("ip") => self.ip(term)?,
            Some("org") => format!("r.org_id = {}", self.param(v)),
            Some("session") => format!("r.session_id = {}", self.param(v)),
            Some("date") => self.date(term)?,
            Some(other) => unreachable!("parse accepts only known keys, not {other}"),
        })
    }
}

/// Compiles a query into a condition over `audit._event_rows r`; values go to `params`.
pub fn compile(query: &str) -> Result<CompiledSearch, SearchError> {
    let terms = parse(query)?;
    let fields: Vec<String> = terms
        .iter()
        .filter(|t| t.key == Some("field") && !t.negated)
        .map(|t| t.value.clone())
        .collect();
    let mut compiler = Compiler { params: Vec::new() };
    // Group same key and sign, in first-appearance order.
    type Group = (Option<&'static str>, bool);
    let mut groups: Vec<(Group, Vec<String>)> = Vec::new();
    for term in &terms {
        let sql = compiler.term(term, &fields)?;
        let group = (term.key, term.negated);
        match groups
            .iter_mut()
            .find(|(g, _)| *g == group && group.0.is_some())
        {
            Some((_, conditions)) => conditions.push(sql),
            None => groups.push((group, vec![sql])),
        }
    }
    let mut conjuncts = Vec::new();
    for ((_, negated), conditions) in groups {
        if negated {
            conjuncts.extend(conditions.into_iter().map(|c| format!("({c}) IS NOT TRUE")));
        } else if conditions.len() == 1 {
            conjuncts.extend(conditions);
        } else {
            conjuncts.push(format!("({})", conditions.join(" OR ")));
        }
    }
    let condition = if conjuncts.is_empty() {
        "true".to_owned()
    } else {
        conjuncts.join(" AND ")
    };
    Ok(CompiledSearch {
        condition,
        params: compiler.params,
        record_lookup: terms.iter().any(|t| t.key == Some("id") && !t.negated),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(q: &str) -> CompiledSearch {
        compile(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    fn err(q: &str) -> SearchError {
        compile(q).expect_err(q)
    }

    #[test]
    fn the_documented_example() {
        let s = c("user:sales.admin action:UPDATE entity:Opportunity field:stage old_value:Qualification ip:203.0.113.0/24 date:>2026-05-01");
        assert_eq!(
            s.params,
            [
                "sales.admin",
                "UPDATE",
                "Opportunity",
                "stage",
                "Qualification",
                "stage",
                "203.0.113.0/24",
                "2026-05-01"
            ]
        );
        assert!(s.condition.starts_with(
            "r.actor = $1[1] AND r.action = upper($1[2]) AND r.entity_type = ANY ((SELECT audit._entity_types($1[3]))::text[])"
        ));
        assert!(s.condition.contains("r.changes ? $1[4]"));
        assert!(s
            .condition
            .contains("c.change->>'old' = $1[5] AND c.field IN ($1[6])"));
        assert!(s.condition.contains("r.ip <<= $1[7]::inet"));
        assert!(s
            .condition
            .ends_with("r.occurred_at >= ($1[8]::date + 1)::timestamptz"));
    }

    #[test]
    fn repeated_keys_or_different_keys_and() {
        let s = c("user:ann user:bob action:DELETE");
        assert_eq!(
            s.condition,
            "(r.actor = $1[1] OR r.actor = $1[2]) AND r.action = upper($1[3])"
        );
        assert_eq!(s.params, ["ann", "bob", "DELETE"]);
    }

    #[test]
    fn naming_a_record_is_a_record_lookup() {
        assert!(c("entity:contacts id:42").record_lookup);
        assert!(!c("entity:contacts -id:42").record_lookup);
        assert!(!c("user:ann").record_lookup);
    }

    #[test]
    fn negation_keeps_nulls() {
        let s = c("-source:api -user:bot");
        assert_eq!(
            s.condition,
            "(r.source = $1[1]) IS NOT TRUE AND (r.actor = $1[2]) IS NOT TRUE"
        );
        assert_eq!(s.params, ["API", "bot"]);
    }

    #[test]
    fn every_key_compiles() {
        let cases = [
            ("user:sales.*", "r.actor LIKE $1[1]", vec!["sales.%"]),
            ("user:a_b%*", "r.actor LIKE $1[1]", vec!["a\\_b\\%%"]),
            ("role:Admin", "lower(r.actor_role) = lower($1[1])", vec!["Admin"]),
            (
                "id:opp_1",
                "((r.chunk_events = 1 AND audit.entity_hash(r.chunk_entity_ids[1]) = audit.entity_hash($1[1])) \
                 OR r.chunk_id = ANY ((SELECT audit._entity_chunks($1[1]))::bigint[]) OR r.chunk_id IS NULL) \
                 AND r.entity_id = $1[1]",
                vec!["opp_1"],
            ),
            ("field:stage", "r.changes ? $1[1]", vec!["stage"]),
            ("new_value:Won", "EXISTS (SELECT 1 FROM jsonb_each(r.changes) AS c(field, change) WHERE c.change->>'new' = $1[1])", vec!["Won"]),
            ("source:automation", "r.source = $1[1]", vec!["AUTOMATION"]),
            ("ip:203.0.113.42", "r.ip = $1[1]::inet", vec!["203.0.113.42"]),
            ("ip:2001:db8::/32", "r.ip <<= $1[1]::inet", vec!["2001:db8::/32"]),
            ("org:org_1", "r.org_id = $1[1]", vec!["org_1"]),
            ("session:s1", "r.session_id = $1[1]", vec!["s1"]),
            ("ACTION:login", "r.action = upper($1[1])", vec!["login"]),
        ];
        for (q, condition, params) in cases {
            let s = c(q);
            assert_eq!(s.condition, condition, "{q}");
            assert_eq!(s.params, params, "{q}");
        }
        assert_eq!(
            c("entity:opportunities").condition,
            "r.entity_type = ANY ((SELECT audit._entity_types($1[1]))::text[])"
        );
    }

    #[test]
    fn date_forms() {
        let cases = [
            ("date:today", "r.occurred_at >= date_trunc('day', now())", vec![]),
            ("date:7d", "r.occurred_at >= now() - $1[1]::interval", vec!["7 days"]),
            ("date:90D", "r.occurred_at >= now() - $1[1]::interval", vec!["90 days"]),
            ("date:>=2026-05-01", "r.occurred_at >= $1[1]::date::timestamptz", vec!["2026-05-01"]),
            ("date:<2026-05-01", "r.occurred_at < $1[1]::date::timestamptz", vec!["2026-05-01"]),
            ("date:<=2026-05-01", "r.occurred_at < ($1[1]::date + 1)::timestamptz", vec!["2026-05-01"]),
            ("date:>2026-05-01T10:30:00Z", "r.occurred_at > $1[1]::timestamptz", vec!["2026-05-01T10:30:00Z"]),
            ("date:<=2026-05-01T10:30:00.123456+02:00", "r.occurred_at <= $1[1]::timestamptz", vec!["2026-05-01T10:30:00.123456+02:00"]),
            ("date:2024-02-29", "(r.occurred_at >= $1[1]::date::timestamptz AND r.occurred_at < ($1[1]::date + 1)::timestamptz)", vec!["2024-02-29"]),
            ("date:2026-05-01T10:30", "r.occurred_at = $1[1]::timestamptz", vec!["2026-05-01T10:30"]),
            (
                "date:2026-05-01..2026-05-31",
                "(r.occurred_at >= $1[1]::date::timestamptz AND r.occurred_at < ($1[2]::date + 1)::timestamptz)",
                vec!["2026-05-01", "2026-05-31"],
            ),
        ];
        for (q, condition, params) in cases {
            let s = c(q);
            assert_eq!(s.condition, condition, "{q}");
            assert_eq!(s.params, params, "{q}");
        }
    }

    #[test]
    fn quoting_and_bare_words() {
        let s = c(r#"old_value:"Closed Won" "two \"words\"" acme"#);
        assert_eq!(s.params, ["Closed Won", "%two \"words\"%", "%acme%"]);
        assert!(s.condition.contains("r.changes::text ILIKE $1[2]"));
        assert!(s
            .condition
            .contains("array_to_string(r.chunk_changes, ' ') ILIKE $1[2]"));
        assert_eq!(s.condition.matches("ILIKE $1[3]").count(), 12);
        assert_eq!(c("50%_off").params, ["%50\\%\\_off%"]);
        assert_eq!(c("   ").condition, "true");
        assert_eq!(c("user:\"\\\\server\"").params, ["\\server"]);
    }

    #[test]
    fn values_never_reach_the_sql_text() {
        let q = r#"user:"x'; DROP TABLE audit.events; --" '; DELETE FROM t; -- id:1'or'1'='1 field:"a'b""#;
        let s = c(q);
        for needle in ["DROP", "DELETE", "'1'='1", "a'b"] {
            assert!(
                !s.condition.contains(needle),
                "{needle} leaked: {}",
                s.condition
            );
        }
        assert_eq!(s.params[0], "x'; DROP TABLE audit.events; --");
        assert!(s.params.contains(&"1'or'1'='1".to_owned()));
    }

    #[test]
    fn errors_name_the_position_and_the_fix() {
        let e = err("action:UPDATE usr:ann");
        assert_eq!(e.position, 15);
        assert_eq!(e.message, "unknown search key \"usr\"");
        assert!(e.hint.starts_with("Did you mean user:?"), "{}", e.hint);
        let e = err("colour:red");
        assert!(e.hint.starts_with("Keys: user, role"), "{}", e.hint);
        let e = err("user: action:x");
        assert_eq!((e.position, e.message.as_str()), (6, "user: needs a value"));
        let e = err(r#"old_value:"Closed Won"#);
        assert_eq!((e.position, e.message.as_str()), (11, "unterminated quote"));
        let e = err("date:2026-02-30");
        assert_eq!(e.position, 6);
        assert!(e.message.contains("day must be 01 to 28"), "{}", e.message);
        assert!(e.hint.contains("YYYY-MM-DD"));
        assert!(err("date:2026-13-01")
            .message
            .contains("month must be 01 to 12"));
        assert!(err("date:>2026-05-01T25:00")
            .message
            .contains("hour must be below 24"));
        assert_eq!(err("date:>2026-5-1").position, 7);
        assert!(err("date:2026-05-01T10:00+5").message.contains("time zone"));
        assert!(err("date:0d").message.contains("1 to 3650"));
        assert!(err("date:9999d").message.contains("1 to 3650"));
        assert!(err("date:2026-05-01..nope")
            .message
            .contains("invalid date \"nope\""));
        assert!(err("date:yesterday")
            .message
            .contains("expected YYYY-MM-DD"));
        let e = err("ip:203.0.113.7/24");
        assert_eq!(e.hint, "Did you mean 203.0.113.0/24?");
        assert!(err("ip:300.1.1.1").message.contains("invalid IP address"));
        assert!(err("ip:10.0.0.0/33")
            .message
            .contains("prefix must be 0 to 32"));
        assert!(err("source:web").message.contains("invalid audit source"));
        assert_eq!(err("x source:web").position, 10);
    }

    #[test]
    fn leap_years() {
        assert!(compile("date:2024-02-29").is_ok());
        assert!(compile("date:2100-02-29").is_err());
        assert!(compile("date:2000-02-29").is_ok());
    }

    #[test]
    fn parse_keeps_positions() {
        let terms = parse("  -user:ann \"a b\"").unwrap();
        assert_eq!(
            terms[0],
            Term {
                key: Some("user"),
                value: "ann".into(),
                negated: true,
                position: 3,
                value_position: 9
            }
        );
        assert_eq!(terms[1].key, None);
        assert_eq!(terms[1].value, "a b");
        // A leading dash on a bare word is part of the word.
        assert_eq!(parse("-5").unwrap()[0].value, "-5");
    }

    #[test]
    fn edit_distance_suggests_keys() {
        assert_eq!(edit_distance("usr", "user"), 1);
        assert!(key_hint("sesion").starts_with("Did you mean session:?"));
        assert!(key_hint("colour").starts_with("Keys:"));
    }
}
