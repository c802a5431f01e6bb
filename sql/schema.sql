-- Storage of the audit trail. Loaded first (bootstrap) by CREATE EXTENSION audit.

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

CREATE SEQUENCE audit.events_id_seq AS bigint;

-- One row per event. Fixed-width columns first so rows pack without padding.
-- The identifiers compare bytewise (COLLATE "C"): every event inserts them into
-- indexes or is filtered on them, and a linguistic comparison costs several times more.
CREATE TABLE audit.events (
    id           bigint      NOT NULL,
    occurred_at  timestamptz NOT NULL,
    txid         xid8        NOT NULL,
    statement_id bigint,
    actor        text COLLATE "C",
    actor_role   text,
    action       text COLLATE "C" NOT NULL,
    entity_type  text COLLATE "C",
    entity_id    text COLLATE "C",
    changes      jsonb,
    ip           inet,
    user_agent   text,
    session_id   text,
    source       text,
    org_id       text,
    metadata     jsonb,
    hash         bytea       NOT NULL
) PARTITION BY RANGE (occurred_at);

COMMENT ON TABLE audit.events IS 'Append-only audit trail, one row per event, range-partitioned by month (UTC).';

-- Indexes are created on each partition by audit.ensure_partitions() (see
-- audit._index_partition), not on the parent: a partitioned index of an
-- extension would be recreated on ATTACH during a restore and collide with the
-- partition indexes pg_dump writes.

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

-- pg_dump keeps the trail and the configuration.
SELECT pg_catalog.pg_extension_config_dump('audit.events', '');
SELECT pg_catalog.pg_extension_config_dump('audit.tracked', '');
SELECT pg_catalog.pg_extension_config_dump('audit.events_id_seq', '');

-- Nobody writes the trail directly: capture and audit.log_event insert as the
-- extension owner. Reading needs audit_reader.
REVOKE ALL ON audit.events, audit.tracked, audit.events_id_seq FROM PUBLIC;
GRANT SELECT ON audit.events TO audit_reader;
GRANT SELECT ON audit.tracked TO PUBLIC;
GRANT USAGE ON SCHEMA audit TO PUBLIC;
