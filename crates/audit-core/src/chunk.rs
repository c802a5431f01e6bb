//! Chunks: how captured events travel and how they are stored.
//!
//! Capture writes the events of a statement (up to [`CHUNK_CAPACITY`] per
//! message) into the WAL as one transactional message, the fields they share
//! written once. After the transaction commits, the materializer numbers the
//! events in commit order and [`Packer`] groups consecutive events that share
//! their context (action, entity type, actor and the rest) into stored rows of
//! up to [`CHUNK_CAPACITY`] events: event `i` of a row has id `first_id + i`.
//!
//! ```text
//! message := "AC" version:u8 occurred_at:i64le txid:u64le statement:opt_u32
//!            flags:u8 text{10} count:u16le event{count}
//! event   := entity_id:text nfields:u16le field{nfields}   -- 0 fields: no change set
//! field   := name:text 0:u8 old:text new:text              -- updated
//!          | name:text 1:u8 new:text                       -- inserted
//!          | name:text 2:u8 old:text                       -- deleted
//!          | name:text 3:u8                                -- masked
//! text    := 0:varint                                      -- NULL
//!          | (len + 1):varint bytes[len]                    -- UTF-8
//! opt_u32 := 0:u8 | 1:u8 value:u32le
//! ```
//!
//! `varint` is unsigned LEB128 (see [`crate::varint`]): most texts are
//! short, and their lengths take one byte instead of four. Version 1 wrote
//! them as u32le; its messages (left in the WAL by an earlier build) are
//! still read.
//!
//! `statement` numbers the statements of a transaction (absent for
//! application events): the messages of one statement share it. Flag bit 0:
//! a bulk statement (several rows), whose events carry its statement id as
//! `bulk_operation_id` in their metadata. The ten shared texts, in order:
//! action, entity_type, actor, actor_role, ip, user_agent, session_id, source,
//! org_id, metadata (canonical JSON). Fields come sorted by name, as
//! [`Changes`] keeps them.

use std::borrow::Cow;

use crate::canonical::{push_canonical_json, EventFields, UNIX_TO_PG_EPOCH_MICROS};
use crate::changes::{Changes, FieldChange};
use crate::varint::{self, VarintError};

/// Events per message and per stored row.
pub const CHUNK_CAPACITY: usize = 100;

const MAGIC: &[u8; 2] = b"AC";
const VERSION: u8 = 2;
/// The version whose text lengths are u32le.
const VERSION_FIXED_LENGTHS: u8 = 1;
const FLAG_BULK: u8 = 1;

/// The context events of a stored row share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context<'a> {
    pub action: Cow<'a, str>,
    pub entity_type: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub actor_role: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub source: Option<&'a str>,
    pub org_id: Option<&'a str>,
    /// Canonical JSON text.
    pub metadata: Option<Cow<'a, str>>,
}

impl Context<'_> {
    /// The ten shared texts, in the order a message holds them.
    fn texts(&self) -> [Option<&str>; 10] {
        [
            Some(self.action.as_ref()),
            self.entity_type,
            self.actor,
            self.actor_role,
            self.ip,
            self.user_agent,
            self.session_id,
            self.source,
            self.org_id,
            self.metadata.as_deref(),
        ]
    }
}

/// What a message's events share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shared<'a> {
    /// PostgreSQL timestamp (microseconds since 2000-01-01 UTC).
    pub occurred_at: i64,
    pub txid: u64,
    /// The statement's number within its transaction; None for an application event.
    pub statement: Option<u32>,
    pub bulk: bool,
    pub context: Context<'a>,
}

/// What differs between the events of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event<'a> {
    pub entity_id: Option<&'a str>,
    pub changes: Option<Changes<'a>>,
}

