-- Storage of the audit trail. Loaded first (bootstrap) by CREATE EXTENSION audit.

-- The trail is UTF-8 (stored text, canonical encoding, hashes): in a database of
-- another encoding non-ASCII values could not be kept as they are, so it is refused
-- before anything is created.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'audit needs a UTF8 database; database "%" is %',
                        pg_catalog.current_database(), pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Install audit in a database created with ENCODING ''UTF8'' (CREATE DATABASE ... TEMPLATE template0 ENCODING ''UTF8'').';
    END IF;
END
$encoding$;

-- Roles are cluster-wide: create them once, in whichever database installs first.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_reader') THEN
        CREATE ROLE audit_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_admin') THEN
        CREATE ROLE audit_admin NOLOGIN;
    END IF;
END
$roles$;
GRANT audit_reader TO audit_admin;

-- Consecutive events of one context (action, entity type, actor and the rest
-- of who / from where), up to 100 per row, as the materializer stored them
-- after their transactions committed, numbered in commit order: event n of a
-- row has id `id + n`. What may differ between the events of a row is kept per
-- event, in the arrays, when it does differ: occurred_ats (occurred_at is then
-- the earliest, occurred_until the latest), txids, statement_ids. Fixed-width
-- columns first so rows pack without padding. Identifiers compare bytewise
-- (COLLATE "C"): they are indexed and filtered on, and a linguistic comparison
-- costs several times more. Read events through the view audit.events.
CREATE TABLE audit.event_chunks (
    id             bigint      NOT NULL,   -- the first event's id
    block_id       bigint      NOT NULL,   -- the ledger block that seals these events
    occurred_at    timestamptz NOT NULL,
    txid           xid8        NOT NULL,
    statement_id   bigint,                 -- NULL for application events
    event_count    int2        NOT NULL,
    occurred_until timestamptz,
    occurred_ats   timestamptz[],
    txids          xid8[],
    statement_ids  bigint[],
    actor          text COLLATE "C",
    actor_role     text,
    action         text COLLATE "C" NOT NULL,
    entity_type    text COLLATE "C",
    ip             inet,
    user_agent     text,
    session_id     text,
    source         text,
    org_id         text,
    metadata       jsonb,
    entity_ids     text[] COLLATE "C" NOT NULL,
    changes        jsonb[] NOT NULL
) PARTITION BY RANGE (occurred_at);
-- Every variable-length column stays in the row (STORAGE MAIN) and compresses
-- with lz4 (the default, pglz, costs several times more on the materializer's
-- path): once a row passes 2 kB its largest values are compressed in place,
-- and go to TOAST only if the row still exceeds its page. (EXTENDED would first
-- push a row's small per-event arrays out to TOAST rows.) Field names and
-- values repeat from event to event: a row of 100 bulk-update events shrinks
-- from about 7 kB to 1.5 kB, and 2,035 such rows inserted in 73-77 ms against
-- 130-149 ms uncompressed (measured). Each event's hash is kept by the block
-- that sealed it, not here.
DO $$
DECLARE
    col name;
BEGIN
    FOR col IN SELECT attname FROM pg_catalog.pg_attribute
                WHERE attrelid = 'audit.event_chunks'::regclass AND attnum > 0 AND attlen = -1
    LOOP
        EXECUTE format('ALTER TABLE audit.event_chunks ALTER COLUMN %I SET STORAGE MAIN, ALTER COLUMN %I SET COMPRESSION lz4',
                       col, col);
    END LOOP;
END
$$;

COMMENT ON TABLE audit.event_chunks IS
    'Append-only audit trail: consecutive events of one context, up to 100 per row, range-partitioned by month (UTC). Read audit.events.';

-- Indexes are created on each partition by audit.ensure_partitions() (see
-- audit._index_partition), not on the parent: a partitioned index of an
-- extension would be recreated on ATTACH during a restore and collide with the
-- partition indexes pg_dump writes.

-- The entity index of several-event chunks (a chunk of one event is found
-- through a b-tree on its partition): sorted runs of (record key, chunk id)
-- pairs, one written per store transaction and merged eight at a time into
-- the next level, up to 16 million pairs a run (see src/entity_index.rs). A
-- run is cut into rows of about 200 pairs by the top bits of the key (the
-- slot); a lookup probes one slot per slot width (audit._entity_chunks), and
-- reads a row per run at most. Chunk ids outlive archiving, which moves chunks
-- with their ids.
CREATE TABLE audit.entity_runs (
    run_id bigint PRIMARY KEY,  -- its smallest chunk id (a chunk's pairs are in one run)
    level  int2   NOT NULL,
    pairs  int4   NOT NULL
);
CREATE TABLE audit.entity_run_rows (
    slot   bigint NOT NULL,     -- slot width (bits) << 32 | the keys' top bits
    run_id bigint NOT NULL,
    pairs  bytea  NOT NULL      -- varint-encoded pairs, in key order
);
-- Rows stay under 2 kB; their varints would not compress anyway.
ALTER TABLE audit.entity_run_rows ALTER COLUMN pairs SET STORAGE EXTERNAL;
CREATE INDEX entity_run_rows_slot_idx ON audit.entity_run_rows (slot);
CREATE INDEX entity_run_rows_run_idx ON audit.entity_run_rows (run_id, slot);

COMMENT ON TABLE audit.entity_runs IS 'Internal: the runs of the entity index of several-event chunks.';
COMMENT ON TABLE audit.entity_run_rows IS 'Internal: the rows of the entity index''s runs, by slot.';

-- What is tracked and how. Column lists are attribute numbers, so renaming a
-- column keeps its exclusion or mask.
CREATE TABLE audit.tracked (
    relid              regclass    PRIMARY KEY,  -- dumped by name, so it survives pg_restore
    entity_type        text        NOT NULL,
    key_attnums        int2[]      NOT NULL,
    exclude_attnums    int2[]      NOT NULL DEFAULT '{}',
    mask_attnums       int2[]      NOT NULL DEFAULT '{}',
    capture_replicated boolean     NOT NULL DEFAULT false,
    enabled_at         timestamptz NOT NULL DEFAULT now(),
    enabled_by         text        NOT NULL DEFAULT current_user
);

COMMENT ON TABLE audit.tracked IS 'Tables captured by audit.enable(); read it through audit.tracked_tables.';

-- Where the materializer stands in the WAL. Updated in the transaction that
-- stores the chunks, so that a restart neither loses nor repeats any. Not
-- dumped: a restored database starts reading its own WAL afresh, and numbers
-- events on from the restored trail.
CREATE TABLE audit.materializer_state (
    singleton        boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    restart_lsn      pg_lsn      NOT NULL,  -- reading resumes here
    materialized_lsn pg_lsn      NOT NULL,  -- commits ending at or before here are stored
    next_event_id    bigint      NOT NULL DEFAULT 1,
    open_block_lsn   pg_lsn,                -- first commit stored since the last seal
    updated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit.materializer_state (restart_lsn, materialized_lsn)
VALUES (pg_current_wal_insert_lsn(), pg_current_wal_insert_lsn());

COMMENT ON TABLE audit.materializer_state IS 'Internal: how far the audit worker has stored captured events.';

-- pg_dump keeps the trail and the configuration.
SELECT pg_catalog.pg_extension_config_dump('audit.event_chunks', '');
SELECT pg_catalog.pg_extension_config_dump('audit.tracked', '');
SELECT pg_catalog.pg_extension_config_dump('audit.entity_runs', '');
SELECT pg_catalog.pg_extension_config_dump('audit.entity_run_rows', '');

-- Nobody writes the trail directly: the materializer inserts as the extension
-- owner. Reading needs audit_reader.
REVOKE ALL ON audit.event_chunks, audit.tracked, audit.materializer_state, audit.entity_runs,
              audit.entity_run_rows FROM PUBLIC;
GRANT SELECT ON audit.event_chunks, audit.entity_runs, audit.entity_run_rows TO audit_reader;
GRANT SELECT ON audit.tracked, audit.materializer_state TO PUBLIC;
GRANT USAGE ON SCHEMA audit TO PUBLIC;
