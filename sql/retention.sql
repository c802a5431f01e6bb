-- Retention: policies per category, archival to audit_archive, deletion with
-- proof in audit.deletion_log. Run by the background worker or audit.run_retention().

CREATE SCHEMA audit_archive;
GRANT USAGE ON SCHEMA audit_archive TO audit_reader;

-- Same columns as audit.event_chunks, so the verifier reads archived events
-- like live ones. Monthly partitions, made on demand.
CREATE TABLE audit_archive.event_chunks (LIKE audit.event_chunks INCLUDING COMPRESSION INCLUDING STORAGE) PARTITION BY RANGE (occurred_at);
COMMENT ON TABLE audit_archive.event_chunks IS 'Events past their retention, kept for audit.archive_grace before deletion.';

CREATE VIEW audit_archive._event_rows AS
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
FROM audit_archive.event_chunks c
CROSS JOIN LATERAL generate_series(0, c.event_count - 1) AS n;

CREATE VIEW audit_archive.events AS
SELECT id, occurred_at, txid, statement_id, actor, actor_role, action, entity_type, entity_id, changes,
       ip, user_agent, session_id, source, org_id, metadata, hash, block_id
FROM audit_archive._event_rows;

COMMENT ON VIEW audit_archive.events IS 'Archived events, one row per event.';

CREATE FUNCTION audit_archive._event(event_id bigint) RETURNS SETOF audit.events
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.occurred_at, r.txid, r.statement_id, r.actor, r.actor_role, r.action, r.entity_type, r.entity_id,
           r.changes, r.ip, r.user_agent, r.session_id, r.source, r.org_id, r.metadata, r.hash, r.block_id
    FROM audit_archive._event_rows r
    WHERE r.chunk_id BETWEEN event_id - 99 AND event_id AND r.id = event_id
$$;

-- NULL instead of an error for text that is not an interval (set_retention explains).
CREATE FUNCTION audit._interval_or_null(value text) RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN value::interval;
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
    RETURN NULL;
END
$$;

CREATE TABLE audit.retention_settings (
    category    text        PRIMARY KEY,
    keep_months int         CHECK (keep_months > 0),   -- NULL: kept forever
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL DEFAULT current_user
);

-- Every deletion, kept forever: what went, and the chain head at that moment.
-- Blocks keep the hash of every event they sealed, so verify() still checks
-- the chain and treats these ids as deleted, not missing.
CREATE TABLE audit.deletion_log (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    deleted_at       timestamptz NOT NULL DEFAULT now(),
    category         text        NOT NULL,
    oldest           timestamptz NOT NULL,
    newest           timestamptz NOT NULL,
    event_count      bigint      NOT NULL,
    first_event_id   bigint      NOT NULL,
    last_event_id    bigint      NOT NULL,
    event_ids        bigint[]    NOT NULL,
    chain_block_id   bigint,
    chain_block_hash bytea,
    method           text        NOT NULL CHECK (method IN ('rows', 'partition'))
);

SELECT pg_catalog.pg_extension_config_dump('audit.retention_settings', '');
SELECT pg_catalog.pg_extension_config_dump('audit.deletion_log', '');
REVOKE ALL ON audit_archive.event_chunks, audit.retention_settings, audit.deletion_log FROM PUBLIC;
GRANT SELECT ON audit_archive.event_chunks, audit_archive.events, audit_archive._event_rows, audit.retention_settings,
    audit.deletion_log TO audit_reader;

CREATE TRIGGER archive_append_only BEFORE UPDATE OR DELETE ON audit_archive.event_chunks
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_modification();
CREATE TRIGGER deletion_log_append_only BEFORE UPDATE OR DELETE ON audit.deletion_log
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_modification();
CREATE TRIGGER deletion_log_append_only_truncate BEFORE TRUNCATE ON audit.deletion_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_modification();

CREATE VIEW audit.retention_policies AS
SELECT c.category,
       CASE WHEN k.months IS NULL THEN 'infinity' ELSE make_interval(months => k.months)::text END AS keep,
       k.months AS keep_months,
       make_interval(months => c.default_months)::text AS default_keep,
       make_interval(months => c.min_months)::text AS min_keep,
       coalesce(make_interval(months => c.max_months)::text, 'infinity') AS max_keep,
       c.actions,
       s.updated_at,
       s.updated_by
FROM audit.retention_categories() c
LEFT JOIN audit.retention_settings s ON s.category = c.category
CROSS JOIN LATERAL (SELECT CASE WHEN s.category IS NULL THEN c.default_months ELSE s.keep_months END AS months) k;

COMMENT ON VIEW audit.retention_policies IS 'How long each category of events is kept, and the range it may be set to.';