fn put_text(buf: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => buf.push(0),
        Some(s) => {
            varint::push(buf, s.len() as u64 + 1);
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// Encodes a message event by event, so capture needs no intermediate copies.
#[derive(Debug)]
pub struct ChunkWriter {
    buf: Vec<u8>,
    count_at: usize,
    count: u16,
}

impl ChunkWriter {
    pub fn new(shared: &Shared<'_>) -> Self {
        Self::with_capacity(shared, 256)
    }

    /// A writer whose buffer holds `bytes` before it grows.
    pub fn with_capacity(shared: &Shared<'_>, bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&shared.occurred_at.to_le_bytes());
        buf.extend_from_slice(&shared.txid.to_le_bytes());
        match shared.statement {
            None => buf.push(0),
            Some(n) => {
                buf.push(1);
                buf.extend_from_slice(&n.to_le_bytes());
            }
        }
        buf.push(if shared.bulk { FLAG_BULK } else { 0 });
        for text in shared.context.texts() {
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
        let mut event = self.begin_event(entity_id);
        for (name, change) in changes.map_or(&[][..], |c| c.fields()) {
            self.push_field(&mut event, name, change);
        }
        self.finish_event(event);
    }

    /// Starts an event whose fields are written one by one (sorted by name),
    /// without building a [`Changes`] first; [`Self::finish_event`] ends it.
    pub fn begin_event(&mut self, entity_id: Option<&str>) -> OpenEvent {
        assert!(
            !self.is_full(),
            "a chunk holds at most {CHUNK_CAPACITY} events"
        );
        put_text(&mut self.buf, entity_id);
        let count_at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_le_bytes());
        OpenEvent {
            count_at,
            fields: 0,
        }
    }

    pub fn push_field(&mut self, event: &mut OpenEvent, name: &str, change: &FieldChange<'_>) {
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
        event.fields += 1;
    }

    pub fn finish_event(&mut self, event: OpenEvent) {
        self.buf[event.count_at..event.count_at + 2].copy_from_slice(&event.fields.to_le_bytes());
        self.count += 1;
    }

    /// The encoded message.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[self.count_at..self.count_at + 2].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// An event being written into a [`ChunkWriter`].
#[derive(Debug)]
#[must_use = "an event is counted only once finished"]
pub struct OpenEvent {
    count_at: usize,
    fields: u16,
}

/// Why bytes are not a chunk message.
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
    version: u8,
}

impl<'a> Reader<'a> {
    /// A reader past the magic and the version, which decides how texts are read.
    fn open(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.get(..2) != Some(&MAGIC[..]) {
            return Err(DecodeError("not an audit chunk".into()));
        }
        let version = *bytes
            .get(2)
            .ok_or_else(|| DecodeError("truncated at byte 2".into()))?;
        if !(VERSION_FIXED_LENGTHS..=VERSION).contains(&version) {
            return Err(DecodeError(format!(
                "version {version} (this build reads {VERSION_FIXED_LENGTHS} to {VERSION})"
            )));
        }
        Ok(Reader {
            bytes,
            at: 3,
            version,
        })
    }

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

    fn text(&mut self) -> Result<Option<&'a str>, DecodeError> {
        let length = if self.version == VERSION_FIXED_LENGTHS {
            u64::from(self.u32()?)
        } else {
            let at = self.at;
            varint::read(self.bytes, &mut self.at).map_err(|e| match e {
                VarintError::Truncated => DecodeError(format!("truncated at byte {at}")),
                VarintError::Overlong => DecodeError(format!("overlong length at byte {at}")),
            })?
        };
        match length {
            0 => Ok(None),
            n => {
                let at = self.at;
                crate::utf8::str_of(self.take(n as usize - 1)?)
                    .map(Some)
                    .map_err(|_| DecodeError(format!("text at byte {at} is not UTF-8")))
            }
        }
    }
}

/// A decoded message, borrowing its texts from the encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub shared: Shared<'a>,
    pub events: Vec<Event<'a>>,
}

impl<'a> Chunk<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes)?;
        let occurred_at = r.u64()? as i64;
        let txid = r.u64()?;
        let statement = match r.u8()? {
            0 => None,
            1 => Some(r.u32()?),
            other => return Err(DecodeError(format!("statement flag {other}"))),
        };
        let bulk = r.u8()? & FLAG_BULK != 0;
        let action = r
            .text()?
            .ok_or_else(|| DecodeError("the action is missing".into()))?;
        let mut context = Context {
            action: Cow::Borrowed(action),
            ..Context::default()
        };
        for field in [
            &mut context.entity_type,
            &mut context.actor,
            &mut context.actor_role,
            &mut context.ip,
            &mut context.user_agent,
            &mut context.session_id,
            &mut context.source,
            &mut context.org_id,
        ] {
            *field = r.text()?;
        }
        context.metadata = r.text()?.map(Cow::Borrowed);
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
            shared: Shared {
                occurred_at,
                txid,
                statement,
                bulk,
                context,
            },
            events,
        })
    }
}

