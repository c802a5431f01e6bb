-- The functions, views and guards of the trail.

-- Indexes of a partition of audit.event_chunks (or of the archive). The
-- materializer maintains them, off the writers' path.
CREATE FUNCTION audit._index_partition(partition regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text := (SELECT relname FROM pg_class WHERE oid = partition);
BEGIN
    -- Chunks are never updated, so pages filled by appending stay full.
    EXECUTE format('CREATE INDEX %I ON %s (id) WITH (fillfactor = 100)', name || '_id_idx', partition);
    -- (actor, id): "newest first" for one actor walks the index backwards,
    -- whatever else filters (ids follow time).
    EXECUTE format('CREATE INDEX %I ON %s (actor, id) WITH (fillfactor = 100)', name || '_actor_idx', partition);
    -- Row changes are found by actor, record or time; an action index pays
    -- off for the rarer actions only (logins, exports, truncates, reverts...).
    EXECUTE format('CREATE INDEX %I ON %s (action, id) WHERE action NOT IN (''INSERT'', ''UPDATE'', ''DELETE'')',
                   name || '_action_idx', partition);
    -- A record's events, through the 32-bit hash of its id (integer keys
    -- insert several times faster than text). A chunk of one event (most of
    -- them) puts its key into this b-tree, with the chunk id so that a record
    -- updated thousands of times stays cheap to insert into (a hash index
    -- chains such duplicates into overflow pages). The keys of chunks of
    -- several events go into audit.entity_runs instead.
    EXECUTE format('CREATE INDEX %I ON %s (audit.entity_hash(entity_ids[1]), id) WITH (fillfactor = 100) '
                   'WHERE event_count = 1', name || '_entity_idx', partition);
    -- The chunks of a statement after its first (that one has id = statement_id).
    EXECUTE format('CREATE INDEX %I ON %s (statement_id) WHERE statement_id <> id',
                   name || '_statement_idx', partition);
    EXECUTE format('CREATE INDEX %I ON %s USING brin (occurred_at)', name || '_occurred_at_brin', partition);
    -- Chunks are appended block after block: verification reads a block's chunks through this.
    EXECUTE format('CREATE INDEX %I ON %s USING brin (block_id)', name || '_block_brin', partition);
END
$$;

-- Monthly partitions, UTC boundaries, created ahead so that a month boundary
-- never fails a store. Returns the instant up to which events have a partition.
-- When they all exist it takes no lock.
CREATE FUNCTION audit.ensure_partitions(through timestamptz DEFAULT now(), months_ahead int DEFAULT 3)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first_month timestamp := date_trunc('month', least(through, now()) AT TIME ZONE 'UTC');
    horizon     timestamp := date_trunc('month', greatest(through, now()) AT TIME ZONE 'UTC')
                             + make_interval(months => months_ahead + 1);
    month_start timestamp;
    partition   text;
BEGIN
    IF months_ahead NOT BETWEEN 0 AND 120 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 120, not %', months_ahead
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The default creates 3 months ahead.';
    END IF;
    IF NOT EXISTS (SELECT FROM generate_series(first_month, horizon - interval '1 month', interval '1 month') m
                   WHERE to_regclass('audit.event_chunks_' || to_char(m, 'YYYYMM')) IS NULL) THEN
        RETURN horizon AT TIME ZONE 'UTC';
    END IF;
    -- One creator at a time; concurrent callers wait, then find the partitions made.
    PERFORM pg_advisory_xact_lock(hashtext('audit.ensure_partitions'));
    month_start := first_month;
    WHILE month_start < horizon LOOP
        partition := 'event_chunks_' || to_char(month_start, 'YYYYMM');
        IF to_regclass('audit.' || partition) IS NULL THEN
            -- Its columns' storage comes from audit.event_chunks (arrays kept in
            -- the row, compressed).
            EXECUTE format(
                'CREATE TABLE audit.%I PARTITION OF audit.event_chunks FOR VALUES FROM (%L) TO (%L)',
                partition, month_start AT TIME ZONE 'UTC', (month_start + interval '1 month') AT TIME ZONE 'UTC');
            EXECUTE format(
                'CREATE TRIGGER event_chunks_append_only_truncate BEFORE TRUNCATE ON audit.%I '
                'FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_modification()', partition);
            PERFORM audit._index_partition(('audit.' || quote_ident(partition))::regclass);
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN horizon AT TIME ZONE 'UTC';
END
$$;

