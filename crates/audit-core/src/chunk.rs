//! Chunks: the events of one statement (up to [`CHUNK_CAPACITY`]) with the
//! fields they share stored once.
//!
//! Capture writes a chunk into the WAL as one transactional message; the
//! materializer decodes it after the transaction commits and stores it as one
//! row of `audit.event_chunks`. Event `i` of a chunk has id `first_id + i`:
//! the id sequence advances by `CHUNK_CAPACITY`, one value per chunk.
//!
//! ```text
//! chunk   := "AC" version:u8 first_id:i64le occurred_at:i64le txid:u64le
//!            statement_id:opt_i64 text{10} count:u16le event{count}
//! event   := entity_id:text nfields:u16le field{nfields}   -- 0 fields: no change set
//! field   := name:text 0:u8 old:text new:text              -- updated
//!          | name:text 1:u8 new:text                       -- inserted
//!          | name:text 2:u8 old:text                       -- deleted
//!          | name:text 3:u8                                -- masked
//! text    := 0:u32le                                       -- NULL
//!          | (len + 1):u32le bytes[len]                     -- UTF-8
//! opt_i64 := 0:u8 | 1:u8 value:i64le
//! ```
//!
//! The ten shared texts, in order: action, entity_type, actor, actor_role, ip,
//! user_agent, session_id, source, org_id, metadata (canonical JSON). Fields
//! come sorted by name, as [`Changes`] keeps them.

use std::borrow::Cow;

use crate::canonical::EventFields;
use crate::changes::{Changes, FieldChange};

/// Events per chunk, and the step of the event id sequence.
pub const CHUNK_CAPACITY: usize = 100;

const MAGIC: &[u8; 2] = b"AC";
const VERSION: u8 = 1;

/// What the events of a chunk share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared<'a> {
    /// PostgreSQL timestamp (microseconds since 2000-01-01 UTC).
    pub occurred_at: i64,
    pub txid: u64,
    pub statement_id: Option<i64>,
    pub action: &'a str,
    pub entity_type: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub actor_role: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub source: Option<&'a str>,
    pub org_id: Option<&'a str>,
    /// Canonical JSON text.
    pub metadata: Option<&'a str>,
}

/// What differs between the events of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event<'a> {
    pub entity_id: Option<&'a str>,
    pub changes: Option<Changes<'a>>,
}