-- The events of a category: its documented actions, or for record changes
-- everything no other category claims (custom actions included).
CREATE FUNCTION audit._category_condition(category text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN category = 'record_changes'
                THEN format('action <> ALL (%L::text[])',
                            (SELECT array_agg(a) FROM audit.retention_categories() c, unnest(c.actions) a
                             WHERE c.category <> 'record_changes'))
                ELSE format('action = ANY (%L::text[])',
                            (SELECT c.actions FROM audit.retention_categories() c WHERE c.category = _category_condition.category))
           END
$$;

-- Per category: events older than archive_before are archived, archived events
-- older than delete_before are deleted.
CREATE FUNCTION audit._retention_plan(as_of timestamptz)
RETURNS TABLE (category text, keep_months int, archive_before timestamptz, delete_before timestamptz, condition text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.category, p.keep_months,
           as_of - make_interval(months => p.keep_months),
           as_of - make_interval(months => p.keep_months)
                 - coalesce(nullif(current_setting('audit.archive_grace', true), ''), '90 days')::interval,
           audit._category_condition(p.category)
    FROM audit.retention_policies p
    WHERE p.keep_months IS NOT NULL
    ORDER BY p.category
$$;

CREATE FUNCTION audit._ensure_archive_partition(month_start timestamp) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    partition text := 'event_chunks_' || to_char(month_start, 'YYYYMM');
    tablespace text := nullif(current_setting('audit.archive_tablespace', true), '');
BEGIN
    IF to_regclass('audit_archive.' || partition) IS NULL THEN
        EXECUTE format('CREATE TABLE audit_archive.%I PARTITION OF audit_archive.event_chunks FOR VALUES FROM (%L) TO (%L)%s',
                       partition, month_start AT TIME ZONE 'UTC', (month_start + interval '1 month') AT TIME ZONE 'UTC',
                       CASE WHEN tablespace IS NULL THEN '' ELSE format(' TABLESPACE %I', tablespace) END);
        EXECUTE format('CREATE TRIGGER archive_append_only_truncate BEFORE TRUNCATE ON audit_archive.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_modification()', partition);
        PERFORM audit._index_partition(('audit_archive.' || quote_ident(partition))::regclass);
    END IF;
END
$$;

-- The last chunk id of the next batch in `source`: the first `batch` chunks
-- after `after_id` (and at most `up_to_id`) of a category older than `before`.
CREATE FUNCTION audit._batch_end(source regclass, condition text, before timestamptz, batch int,
                                 after_id bigint, up_to_id bigint) RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    batch_end bigint;
BEGIN
    EXECUTE format('SELECT max(id) FROM (SELECT id FROM %s WHERE id > $3 AND id <= $4 AND occurred_at < $1 AND %s
                                         ORDER BY id LIMIT $2) s', source, condition)
        USING before, batch, after_id, up_to_id INTO batch_end;
    RETURN batch_end;
END
$$;

-- The ids of the events of chunks (first id, event count), ascending.
CREATE FUNCTION audit._chunk_event_ids(first_ids bigint[], counts int2[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE
AS $$
    SELECT coalesce(array_agg(x ORDER BY x), '{}')
    FROM unnest(first_ids, counts) c(first_id, n), generate_series(c.first_id, c.first_id + c.n - 1) x
$$;

-- Writes one deletion_log row for deleted events of a category, with the chain
-- head at this moment; returns how many events it records (0 for none).
CREATE FUNCTION audit._log_deletion(category text, method text, ids bigint[], oldest timestamptz, newest timestamptz)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO audit.deletion_log (category, oldest, newest, event_count, first_event_id, last_event_id, event_ids,
                                    chain_block_id, chain_block_hash, method)
    SELECT category, oldest, newest, cardinality(ids), ids[1], ids[cardinality(ids)], ids,
           (SELECT block_id FROM audit.blocks ORDER BY block_id DESC LIMIT 1),
           (SELECT block_hash FROM audit.blocks ORDER BY block_id DESC LIMIT 1), method
    WHERE cardinality(ids) > 0
    RETURNING event_count
$$;

-- Moves up to `batch` expired events of one category, with ids above `after_id`,
-- to the archive. Returns how many and the last id moved (where the next batch
-- starts, so that a run never rescans the rows it already moved).
CREATE FUNCTION audit._archive_batch(condition text, before timestamptz, batch int, after_id bigint, up_to_id bigint,
                                     OUT moved bigint, OUT last_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    month_start timestamp;
    upto bigint;
BEGIN
    -- The batch is an id range: the next `batch` expired ids after `after_id`.
    upto := audit._batch_end('audit.event_chunks', condition, before, batch, after_id, up_to_id);
    IF upto IS NULL THEN
        moved := 0;
        RETURN;
    END IF;
    FOR month_start IN EXECUTE format(
        'SELECT DISTINCT date_trunc(''month'', occurred_at AT TIME ZONE ''UTC'') FROM audit.event_chunks
          WHERE id > $2 AND id <= $3 AND occurred_at < $1 AND %s', condition)
        USING before, after_id, upto
    LOOP
        PERFORM audit._ensure_archive_partition(month_start);
    END LOOP;
    EXECUTE format(
        'WITH moved AS (DELETE FROM audit.event_chunks WHERE id > $2 AND id <= $3 AND occurred_at < $1 AND %s RETURNING *),
              stored AS (INSERT INTO audit_archive.event_chunks SELECT * FROM moved RETURNING event_count)
         SELECT coalesce(sum(event_count), 0) FROM stored', condition)
        USING before, after_id, upto INTO moved;
    last_id := upto;
END
$$;

-- Deletes up to `batch` archived events of one category past their grace, with
-- ids above `after_id`, logging them. Returns how many and the last id deleted.
CREATE FUNCTION audit._delete_batch(category text, condition text, before timestamptz, batch int, after_id bigint,
                                    up_to_id bigint, OUT deleted bigint, OUT last_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upto bigint;
BEGIN
    upto := audit._batch_end('audit_archive.event_chunks', condition, before, batch, after_id, up_to_id);
    deleted := 0;
    IF upto IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'WITH gone AS (DELETE FROM audit_archive.event_chunks WHERE id > $2 AND id <= $3 AND occurred_at < $1 AND %s
                       RETURNING id, event_count, occurred_at)
         SELECT audit._log_deletion($4, ''rows'', audit._chunk_event_ids(array_agg(id), array_agg(event_count)),
                                    min(occurred_at), max(occurred_at)) FROM gone',
        condition)
        USING before, after_id, upto, category INTO deleted;
    deleted := coalesce(deleted, 0);
    last_id := upto;
END
$$;

-- Archive partitions whose every event is past its category's grace are
-- dropped whole, one deletion_log row per category they held.
CREATE FUNCTION audit._drop_expired_archive_partitions(as_of timestamptz) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part record;
    plan record;
    expired boolean;
    present boolean;
    dropped bigint := 0;
    n bigint;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS rel, (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_archive.event_chunks'::regclass
    LOOP
        -- Every category present must allow deletion of the whole month. Only the
        -- categories that would keep it are looked for, the commonest first, and
        -- the first one found settles it (an absent category costs a scan).
        expired := true;
        FOR plan IN
            SELECT p.category FROM audit.retention_policies p
            LEFT JOIN audit._retention_plan(as_of) r ON r.category = p.category
            WHERE p.keep_months IS NULL OR part.upper_bound > r.delete_before
            ORDER BY p.category = 'record_changes' DESC, p.category
        LOOP
            EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE %s)', part.rel, audit._category_condition(plan.category))
                INTO STRICT present;
            IF present THEN
                expired := false;
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN NOT expired;
        FOR plan IN SELECT * FROM audit._retention_plan(as_of) LOOP
            EXECUTE format(
                'SELECT audit._log_deletion($1, ''partition'', audit._chunk_event_ids(array_agg(id), array_agg(event_count)),
                                            min(occurred_at), max(occurred_at))
                 FROM %s WHERE %s', part.rel, plan.condition)
                USING plan.category INTO n;
            dropped := dropped + coalesce(n, 0);
        END LOOP;
        EXECUTE format('DROP TABLE %s', part.rel);
    END LOOP;
    RETURN dropped;
END
$$;

-- One batch of work per category and phase; the worker commits after each.
-- Whole expired archive partitions are dropped before any row is deleted one by
-- one. Within a transaction, each category resumes after the last id it handled.
-- Only events with ids up to `up_to_id` (the newest when the run began) are
-- handled, so a run ends even while new events keep arriving.
CREATE FUNCTION audit._retention_step(as_of timestamptz, batch int, up_to_id bigint)
RETURNS TABLE (category text, archived bigint, deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    plan record;
    progress record;
    step record;
    dropped bigint;
BEGIN
    PERFORM set_config('audit.maintenance', 'on', true);
    IF to_regclass('pg_temp.audit_retention_progress') IS NULL THEN
        CREATE TEMP TABLE audit_retention_progress (
            category text PRIMARY KEY, archived_to bigint NOT NULL, deleted_to bigint NOT NULL, archived bigint
        ) ON COMMIT DROP;
    END IF;
    FOR plan IN SELECT * FROM audit._retention_plan(as_of) LOOP
        INSERT INTO audit_retention_progress VALUES (plan.category, 0, 0, 0) ON CONFLICT DO NOTHING;
        SELECT * INTO progress FROM audit_retention_progress p WHERE p.category = plan.category;
        step := audit._archive_batch(plan.condition, plan.archive_before, batch, progress.archived_to, up_to_id);
        UPDATE audit_retention_progress p SET archived_to = coalesce(step.last_id, p.archived_to), archived = step.moved
        WHERE p.category = plan.category;
    END LOOP;
    dropped := audit._drop_expired_archive_partitions(as_of);
    FOR plan IN SELECT * FROM audit._retention_plan(as_of) LOOP
        SELECT * INTO progress FROM audit_retention_progress p WHERE p.category = plan.category;
        step := audit._delete_batch(plan.category, plan.condition, plan.delete_before, batch, progress.deleted_to, up_to_id);
        UPDATE audit_retention_progress p SET deleted_to = coalesce(step.last_id, p.deleted_to) WHERE p.category = plan.category;
        category := plan.category;
        archived := progress.archived;
        deleted := step.deleted;
        RETURN NEXT;
    END LOOP;
    category := 'whole archive partitions';
    archived := 0;
    deleted := dropped;
    RETURN NEXT;
    PERFORM set_config('audit.maintenance', '', true);
END
$$;

-- The newest event id now: a retention run handles nothing newer.
CREATE FUNCTION audit._newest_event_id() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT next_event_id - 1 FROM audit.materializer_state $$;

CREATE FUNCTION audit.run_retention(as_of timestamptz DEFAULT now())
RETURNS TABLE (category text, archived bigint, deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    batch int := coalesce(nullif(current_setting('audit.retention_batch_size', true), ''), '10000')::int;
    up_to_id bigint := audit._newest_event_id();
    step record;
    progress bigint;
BEGIN
    IF NOT pg_has_role(audit._caller(), 'audit_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied to run retention'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Only members of audit_admin may run retention.';
    END IF;
    IF to_regclass('pg_temp.audit_retention_totals') IS NULL THEN
        CREATE TEMP TABLE audit_retention_totals (category text PRIMARY KEY, archived bigint, deleted bigint) ON COMMIT DROP;
    END IF;
    TRUNCATE audit_retention_totals;
    IF to_regclass('pg_temp.audit_retention_progress') IS NOT NULL THEN
        TRUNCATE audit_retention_progress;  -- a new run rescans from the start
    END IF;
    LOOP
        progress := 0;
        FOR step IN SELECT * FROM audit._retention_step(as_of, batch, up_to_id) LOOP
            INSERT INTO audit_retention_totals AS t VALUES (step.category, step.archived, step.deleted)
            ON CONFLICT ON CONSTRAINT audit_retention_totals_pkey
            DO UPDATE SET archived = t.archived + excluded.archived, deleted = t.deleted + excluded.deleted;
            progress := progress + step.archived + step.deleted;
        END LOOP;
        EXIT WHEN progress = 0;
    END LOOP;
    RETURN QUERY SELECT t.category, t.archived, t.deleted FROM audit_retention_totals t ORDER BY t.category;
END
$$;

CREATE FUNCTION audit.retention_preview(as_of timestamptz DEFAULT now())
RETURNS TABLE (category text, keep text, archive_before timestamptz, to_archive bigint, delete_before timestamptz, to_delete bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    plan record;
BEGIN
    FOR plan IN SELECT * FROM audit._retention_plan(as_of) LOOP
        category := plan.category;
        keep := make_interval(months => plan.keep_months)::text;
        archive_before := plan.archive_before;
        delete_before := plan.delete_before;
        EXECUTE format('SELECT coalesce(sum(event_count), 0) FROM audit.event_chunks WHERE occurred_at < $1 AND %s',
                       plan.condition)
            USING plan.archive_before INTO to_archive;
        EXECUTE format('SELECT coalesce(sum(event_count), 0)
                          FROM (SELECT occurred_at, action, event_count FROM audit_archive.event_chunks
                                UNION ALL SELECT occurred_at, action, event_count FROM audit.event_chunks) c
                         WHERE occurred_at < $1 AND %s', plan.condition)
            USING plan.delete_before INTO to_delete;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION audit.run_retention(timestamptz), audit._retention_step(timestamptz, int, bigint),
    audit._newest_event_id(), audit._archive_batch(text, timestamptz, int, bigint, bigint),
    audit._delete_batch(text, text, timestamptz, int, bigint, bigint),
    audit._batch_end(regclass, text, timestamptz, int, bigint, bigint),
    audit._log_deletion(text, text, bigint[], timestamptz, timestamptz), audit._chunk_event_ids(bigint[], int2[]),
    audit._drop_expired_archive_partitions(timestamptz), audit._ensure_archive_partition(timestamp),
    audit.retention_preview(timestamptz), audit.set_retention(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.run_retention(timestamptz), audit.set_retention(text, text) TO audit_admin;
GRANT EXECUTE ON FUNCTION audit.retention_preview(timestamptz) TO audit_reader;
GRANT SELECT ON audit.retention_policies TO audit_reader;