-- The partition the materializer stores a chunk of instant `at` into, made if missing:
-- the one whose bounds are exactly that UTC month (found by its bounds, not its
-- name). NULL when another partition covers the month.
CREATE FUNCTION audit._partition_for(at timestamptz, OUT partition regclass, OUT from_ts timestamptz, OUT until_ts timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM audit.ensure_partitions(at, 0);
    from_ts := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    until_ts := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    SELECT c.oid INTO partition
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit.event_chunks'::regclass
      AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES FROM (%L) TO (%L)', from_ts, until_ts);
END
$$;

-- Append-only guard. Only a superuser can switch it off (session_replication_role),
-- which is exactly the tampering that audit verification exists to detect.
CREATE FUNCTION audit.refuse_modification() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Retention (SECURITY DEFINER, run as the superuser owner) deletes expired
    -- events with audit.maintenance on; the setting is superuser-only.
    IF TG_OP = 'DELETE' AND current_setting('audit.maintenance', true) = 'on'
       AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit trail is append-only: % of audit events is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit events can be neither changed nor deleted; retention policies remove expired events.';
END
$$;

CREATE TRIGGER event_chunks_append_only BEFORE UPDATE OR DELETE ON audit.event_chunks
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_modification();
CREATE TRIGGER event_chunks_append_only_truncate BEFORE TRUNCATE ON audit.event_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_modification();

-- Chunk rows as this session sees them: stored ones, and its own the
-- materializer has not stored yet (its open transaction's, or just committed).
CREATE VIEW audit.chunks AS
SELECT * FROM audit.event_chunks
UNION ALL
SELECT * FROM audit._own_pending_chunks();

COMMENT ON VIEW audit.chunks IS 'Chunk rows of audit.event_chunks, plus this session''s events not stored yet.';

-- One row per event (event n of a chunk has id chunk.id + n), with the chunk
-- columns lookups filter on: a condition on those is applied to chunk rows,
-- and their indexes, before any chunk is unnested.
CREATE VIEW audit._event_rows AS
SELECT c.id + n AS id,
       coalesce(c.occurred_ats[n + 1], c.occurred_at) AS occurred_at,
       coalesce(c.txids[n + 1], c.txid) AS txid,
       CASE WHEN c.statement_ids IS NULL THEN c.statement_id ELSE c.statement_ids[n + 1] END AS statement_id,
       c.actor,
       c.actor_role,
       c.action,
       c.entity_type,
       c.entity_ids[n + 1] AS entity_id,
       c.changes[n + 1] AS changes,
       c.ip,
       c.user_agent,
       c.session_id,
       c.source,
       c.org_id,
       c.metadata,
       audit._event_hash(c.id + n, coalesce(c.occurred_ats[n + 1], c.occurred_at),
                         coalesce(c.txids[n + 1], c.txid)::text::int8,
                         CASE WHEN c.statement_ids IS NULL THEN c.statement_id ELSE c.statement_ids[n + 1] END,
                         c.actor, c.actor_role, c.action, c.entity_type, c.entity_ids[n + 1], c.changes[n + 1], c.ip,
                         c.user_agent, c.session_id, c.source, c.org_id, c.metadata) AS hash,
       c.block_id,
       c.id AS chunk_id,
       c.event_count AS chunk_events,
       c.occurred_at AS chunk_occurred_at,
       coalesce(c.occurred_until, c.occurred_at) AS chunk_occurred_until,
       c.entity_ids AS chunk_entity_ids,
       c.changes AS chunk_changes
FROM audit.chunks c
CROSS JOIN LATERAL generate_series(0, c.event_count - 1) AS n;

CREATE VIEW audit.events AS
SELECT id, occurred_at, txid, statement_id, actor, actor_role, action, entity_type, entity_id, changes,
       ip, user_agent, session_id, source, org_id, metadata, hash, block_id
FROM audit._event_rows;

-- One event by id: its chunk is the one whose first id is at most 99 below it.
CREATE FUNCTION audit._event(event_id bigint) RETURNS SETOF audit.events
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.occurred_at, r.txid, r.statement_id, r.actor, r.actor_role, r.action, r.entity_type, r.entity_id,
           r.changes, r.ip, r.user_agent, r.session_id, r.source, r.org_id, r.metadata, r.hash, r.block_id
    FROM audit._event_rows r
    WHERE r.chunk_id BETWEEN event_id - 99 AND event_id AND r.id = event_id
$$;

-- The events of one record (of any of `entity_types`), through the entity
-- indexes (this session's events not stored yet have no chunk id).
CREATE FUNCTION audit._record_events(entity_types text[], entity_id text) RETURNS SETOF audit.events
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- see audit.search
AS $$
    SELECT r.id, r.occurred_at, r.txid, r.statement_id, r.actor, r.actor_role, r.action, r.entity_type, r.entity_id,
           r.changes, r.ip, r.user_agent, r.session_id, r.source, r.org_id, r.metadata, r.hash, r.block_id
    FROM audit._event_rows r
    WHERE r.entity_type = ANY (entity_types)
      AND ((r.chunk_events = 1 AND audit.entity_hash(r.chunk_entity_ids[1]) = audit.entity_hash(_record_events.entity_id))
           OR r.chunk_id = ANY ((SELECT audit._entity_chunks(_record_events.entity_id))::bigint[])
           OR r.chunk_id IS NULL)
      AND r.entity_id = _record_events.entity_id
$$;

-- The events of a statement (statement_id: the id of its first event).
CREATE FUNCTION audit._statement_events(statement_id bigint) RETURNS SETOF audit.events
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.occurred_at, r.txid, r.statement_id, r.actor, r.actor_role, r.action, r.entity_type, r.entity_id,
           r.changes, r.ip, r.user_agent, r.session_id, r.source, r.org_id, r.metadata, r.hash, r.block_id
    FROM audit._event_rows r
    WHERE (r.chunk_id = _statement_events.statement_id
           OR (r.statement_id = _statement_events.statement_id AND r.statement_id <> r.chunk_id))
$$;

COMMENT ON VIEW audit.events IS
    'The audit trail, one row per event. hash: what the ledger seals for it; block_id: the block (NULL until stored).';

CREATE VIEW audit.tracked_tables AS
SELECT t.relid::regclass AS table_name,
       t.entity_type,
       ARRAY(SELECT a.attname FROM unnest(t.key_attnums) WITH ORDINALITY k(attnum, pos)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = t.relid AND a.attnum = k.attnum
             ORDER BY k.pos) AS key_columns,
       ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = t.relid AND a.attnum = ANY (t.exclude_attnums) ORDER BY a.attnum) AS excluded_columns,
       ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = t.relid AND a.attnum = ANY (t.mask_attnums) ORDER BY a.attnum) AS masked_columns,
       c.relkind = 'p' AS partitioned,
       t.capture_replicated,
       t.enabled_at,
       t.enabled_by
FROM audit.tracked t
JOIN pg_catalog.pg_class c ON c.oid = t.relid;

COMMENT ON VIEW audit.tracked_tables IS 'Tables captured by audit.enable(), with their options.';

-- Attribute numbers of `columns` in `target`; unknown names are an error.
CREATE FUNCTION audit._attnums(target regclass, columns text[], purpose text) RETURNS int2[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing text;
    result int2[];
BEGIN
    SELECT string_agg(quote_literal(col), ', ') INTO missing
    FROM unnest(coalesce(columns, '{}')) AS col
    WHERE NOT EXISTS (SELECT FROM pg_attribute a
                      WHERE a.attrelid = target AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION '% column(s) % not found in table %', purpose, missing, target
            USING ERRCODE = 'undefined_column',
                  HINT = format('Columns of %s: %s', target,
                                (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                                  WHERE attrelid = target AND attnum > 0 AND NOT attisdropped));
    END IF;
    SELECT coalesce(array_agg(a.attnum ORDER BY k.pos), '{}') INTO result
    FROM unnest(coalesce(columns, '{}')) WITH ORDINALITY k(col, pos)
    JOIN pg_attribute a ON a.attrelid = target AND a.attname = k.col;
    RETURN result;
END
$$;

-- (Re)creates the capture triggers of a tracked table and of all its partitions.
CREATE FUNCTION audit._install_triggers(target regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg audit.tracked;
    rel regclass;
BEGIN
    SELECT * INTO STRICT cfg FROM audit.tracked WHERE relid = target;
    FOR rel IN SELECT relid FROM pg_partition_tree(target) UNION SELECT target LOOP
        PERFORM audit._drop_triggers(rel);
        EXECUTE format('CREATE TRIGGER audit_capture_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS audit_new '
                       'FOR EACH STATEMENT EXECUTE FUNCTION audit.capture()', rel);
        EXECUTE format('CREATE TRIGGER audit_capture_update AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS audit_old NEW TABLE AS audit_new '
                       'FOR EACH STATEMENT EXECUTE FUNCTION audit.capture()', rel);
        EXECUTE format('CREATE TRIGGER audit_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS audit_old '
                       'FOR EACH STATEMENT EXECUTE FUNCTION audit.capture()', rel);
        EXECUTE format('CREATE TRIGGER audit_capture_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION audit.capture()', rel);
        IF cfg.capture_replicated THEN
            -- The apply worker fires row triggers only, and only REPLICA or ALWAYS ones.
            IF rel = target THEN
                EXECUTE format('CREATE TRIGGER audit_capture_replicated AFTER INSERT OR UPDATE OR DELETE ON %s '
                               'FOR EACH ROW EXECUTE FUNCTION audit.capture_row()', rel);
                EXECUTE format('ALTER TABLE %s ENABLE REPLICA TRIGGER audit_capture_replicated', rel);
            END IF;
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER audit_capture_truncate', rel);
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION audit._drop_triggers(target regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trigger_name text;
BEGIN
    FOR trigger_name IN
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = target AND tgname LIKE 'audit\_capture\_%' AND tgparentid = 0
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, target);
    END LOOP;
END
$$;

CREATE FUNCTION audit.enable(
    target regclass,
    exclude_columns text[] DEFAULT '{}',
    mask_columns text[] DEFAULT '{}',
    entity_name text DEFAULT NULL,
    key_columns text[] DEFAULT NULL,
    capture_replicated boolean DEFAULT false
) RETURNS SETOF audit.tracked_tables
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel        pg_class;
    keys       int2[];
    excluded   int2[];
    masked     int2[];
    entity     text;
    qualified  text;
    previous   audit.tracked;
BEGIN
    SELECT * INTO rel FROM pg_class WHERE oid = target;
    qualified := format('%I.%I', (SELECT nspname FROM pg_namespace WHERE oid = rel.relnamespace), rel.relname);
    PERFORM audit._check_capture();

    IF NOT pg_has_role(audit._caller(), rel.relowner, 'USAGE') AND NOT pg_has_role(audit._caller(), 'audit_admin', 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to audit table %', qualified
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the table owner or a member of audit_admin can enable auditing.';
    END IF;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table (it is a %)', qualified,
              CASE rel.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                               WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index' ELSE 'relation of kind ' || rel.relkind::text END
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Audit the tables that the view or object reads from.';
    END IF;
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION 'temporary table % cannot be audited', qualified
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Temporary tables vanish with their session; audit a permanent table.';
    END IF;
    IF rel.relispartition THEN
        RAISE EXCEPTION '% is a partition', qualified
            USING ERRCODE = 'wrong_object_type',
                  HINT = format('Enable auditing on the partitioned table %s; it covers every partition.',
                                (SELECT a::regclass FROM pg_partition_ancestors(target) a
                                 ORDER BY (SELECT count(*) FROM pg_partition_ancestors(a)) LIMIT 1));
    END IF;
    IF rel.relnamespace IN ('audit'::regnamespace, 'pg_catalog'::regnamespace) THEN
        RAISE EXCEPTION 'the audit trail and system catalogs cannot be audited'
            USING ERRCODE = 'wrong_object_type', HINT = 'Audit application tables.';
    END IF;

    IF key_columns IS NOT NULL THEN
        IF cardinality(key_columns) = 0 THEN
            RAISE EXCEPTION 'key_columns must name at least one column'
                USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass key_columns => ARRAY[''id''].';
        END IF;
        keys := audit._attnums(target, key_columns, 'key');
    ELSE
        SELECT i.indkey::int2[] INTO keys FROM pg_index i WHERE i.indrelid = target AND i.indisprimary;
        IF keys IS NULL THEN
            RAISE EXCEPTION 'table % has no primary key', qualified
                USING ERRCODE = 'invalid_table_definition',
                      HINT = format('Add a primary key, or name the columns that identify a row: SELECT audit.enable(%L, key_columns => ARRAY[''id'']);', qualified);
        END IF;
    END IF;
    excluded := audit._attnums(target, exclude_columns, 'excluded');
    masked := audit._attnums(target, mask_columns, 'masked');
    IF excluded && masked THEN
        RAISE EXCEPTION 'a column cannot be both excluded and masked'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Exclude a column to ignore it; mask it to record that it changed without its values.';
    END IF;
    IF keys && (excluded || masked) THEN
        RAISE EXCEPTION 'key columns of % cannot be excluded or masked', qualified
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The key identifies the record in every event (entity_id).';
    END IF;
    IF entity_name IS NOT NULL AND btrim(entity_name) = '' THEN
        RAISE EXCEPTION 'entity_name cannot be empty'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass NULL to use the table name.';
    END IF;
    entity := coalesce(btrim(entity_name),
                       CASE WHEN rel.relnamespace = 'public'::regnamespace THEN rel.relname::text ELSE qualified END);

    SELECT * INTO previous FROM audit.tracked WHERE relid = target;
    INSERT INTO audit.tracked AS t (relid, entity_type, key_attnums, exclude_attnums, mask_attnums,
                                    capture_replicated, enabled_at, enabled_by)
    VALUES (target, entity, keys, excluded, masked, capture_replicated, now(), audit._caller()::regrole::text)
    ON CONFLICT (relid) DO UPDATE
        SET entity_type = excluded.entity_type,
            key_attnums = excluded.key_attnums, exclude_attnums = excluded.exclude_attnums,
            mask_attnums = excluded.mask_attnums, capture_replicated = excluded.capture_replicated,
            enabled_at = excluded.enabled_at, enabled_by = excluded.enabled_by;
    PERFORM audit._install_triggers(target);
    PERFORM audit.ensure_partitions();
    PERFORM audit.log_event('CONFIG_CHANGE', 'audit.tracked', qualified,
        jsonb_build_object('operation', CASE WHEN previous IS NULL THEN 'enable' ELSE 'update' END,
                           'entity_type', entity,
                           'excluded_columns', exclude_columns, 'masked_columns', mask_columns,
                           'key_columns', key_columns, 'capture_replicated', capture_replicated));
    RETURN QUERY SELECT * FROM audit.tracked_tables WHERE table_name = target;
END
$$;

CREATE FUNCTION audit.disable(target regclass) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    removed audit.tracked;
    rel regclass;
BEGIN
    IF NOT pg_has_role(audit._caller(), (SELECT relowner FROM pg_class WHERE oid = target), 'USAGE')
       AND NOT pg_has_role(audit._caller(), 'audit_admin', 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to stop auditing %', target
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the table owner or a member of audit_admin can disable auditing.';
    END IF;
    DELETE FROM audit.tracked WHERE relid = target RETURNING * INTO removed;
    IF removed IS NULL THEN
        RETURN false;
    END IF;
    FOR rel IN SELECT relid FROM pg_partition_tree(target) UNION SELECT target LOOP
        PERFORM audit._drop_triggers(rel);
    END LOOP;
    PERFORM audit.log_event('CONFIG_CHANGE', 'audit.tracked', audit._qualified_name(target),
                            jsonb_build_object('operation', 'disable', 'entity_type', removed.entity_type));
    RETURN true;
END
$$;

-- Keeps tracking in step with DDL: new or attached partitions get the capture
-- triggers, dropped tables leave audit.tracked (renames need nothing: tables are
-- tracked by regclass).
CREATE FUNCTION audit._on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
    tracked_root regclass;
BEGIN
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands()
               WHERE object_type IN ('table', 'table column') AND schema_name IS DISTINCT FROM 'audit' LOOP
        SELECT t.relid INTO tracked_root FROM pg_partition_ancestors(cmd.objid) a
        JOIN audit.tracked t ON t.relid = a.relid AND a.relid <> cmd.objid LIMIT 1;
        IF tracked_root IS NOT NULL THEN
            PERFORM audit._install_triggers(tracked_root);
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION audit._on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM audit.tracked t
    USING pg_event_trigger_dropped_objects() d
    WHERE d.object_type = 'table' AND d.objid = t.relid;
END
$$;

CREATE EVENT TRIGGER audit_ddl ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION audit._on_ddl();
CREATE EVENT TRIGGER audit_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION audit._on_drop();

CREATE VIEW audit.field_changes AS
SELECT e.id AS event_id,
       e.occurred_at,
       e.actor,
       e.actor_role,
       e.action,
       e.entity_type,
       e.entity_id,
       c.key AS field,
       c.value ->> 'old' AS old_value,
       c.value ->> 'new' AS new_value,
       coalesce((c.value ->> 'masked')::boolean, false) AS masked,
       e.source,
       e.ip,
       e.session_id,
       e.statement_id
FROM audit.events e
CROSS JOIN LATERAL jsonb_each(e.changes) AS c(key, value);

COMMENT ON VIEW audit.field_changes IS 'One row per changed field of every event.';

-- schema.table of a relation, quoted where needed (stable across search_path).
CREATE FUNCTION audit._qualified_name(rel regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel
$$;

-- The stored entity types a name given by a user stands for: the tracked
-- entities whose entity name (any case) or table name matches, and the name
-- itself (application events). Callers write `entity_type = ANY ((SELECT
-- audit._entity_types(...))::text[])`: evaluated once per query, not on every row the
-- entity_id hash index returns.
CREATE FUNCTION audit._entity_types(name text) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(DISTINCT t) FROM (
        SELECT name AS t
        UNION ALL
        SELECT tr.entity_type FROM audit.tracked tr JOIN pg_class c ON c.oid = tr.relid
        WHERE lower(tr.entity_type) = lower(name) OR lower(c.relname) = lower(name)
           OR lower(audit._qualified_name(tr.relid)) = lower(name)) s
$$;

CREATE FUNCTION audit.history(
    entity_type text,
    entity_id text,
    field text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL
) RETURNS TABLE (
    event_id bigint,
    occurred_at timestamptz,
    action text,
    field text,
    old_value text,
    new_value text,
    actor text,
    actor_role text,
    source text,
    ip inet,
    session_id text,
    statement_id bigint
)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.occurred_at, r.action, c.key, c.value ->> 'old', c.value ->> 'new',
           r.actor, r.actor_role, r.source, r.ip, r.session_id, r.statement_id
    FROM (SELECT audit._entity_types(history.entity_type) AS types) t
    CROSS JOIN LATERAL audit._record_events(t.types, history.entity_id) r
    LEFT JOIN LATERAL jsonb_each(r.changes) AS c(key, value) ON true
    WHERE (history.field IS NULL OR c.key = history.field)
      AND (history.since IS NULL OR r.occurred_at >= history.since)
      AND (history.until IS NULL OR r.occurred_at < history.until)
    ORDER BY r.id, r.occurred_at, c.key  -- the session's own events not stored yet (no id) last, by time
$$;

CREATE FUNCTION audit.user_activity(
    actor text,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    action text DEFAULT NULL
) RETURNS SETOF audit.events
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.occurred_at, r.txid, r.statement_id, r.actor, r.actor_role, r.action, r.entity_type, r.entity_id,
           r.changes, r.ip, r.user_agent, r.session_id, r.source, r.org_id, r.metadata, r.hash, r.block_id
    FROM audit._event_rows r
    WHERE r.actor = user_activity.actor
      AND (user_activity.since IS NULL OR r.occurred_at >= user_activity.since)
      AND (user_activity.until IS NULL OR r.occurred_at < user_activity.until)
      AND (user_activity.action IS NULL OR r.action = upper(user_activity.action))
    ORDER BY r.chunk_id DESC, r.id DESC
$$;

-- Privileges: reading needs audit_reader; configuring needs table ownership or audit_admin.
GRANT SELECT ON audit.tracked_tables, audit.field_changes, audit.events, audit.chunks, audit._event_rows TO audit_reader;
-- The session's events not stored yet are read through the views above, by readers only.
REVOKE EXECUTE ON FUNCTION audit._own_pending_chunks() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit._own_pending_chunks() TO audit_reader;
REVOKE EXECUTE ON FUNCTION audit.ensure_partitions(timestamptz, int), audit._partition_for(timestamptz), audit._index_partition(regclass),
    audit._merge_entity_runs(), audit._install_triggers(regclass),
    audit._drop_triggers(regclass), audit._attnums(regclass, text[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.ensure_partitions(timestamptz, int) TO audit_admin;
REVOKE EXECUTE ON FUNCTION audit.history(text, text, text, timestamptz, timestamptz),
    audit.user_activity(text, timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.history(text, text, text, timestamptz, timestamptz),
    audit.user_activity(text, timestamptz, timestamptz, text) TO audit_reader;

CREATE TRIGGER blocks_append_only BEFORE UPDATE OR DELETE ON audit.blocks
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_modification();
CREATE TRIGGER blocks_append_only_truncate BEFORE TRUNCATE ON audit.blocks
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_modification();

-- A small document to keep outside the database (write-once storage, a ticket,
-- an e-mail): audit.verify_digest() later proves the chain still holds it.
CREATE FUNCTION audit.digest() RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'version', 1,
        'block_id', b.block_id,
        'block_hash', encode(b.block_hash, 'hex'),
        'merkle_root', encode(b.merkle_root, 'hex'),
        'sealed_at', b.sealed_at,
        'last_event_id', b.last_event_id,
        'events_sealed', (SELECT sum(event_count) FROM audit.blocks WHERE block_id <= b.block_id))
    FROM audit.blocks b ORDER BY b.block_id DESC LIMIT 1
$$;

REVOKE EXECUTE ON FUNCTION audit.seal(int), audit.verify(bigint, bigint), audit.verify_digest(jsonb), audit.digest() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.seal(int) TO audit_admin;
GRANT EXECUTE ON FUNCTION audit.verify(bigint, bigint), audit.verify_digest(jsonb), audit.digest() TO audit_reader;

-- In the database the worker serves, capture works from now on.
SELECT audit._prepare_capture();