fn put_text(buf: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => buf.extend_from_slice(&0u32.to_le_bytes()),
        Some(s) => {
            buf.extend_from_slice(&(s.len() as u32 + 1).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// Encodes a chunk event by event, so capture needs no intermediate copies.
#[derive(Debug)]
pub struct ChunkWriter {
    buf: Vec<u8>,
    count_at: usize,
    count: u16,
}

impl ChunkWriter {
    /// Starts a chunk whose events are numbered from `first_id`.
    pub fn new(first_id: i64, shared: &Shared<'_>) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&first_id.to_le_bytes());
        buf.extend_from_slice(&shared.occurred_at.to_le_bytes());
        buf.extend_from_slice(&shared.txid.to_le_bytes());
        match shared.statement_id {
            None => buf.push(0),
            Some(id) => {
                buf.push(1);
                buf.extend_from_slice(&id.to_le_bytes());
            }
        }
        for text in [
            Some(shared.action),
            shared.entity_type,
            shared.actor,
            shared.actor_role,
            shared.ip,
            shared.user_agent,
            shared.session_id,
            shared.source,
            shared.org_id,
            shared.metadata,
        ] {
            put_text(&mut buf, text);
        }
        let count_at = buf.len();
        buf.extend_from_slice(&0u16.to_le_bytes());
        ChunkWriter {
            buf,
            count_at,
            count: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() >= CHUNK_CAPACITY
    }

    pub fn push(&mut self, entity_id: Option<&str>, changes: Option<&Changes<'_>>) {
        assert!(
            !self.is_full(),
            "a chunk holds at most {CHUNK_CAPACITY} events"
        );
        put_text(&mut self.buf, entity_id);
        let fields = changes.map_or(&[][..], |c| c.fields());
        self.buf
            .extend_from_slice(&(fields.len() as u16).to_le_bytes());
        for (name, change) in fields {
            put_text(&mut self.buf, Some(name));
            match change {
                FieldChange::Updated { old, new } => {
                    self.buf.push(0);
                    put_text(&mut self.buf, old.as_deref());
                    put_text(&mut self.buf, new.as_deref());
                }
                FieldChange::Inserted(new) => {
                    self.buf.push(1);
                    put_text(&mut self.buf, new.as_deref());
                }
                FieldChange::Deleted(old) => {
                    self.buf.push(2);
                    put_text(&mut self.buf, old.as_deref());
                }
                FieldChange::Masked => self.buf.push(3),
            }
        }
        self.count += 1;
    }

    /// The encoded chunk.
    pub fn finish(&mut self) -> &[u8] {
        self.buf[self.count_at..self.count_at + 2].copy_from_slice(&self.count.to_le_bytes());
        &self.buf
    }
}

/// Why bytes are not a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid audit chunk: {}", self.0)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| DecodeError(format!("truncated at byte {}", self.at)))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    fn text(&mut self) -> Result<Option<&'a str>, DecodeError> {
        match self.u32()? {
            0 => Ok(None),
            n => {
                let at = self.at;
                std::str::from_utf8(self.take(n as usize - 1)?)
                    .map(Some)
                    .map_err(|_| DecodeError(format!("text at byte {at} is not UTF-8")))
            }
        }
    }
}

/// A decoded chunk, borrowing its texts from the encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub first_id: i64,
    pub shared: Shared<'a>,
    pub events: Vec<Event<'a>>,
}

impl<'a> Chunk<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(2)? != MAGIC {
            return Err(DecodeError("not an audit chunk".into()));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError(format!(
                "version {version} (this build reads {VERSION})"
            )));
        }
        let first_id = r.i64()?;
        let occurred_at = r.i64()?;
        let txid = r.u64()?;
        let statement_id = match r.u8()? {
            0 => None,
            1 => Some(r.i64()?),
            other => return Err(DecodeError(format!("statement id flag {other}"))),
        };
        let action = r
            .text()?
            .ok_or_else(|| DecodeError("the action is missing".into()))?;
        let mut shared = Shared {
            occurred_at,
            txid,
            statement_id,
            action,
            ..Shared::default()
        };
        for field in [
            &mut shared.entity_type,
            &mut shared.actor,
            &mut shared.actor_role,
            &mut shared.ip,
            &mut shared.user_agent,
            &mut shared.session_id,
            &mut shared.source,
            &mut shared.org_id,
            &mut shared.metadata,
        ] {
            *field = r.text()?;
        }
        let count = r.u16()? as usize;
        if count == 0 || count > CHUNK_CAPACITY {
            return Err(DecodeError(format!("{count} events")));
        }
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            let entity_id = r.text()?;
            let nfields = r.u16()? as usize;
            let mut fields = Vec::with_capacity(nfields);
            for _ in 0..nfields {
                let at = r.at;
                let name = r
                    .text()?
                    .ok_or_else(|| DecodeError(format!("field name at byte {at} is NULL")))?;
                let value = |r: &mut Reader<'a>| Ok::<_, DecodeError>(r.text()?.map(Cow::Borrowed));
                let change = match r.u8()? {
                    0 => FieldChange::Updated {
                        old: value(&mut r)?,
                        new: value(&mut r)?,
                    },
                    1 => FieldChange::Inserted(value(&mut r)?),
                    2 => FieldChange::Deleted(value(&mut r)?),
                    3 => FieldChange::Masked,
                    other => return Err(DecodeError(format!("field kind {other}"))),
                };
                fields.push((name, change));
            }
            events.push(Event {
                entity_id,
                changes: Changes::from_sorted(fields),
            });
        }
        if r.at != bytes.len() {
            return Err(DecodeError(format!(
                "{} bytes after the last event",
                bytes.len() - r.at
            )));
        }
        Ok(Chunk {
            first_id,
            shared,
            events,
        })
    }

    /// The hashed fields of event `i`; `changes` is its canonical JSON text.
    pub fn event_fields<'c>(&'c self, i: usize, changes: Option<&'c str>) -> EventFields<'c> {
        let (s, e) = (&self.shared, &self.events[i]);
        EventFields {
            id: self.first_id + i as i64,
            occurred_at_unix_micros: s.occurred_at + crate::canonical::UNIX_TO_PG_EPOCH_MICROS,
            txid: s.txid,
            statement_id: s.statement_id,
            actor: s.actor,
            actor_role: s.actor_role,
            action: s.action,
            entity_type: s.entity_type,
            entity_id: e.entity_id,
            changes,
            ip: s.ip,
            user_agent: s.user_agent,
            session_id: s.session_id,
            source: s.source,
            org_id: s.org_id,
            metadata: s.metadata,
        }
    }
}