/// An event as stored: numbered, with what may differ within a stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent<'a> {
    pub id: i64,
    pub occurred_at: i64,
    pub txid: u64,
    pub statement_id: Option<i64>,
    pub entity_id: Option<&'a str>,
    pub changes: Option<Changes<'a>>,
}

/// A stored row: consecutive events of one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    pub context: Context<'a>,
    pub events: Vec<StoredEvent<'a>>,
}

impl<'a> Row<'a> {
    pub fn first_id(&self) -> i64 {
        self.events[0].id
    }

    /// Whether every event has the first one's value of `field`.
    pub fn uniform<T: PartialEq>(&self, field: impl Fn(&StoredEvent<'a>) -> T) -> bool {
        let first = field(&self.events[0]);
        self.events[1..].iter().all(|e| field(e) == first)
    }

    /// The hashed fields of event `i`; `changes` is its canonical JSON text.
    pub fn event_fields<'r>(&'r self, i: usize, changes: Option<&'r str>) -> EventFields<'r> {
        let (c, e) = (&self.context, &self.events[i]);
        EventFields {
            id: e.id,
            occurred_at_unix_micros: e.occurred_at + UNIX_TO_PG_EPOCH_MICROS,
            txid: e.txid,
            statement_id: e.statement_id,
            actor: c.actor,
            actor_role: c.actor_role,
            action: &c.action,
            entity_type: c.entity_type,
            entity_id: e.entity_id,
            changes,
            ip: c.ip,
            user_agent: c.user_agent,
            session_id: c.session_id,
            source: c.source,
            org_id: c.org_id,
            metadata: c.metadata.as_deref(),
        }
    }
}

/// `metadata` (canonical JSON, or none) with `bulk_operation_id` set.
fn with_bulk_operation_id(metadata: Option<&str>, statement_id: i64) -> String {
    let mut object = metadata
        .and_then(|m| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(m).ok())
        .unwrap_or_default();
    object.insert("bulk_operation_id".into(), statement_id.into());
    let mut text = String::new();
    push_canonical_json(&mut text, &serde_json::Value::Object(object));
    text
}

/// Numbers committed messages in order and packs their events into rows.
#[derive(Debug)]
pub struct Packer<'a> {
    next_id: i64,
    /// The transaction and statement of the last message, with the statement's id.
    statement: Option<(u64, u32, i64)>,
    rows: Vec<Row<'a>>,
}

impl<'a> Packer<'a> {
    pub fn new(next_id: i64) -> Self {
        Packer {
            next_id,
            statement: None,
            rows: Vec::new(),
        }
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> i64 {
        self.next_id
    }

    /// Adds the events of a message (messages in commit order, a transaction's in WAL order).
    pub fn add(&mut self, chunk: Chunk<'a>) {
        let shared = chunk.shared;
        let statement_id = shared.statement.map(|n| match self.statement {
            Some((txid, statement, id)) if txid == shared.txid && statement == n => id,
            _ => {
                self.statement = Some((shared.txid, n, self.next_id));
                self.next_id
            }
        });
        let mut context = shared.context;
        if let (true, Some(id)) = (shared.bulk, statement_id) {
            context.metadata = Some(Cow::Owned(with_bulk_operation_id(
                context.metadata.as_deref(),
                id,
            )));
        }
        for event in chunk.events {
            let stored = StoredEvent {
                id: self.next_id,
                occurred_at: shared.occurred_at,
                txid: shared.txid,
                statement_id,
                entity_id: event.entity_id,
                changes: event.changes,
            };
            self.next_id += 1;
            match self.rows.last_mut() {
                Some(row) if row.events.len() < CHUNK_CAPACITY && row.context == context => {
                    row.events.push(stored)
                }
                _ => self.rows.push(Row {
                    context: context.clone(),
                    events: vec![stored],
                }),
            }
        }
    }

    pub fn finish(self) -> Vec<Row<'a>> {
        self.rows
    }
}

