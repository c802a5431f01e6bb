-- The hash chain. The materializer writes one block per batch of committed
-- transactions it stores, in the same transaction; like events, blocks are
-- append-only.

CREATE TABLE audit.blocks (
    block_id       bigint      PRIMARY KEY,
    sealed_at      timestamptz NOT NULL,
    lsn_lo         pg_lsn      NOT NULL,  -- first commit record sealed
    lsn_hi         pg_lsn      NOT NULL,  -- last commit record sealed
    first_event_id bigint      NOT NULL,
    last_event_id  bigint      NOT NULL,  -- a block seals every id from first to last
    event_count    bigint      NOT NULL,
    leaf_hashes    bytea       NOT NULL,  -- the events' hashes, in id order
    merkle_root    bytea       NOT NULL,
    prev_hash      bytea       NOT NULL,
    block_hash     bytea       NOT NULL
);
-- Hashes do not compress: store them out of line without trying.
ALTER TABLE audit.blocks ALTER COLUMN leaf_hashes SET STORAGE EXTERNAL;

COMMENT ON TABLE audit.blocks IS
    'Hash chain: each block seals the events of the transactions whose commit records lie in [lsn_lo, lsn_hi].';

SELECT pg_catalog.pg_extension_config_dump('audit.blocks', '');
REVOKE ALL ON audit.blocks FROM PUBLIC;
GRANT SELECT ON audit.blocks TO audit_reader;