/// The calendar month (UTC) of a PostgreSQL timestamp, as months since year 0:
/// chunks of one month go to one partition.
pub fn month_of(pg_micros: i64) -> i64 {
    /// Days from 0000-03-01 to 2000-01-01, PostgreSQL's epoch.
    const PG_EPOCH_DAYS_FROM_CIVIL_ZERO: i64 = 730_425;
    let days = pg_micros.div_euclid(86_400_000_000) + PG_EPOCH_DAYS_FROM_CIVIL_ZERO;
    // Days since 0000-03-01 to (year, month), after Howard Hinnant's civil_from_days.
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    year * 12 + month - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::ChangeSet;

    fn shared() -> Shared<'static> {
        Shared {
            occurred_at: 851_000_000_000_000,
            txid: 7_000_000_123,
            statement_id: Some(4200),
            action: "UPDATE",
            entity_type: Some("opportunities"),
            actor: Some("sales.admin"),
            actor_role: None,
            ip: Some("203.0.113.7"),
            user_agent: Some("crm-web/5.2 \u{e9}"),
            session_id: None,
            source: Some("UI"),
            org_id: Some("org_7"),
            metadata: Some(r#"{"bulk_operation_id":4200}"#),
        }
    }

    fn owned(s: &str) -> crate::changes::Value<'static> {
        Some(Cow::Owned(s.to_owned()))
    }

    fn every_kind() -> Changes<'static> {
        let mut c = ChangeSet::new();
        c.push(
            "stage",
            FieldChange::Updated {
                old: owned("Proposal"),
                new: owned("Won"),
            },
        );
        c.push(
            "amount",
            FieldChange::Updated {
                old: None,
                new: owned(""),
            },
        );
        c.push("ssn", FieldChange::Masked);
        c.push("notes", FieldChange::Inserted(owned("a \"quoted\"\nline")));
        c.push("title", FieldChange::Deleted(None));
        c.finish().unwrap()
    }

    #[test]
    fn round_trips_every_field() {
        let changes = every_kind();
        let mut w = ChunkWriter::new(4300, &shared());
        w.push(Some("42"), Some(&changes));
        w.push(None, None);
        w.push(Some(""), None);
        let bytes = w.finish().to_vec();
        let chunk = Chunk::decode(&bytes).unwrap();
        assert_eq!(chunk.first_id, 4300);
        assert_eq!(chunk.shared, shared());
        assert_eq!(chunk.events.len(), 3);
        assert_eq!(chunk.events[0].entity_id, Some("42"));
        assert_eq!(chunk.events[0].changes.as_ref(), Some(&changes));
        assert_eq!(
            chunk.events[0].changes.as_ref().unwrap().canonical_json(),
            changes.canonical_json()
        );
        assert_eq!(chunk.events[1], Event::default());
        assert_eq!(
            chunk.events[2].entity_id,
            Some(""),
            "empty text is not NULL"
        );
    }

    #[test]
    fn event_fields_number_events_from_the_first_id() {
        let mut w = ChunkWriter::new(900, &shared());
        for id in ["1", "2"] {
            w.push(Some(id), None);
        }
        let bytes = w.finish().to_vec();
        let chunk = Chunk::decode(&bytes).unwrap();
        let second = chunk.event_fields(1, Some("{}"));
        assert_eq!((second.id, second.entity_id), (901, Some("2")));
        assert_eq!(second.changes, Some("{}"));
        assert_eq!(
            second.occurred_at_unix_micros,
            851_000_000_000_000 + crate::canonical::UNIX_TO_PG_EPOCH_MICROS
        );
        assert_eq!(second.metadata, Some(r#"{"bulk_operation_id":4200}"#));
    }

    #[test]
    fn a_full_chunk_refuses_more_events() {
        let mut w = ChunkWriter::new(1, &shared());
        for _ in 0..CHUNK_CAPACITY {
            w.push(None, None);
        }
        assert!(w.is_full());
        let result = std::panic::catch_unwind(move || w.push(None, None));
        assert!(result.is_err());
    }

    #[test]
    fn rejects_damaged_bytes() {
        let mut w = ChunkWriter::new(1, &shared());
        w.push(Some("1"), None);
        let bytes = w.finish().to_vec();
        let err = |b: &[u8]| Chunk::decode(b).unwrap_err().0;
        assert_eq!(err(b"XX"), "not an audit chunk");
        let mut v2 = bytes.clone();
        v2[2] = 2;
        assert_eq!(err(&v2), "version 2 (this build reads 1)");
        assert!(err(&bytes[..bytes.len() - 1]).starts_with("truncated"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(err(&longer), "1 bytes after the last event");
        let mut bad_utf8 = bytes.clone();
        let last = bad_utf8.len() - 3; // the entity id "1", before the field count
        bad_utf8[last] = 0xff;
        assert!(err(&bad_utf8).contains("is not UTF-8"));
        let mut bad_kind = Vec::new();
        let mut w = ChunkWriter::new(1, &shared());
        w.push(None, Some(&every_kind()));
        bad_kind.extend_from_slice(w.finish());
        let kind_at = bad_kind.len() - 1; // the last field's kind (deleted: old NULL follows)
        bad_kind[kind_at - 4] = 9;
        assert_eq!(err(&bad_kind), "field kind 9");
    }

    #[test]
    fn month_of_follows_the_calendar() {
        let day = 86_400_000_000i64;
        let month = |y: i64, m: i64| y * 12 + m - 1;
        assert_eq!(month_of(0), month(2000, 1), "the PostgreSQL epoch");
        assert_eq!(month_of(31 * day - 1), month(2000, 1));
        assert_eq!(month_of(31 * day), month(2000, 2));
        assert_eq!(
            month_of((31 + 29) * day),
            month(2000, 3),
            "2000 is a leap year"
        );
        assert_eq!(month_of(-1), month(1999, 12));
        // 2026-12-31 23:59:59.999999 and 2027-01-01 UTC.
        let jan_2027 = 9862 * day;
        assert_eq!(month_of(jan_2027 - 1), month(2026, 12));
        assert_eq!(month_of(jan_2027), month(2027, 1));
    }

    #[test]
    fn an_empty_chunk_does_not_decode() {
        let bytes = ChunkWriter::new(1, &shared()).finish().to_vec();
        assert_eq!(Chunk::decode(&bytes).unwrap_err().0, "0 events");
    }
}
