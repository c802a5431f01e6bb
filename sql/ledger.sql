-- The hash chain. Blocks are written only by audit.seal() (and the background
-- worker), as the extension owner; like events they are append-only.

CREATE TABLE audit.blocks (
    block_id       bigint         PRIMARY KEY,
    sealed_at      timestamptz    NOT NULL,
    xid_lo         xid8           NOT NULL,
    xid_hi         xid8           NOT NULL,
    first_event_id bigint         NOT NULL,
    last_event_id  bigint         NOT NULL,
    event_count    bigint         NOT NULL,
    event_ids      int8multirange NOT NULL,
    leaf_hashes    bytea          NOT NULL,
    merkle_root    bytea          NOT NULL,
    prev_hash      bytea          NOT NULL,
    block_hash     bytea          NOT NULL
);
-- Hashes do not compress: store them out of line without trying.
ALTER TABLE audit.blocks ALTER COLUMN leaf_hashes SET STORAGE EXTERNAL;

COMMENT ON TABLE audit.blocks IS
    'Hash chain: each block seals the events of transactions with xid in [xid_lo, xid_hi) and ids in [first_event_id, last_event_id].';

-- Sealer bookkeeping: transactions with xid >= next_xid number their events above id_floor.
CREATE TABLE audit.seal_marks (
    next_xid xid8   PRIMARY KEY,
    id_floor bigint NOT NULL
);

SELECT pg_catalog.pg_extension_config_dump('audit.blocks', '');
SELECT pg_catalog.pg_extension_config_dump('audit.seal_marks', '');
REVOKE ALL ON audit.blocks, audit.seal_marks FROM PUBLIC;
GRANT SELECT ON audit.blocks TO audit_reader;