/// The calendar month (UTC) of a PostgreSQL timestamp, as months since year 0:
/// rows of one month go to one partition.
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

    fn context() -> Context<'static> {
        Context {
            action: Cow::Borrowed("UPDATE"),
            entity_type: Some("opportunities"),
            actor: Some("sales.admin"),
            actor_role: None,
            ip: Some("203.0.113.7"),
            user_agent: Some("crm-web/5.2 \u{e9}"),
            session_id: None,
            source: Some("UI"),
            org_id: Some("org_7"),
            metadata: Some(Cow::Borrowed(r#"{"row_count":2}"#)),
        }
    }

    fn shared(txid: u64, statement: Option<u32>) -> Shared<'static> {
        Shared {
            occurred_at: 851_000_000_000_000,
            txid,
            statement,
            bulk: false,
            context: context(),
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

    fn message(shared: &Shared<'_>, ids: &[Option<&str>]) -> Vec<u8> {
        let mut w = ChunkWriter::new(shared);
        for id in ids {
            w.push(*id, None);
        }
        w.finish()
    }

    #[test]
    fn round_trips_every_field() {
        let changes = every_kind();
        let mut s = shared(7_000_000_123, Some(3));
        s.bulk = true;
        let encode = |mut w: ChunkWriter| {
            w.push(Some("42"), Some(&changes));
            w.push(None, None);
            w.push(Some(""), None);
            w.finish()
        };
        let bytes = encode(ChunkWriter::new(&s));
        assert_eq!(
            encode(ChunkWriter::with_capacity(&s, 1)),
            bytes,
            "the starting capacity only sizes the buffer"
        );
        let chunk = Chunk::decode(&bytes).unwrap();
        assert_eq!(chunk.shared, s);
        assert_eq!(chunk.events.len(), 3);
        assert_eq!(chunk.events[0].entity_id, Some("42"));
        assert_eq!(chunk.events[0].changes.as_ref(), Some(&changes));
        assert_eq!(chunk.events[1], Event::default());
        assert_eq!(
            chunk.events[2].entity_id,
            Some(""),
            "empty text is not NULL"
        );
    }

    #[test]
    fn texts_take_a_length_byte_and_version_1_is_still_read() {
        let mut w = ChunkWriter::new(&shared(1, None));
        w.push(Some("7"), None);
        let v2 = w.finish();
        // "AC", version, occurred_at, txid, no statement, flags; ten texts of
        // 1 + len bytes; count; "7"; no fields.
        let context_texts: usize = context()
            .texts()
            .iter()
            .map(|t| t.map_or(1, |t| 1 + t.len()))
            .sum();
        assert_eq!(v2.len(), 3 + 8 + 8 + 1 + 1 + context_texts + 2 + 2 + 2);

        // The same message as version 1 wrote it: u32le text lengths.
        let text = |out: &mut Vec<u8>, t: Option<&str>| match t {
            None => out.extend_from_slice(&0u32.to_le_bytes()),
            Some(t) => {
                out.extend_from_slice(&(t.len() as u32 + 1).to_le_bytes());
                out.extend_from_slice(t.as_bytes());
            }
        };
        let mut v1 = b"AC\x01".to_vec();
        v1.extend_from_slice(&851_000_000_000_000i64.to_le_bytes());
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.extend_from_slice(&[0, 0]);
        text(&mut v1, Some("INSERT"));
        for _ in 0..9 {
            text(&mut v1, None);
        }
        v1.extend_from_slice(&1u16.to_le_bytes());
        text(&mut v1, Some("7"));
        v1.extend_from_slice(&1u16.to_le_bytes());
        text(&mut v1, Some("stage"));
        v1.push(1);
        text(&mut v1, Some("Won"));
        let chunk = Chunk::decode(&v1).unwrap();
        assert_eq!(chunk.shared.context.action, "INSERT");
        assert_eq!(chunk.shared.context.actor, None);
        assert_eq!(chunk.events[0].entity_id, Some("7"));
        assert_eq!(
            chunk.events[0].changes.as_ref().unwrap().fields(),
            &[("stage", FieldChange::Inserted(owned("Won")))]
        );
    }

    #[test]
    fn a_full_chunk_refuses_more_events() {
        let mut w = ChunkWriter::new(&shared(1, None));
        for _ in 0..CHUNK_CAPACITY {
            w.push(None, None);
        }
        assert!(w.is_full());
        let result = std::panic::catch_unwind(move || w.push(None, None));
        assert!(result.is_err());
    }

    #[test]
    fn rejects_damaged_bytes() {
        let bytes = message(&shared(1, None), &[Some("1")]);
        let err = |b: &[u8]| Chunk::decode(b).unwrap_err().0;
        assert_eq!(err(b"XX"), "not an audit chunk");
        let mut v3 = bytes.clone();
        v3[2] = 3;
        assert_eq!(err(&v3), "version 3 (this build reads 1 to 2)");
        assert!(err(&bytes[..bytes.len() - 1]).starts_with("truncated"));
        assert_eq!(err(b"AC"), "truncated at byte 2");
        // The action's length: eleven continuation bytes.
        let mut overlong = bytes[..3 + 8 + 8 + 1 + 1].to_vec();
        overlong.extend_from_slice(&[0x80; 11]);
        assert_eq!(err(&overlong), "overlong length at byte 21");
        assert_eq!(err(&overlong[..22]), "truncated at byte 21");
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(err(&longer), "1 bytes after the last event");
        let mut bad_utf8 = bytes.clone();
        let last = bad_utf8.len() - 3; // the entity id "1", before the field count
        bad_utf8[last] = 0xff;
        assert!(err(&bad_utf8).contains("is not UTF-8"));
        let mut w = ChunkWriter::new(&shared(1, None));
        w.push(None, Some(&every_kind()));
        let mut bad_kind = w.finish();
        let kind_at = bad_kind.len() - 2; // the last field's kind (deleted; its NULL old follows)
        bad_kind[kind_at] = 9;
        assert_eq!(err(&bad_kind), "field kind 9");
        let empty = ChunkWriter::new(&shared(1, None)).finish();
        assert_eq!(err(&empty), "0 events");
    }

    #[test]
    fn packs_consecutive_events_of_one_context() {
        let a = message(&shared(10, Some(0)), &[Some("1")]);
        let b = message(&shared(11, Some(0)), &[Some("2")]);
        let mut other = shared(12, Some(0));
        other.context.actor = Some("someone.else");
        let c = message(&other, &[Some("3")]);
        let d = message(&shared(13, Some(0)), &[Some("4")]);
        let mut packer = Packer::new(500);
        for m in [&a, &b, &c, &d] {
            packer.add(Chunk::decode(m).unwrap());
        }
        assert_eq!(packer.next_id(), 504);
        let rows = packer.finish();
        let shape: Vec<Vec<(i64, u64, Option<i64>)>> = rows
            .iter()
            .map(|r| {
                r.events
                    .iter()
                    .map(|e| (e.id, e.txid, e.statement_id))
                    .collect()
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                vec![(500, 10, Some(500)), (501, 11, Some(501))],
                vec![(502, 12, Some(502))],
                vec![(503, 13, Some(503))],
            ],
            "a different context ends a row; a later match starts a new one"
        );
        assert!(!rows[0].uniform(|e| e.txid));
        assert!(rows[0].uniform(|e| e.occurred_at));
    }

    #[test]
    fn a_statement_keeps_one_id_across_messages_and_rows_hold_a_hundred() {
        let first = message(&shared(20, Some(4)), &[Some("a"); 100]);
        let second = message(&shared(20, Some(4)), &[Some("b"); 30]);
        let next_statement = message(&shared(20, Some(5)), &[Some("c")]);
        let app_event = message(&shared(20, None), &[Some("d")]);
        let mut packer = Packer::new(1);
        for m in [&first, &second, &next_statement, &app_event] {
            packer.add(Chunk::decode(m).unwrap());
        }
        let rows = packer.finish();
        assert_eq!(
            rows.iter().map(|r| r.events.len()).collect::<Vec<_>>(),
            [100, 32]
        );
        assert!(rows[0].uniform(|e| e.statement_id), "one statement");
        let tail: Vec<Option<i64>> = rows[1].events.iter().map(|e| e.statement_id).collect();
        assert_eq!(tail[..30], [Some(1); 30]);
        assert_eq!(tail[30..], [Some(131), None]);
        assert_eq!(rows[1].first_id(), 101);
    }

    #[test]
    fn bulk_statements_carry_their_id_as_bulk_operation_id() {
        let mut s = shared(30, Some(0));
        s.bulk = true;
        let bulk = message(&s, &[Some("1"), Some("2")]);
        let mut packer = Packer::new(7);
        packer.add(Chunk::decode(&bulk).unwrap());
        let rows = packer.finish();
        assert_eq!(
            rows[0].context.metadata.as_deref(),
            Some(r#"{"bulk_operation_id":7,"row_count":2}"#)
        );
        let fields = rows[0].event_fields(1, None);
        assert_eq!((fields.id, fields.statement_id), (8, Some(7)));
        assert_eq!(
            fields.occurred_at_unix_micros,
            851_000_000_000_000 + UNIX_TO_PG_EPOCH_MICROS
        );
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
}
