-- Search, the query API (mirrors GET /v1/audit-trail, /:id, /stats, /entity/:type/:id),
-- saved filters and export.

-- An event as the API returns it (hash in hex).
CREATE FUNCTION audit._event_json(e audit.events) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT to_jsonb(e) - 'hash' - 'txid' || jsonb_build_object('txid', e.txid::text, 'hash', encode(e.hash, 'hex')) $$;

-- The event id a page cursor stands for (the last event of the previous page).
CREATE FUNCTION audit._cursor_id(cursor text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF cursor IS NULL OR cursor = '' THEN
        RETURN NULL;
    END IF;
    IF cursor !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'invalid cursor %', quote_literal(cursor)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the next_cursor of the previous page (or the id of its last event), or NULL for the first page.';
    END IF;
    RETURN cursor::bigint;
END
$$;

-- Where searches read events with their chunk's columns (audit._event_rows, the archive's too).
CREATE FUNCTION audit._events_source(include_archived boolean) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN include_archived
                  THEN '(SELECT * FROM audit._event_rows UNION ALL SELECT * FROM audit_archive._event_rows)'
                  ELSE 'audit._event_rows' END $$;

-- The columns of audit.events, read from audit._event_rows `alias`.
CREATE FUNCTION audit._event_columns(alias text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT string_agg(format('%I.%I', alias, a.attname), ', ' ORDER BY a.attnum)
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = 'audit.events'::regclass AND a.attnum > 0 AND NOT a.attisdropped
$$;

CREATE FUNCTION audit.search(query text, max_rows int DEFAULT 100, cursor text DEFAULT NULL, include_archived boolean DEFAULT false)
RETURNS SETOF audit.events
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- A search reads a few hundred rows: compiling it (above jit_above_cost
-- when the trail's statistics are not in yet) took 45 ms of a 4 ms query.
SET jit = off
AS $$
DECLARE
    compiled record;
BEGIN
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 10000, not %', max_rows
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Page through larger results with cursor.';
    END IF;
    SELECT * INTO compiled FROM audit._compile_search(coalesce(query, ''));
    -- Newest first: chunks in id order, then their events (r.chunk_id < cursor
    -- lets an index start at the cursor). A record's events are found first
    -- (OFFSET 0 keeps the planner from walking the id index instead).
    RETURN QUERY EXECUTE format(
        'SELECT %s FROM (SELECT * FROM %s r WHERE %s AND ($2 IS NULL OR (r.chunk_id < $2 AND r.id < $2))%s) r
          ORDER BY r.chunk_id DESC, r.id DESC LIMIT $3',
        audit._event_columns('r'), audit._events_source(include_archived), compiled.condition,
        CASE WHEN compiled.record_lookup THEN ' OFFSET 0' ELSE '' END)
        USING compiled.params, audit._cursor_id(cursor), max_rows;
END
$$;

-- The SQL audit.search() runs for a query ($2: the cursor, $3: max_rows).
CREATE FUNCTION audit.explain_search(query text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(E'SELECT %s\nFROM (SELECT * FROM audit._event_rows r\n      WHERE %s\n        AND ($2 IS NULL OR (r.chunk_id < $2 AND r.id < $2))%s) r\nORDER BY r.chunk_id DESC, r.id DESC LIMIT $3\n-- $1 = %s',
                  audit._event_columns('r'), c.condition, CASE WHEN c.record_lookup THEN E'\n      OFFSET 0' ELSE '' END,
                  quote_literal(c.params::text))
    FROM audit._compile_search(coalesce(query, '')) c
$$;

CREATE FUNCTION audit.list_events(
    start_date timestamptz DEFAULT NULL,
    end_date timestamptz DEFAULT NULL,
    user_id text DEFAULT NULL,
    action text DEFAULT NULL,
    entity_type text DEFAULT NULL,
    page_size int DEFAULT 100,
    cursor text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    after_id bigint := audit._cursor_id(cursor);
    page jsonb;
    fetched int;
    last_id bigint;
BEGIN
    IF page_size IS NULL OR page_size NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'page_size must be between 1 and 500, not %', page_size
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use next_cursor to fetch further pages.';
    END IF;
    -- One row more than the page tells whether there is a next page.
    SELECT coalesce(jsonb_agg(audit._event_json(p.ev) ORDER BY (p.ev).id DESC) FILTER (WHERE p.n <= page_size), '[]'),
           count(*), min((p.ev).id) FILTER (WHERE p.n <= page_size)
    INTO page, fetched, last_id
    FROM (SELECT ROW(r.id, r.occurred_at, r.txid, r.statement_id, r.actor, r.actor_role, r.action, r.entity_type,
                     r.entity_id, r.changes, r.ip, r.user_agent, r.session_id, r.source, r.org_id, r.metadata,
                     r.hash, r.block_id)::audit.events AS ev,
                 row_number() OVER (ORDER BY r.chunk_id DESC, r.id DESC) AS n
          FROM audit._event_rows r
          WHERE (start_date IS NULL OR r.occurred_at >= start_date)
            AND (end_date IS NULL OR r.occurred_at < end_date)
            AND (user_id IS NULL OR r.actor = user_id)
            AND (list_events.action IS NULL OR r.action = upper(list_events.action))
            AND (list_events.entity_type IS NULL OR r.entity_type = ANY ((SELECT audit._entity_types(list_events.entity_type))::text[]))
            AND (after_id IS NULL OR (r.chunk_id < after_id AND r.id < after_id))
          ORDER BY r.chunk_id DESC, r.id DESC
          LIMIT page_size + 1) p;
    RETURN jsonb_build_object('events', page,
                              'next_cursor', CASE WHEN fetched > page_size THEN last_id::text END);
END
$$;

CREATE FUNCTION audit.get_event(id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found jsonb;
BEGIN
    SELECT audit._event_json(e) INTO found
    FROM (SELECT * FROM audit._event(get_event.id) UNION ALL SELECT * FROM audit_archive._event(get_event.id)) e;
    IF found IS NULL THEN
        RAISE EXCEPTION 'audit event % does not exist', id
            USING ERRCODE = 'no_data_found', HINT = 'It may have been deleted by retention; see audit.deletion_log.';
    END IF;
    RETURN found;
END
$$;

CREATE FUNCTION audit.entity_events(entity_type text, entity_id text) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(audit._event_json(e) ORDER BY e.id), '[]')
    FROM (SELECT audit._entity_types(entity_events.entity_type) AS types) t
    CROSS JOIN LATERAL audit._record_events(t.types, entity_events.entity_id) e
$$;

CREATE FUNCTION audit.stats(since timestamptz DEFAULT now() - interval '30 days', until timestamptz DEFAULT now())
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- Counted per chunk: the events of a chunk share all that is counted by.
    WITH c AS (SELECT * FROM audit.chunks WHERE occurred_at >= since AND occurred_at < until)
    SELECT jsonb_build_object(
        'since', since,
        'until', until,
        'total', (SELECT coalesce(sum(event_count), 0) FROM c),
        'by_action', (SELECT coalesce(jsonb_object_agg(action, n), '{}') FROM (SELECT action, sum(event_count) n FROM c GROUP BY 1) s),
        'by_entity_type', (SELECT coalesce(jsonb_object_agg(entity_type, n), '{}')
                           FROM (SELECT entity_type, sum(event_count) n FROM c WHERE entity_type IS NOT NULL GROUP BY 1) s),
        'by_source', (SELECT coalesce(jsonb_object_agg(coalesce(source, 'SQL'), n), '{}')
                      FROM (SELECT source, sum(event_count) n FROM c GROUP BY 1) s),
        'top_actors', (SELECT coalesce(jsonb_agg(jsonb_build_object('actor', actor, 'events', n) ORDER BY n DESC, actor), '[]')
                       FROM (SELECT actor, sum(event_count) n FROM c GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10) s),
        'per_day', (SELECT coalesce(jsonb_agg(jsonb_build_object('day', day, 'events', n) ORDER BY day), '[]')
                    FROM (SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, sum(event_count) n FROM c GROUP BY 1) s),
        'failed_logins', (SELECT coalesce(sum(event_count), 0) FROM c WHERE action = 'LOGIN_FAILED'),
        'exports', (SELECT jsonb_build_object('count', coalesce(sum(event_count), 0),
                                              'rows', coalesce(sum(coalesce(metadata->>'rows', metadata->>'row_count')::bigint), 0))
                    FROM c WHERE action = 'EXPORT'))
$$;

-- Saved filters: unique per owner, optionally shared with every reader.
CREATE TABLE audit.saved_filter_store (
    owner      text        NOT NULL,
    name       text        NOT NULL CHECK (btrim(name) <> ''),
    query      text        NOT NULL,
    shared     boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
SELECT pg_catalog.pg_extension_config_dump('audit.saved_filter_store', '');
REVOKE ALL ON audit.saved_filter_store FROM PUBLIC;

CREATE VIEW audit.saved_filters AS
SELECT owner, name, query, shared, created_at
FROM audit.saved_filter_store
WHERE owner = current_user OR shared;
GRANT SELECT ON audit.saved_filters TO audit_reader;

CREATE FUNCTION audit.save_filter(name text, query text, shared boolean DEFAULT false)
RETURNS SETOF audit.saved_filters
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    who text := audit._caller()::regrole::text;
BEGIN
    PERFORM audit._compile_search(query);  -- an invalid query cannot be saved
    IF EXISTS (SELECT FROM audit.saved_filter_store s WHERE s.owner = who AND s.name = save_filter.name) THEN
        RAISE EXCEPTION 'you already have a saved filter named %', quote_literal(name)
            USING ERRCODE = 'unique_violation', HINT = 'Drop it with audit.drop_filter() or choose another name.';
    END IF;
    INSERT INTO audit.saved_filter_store (owner, name, query, shared) VALUES (who, save_filter.name, query, shared);
    RETURN QUERY SELECT s.owner, s.name, s.query, s.shared, s.created_at
                 FROM audit.saved_filter_store s WHERE s.owner = who AND s.name = save_filter.name;
END
$$;

CREATE FUNCTION audit.drop_filter(name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM audit.saved_filter_store s WHERE s.owner = audit._caller()::regrole::text AND s.name = drop_filter.name;
    RETURN FOUND;
END
$$;

-- The query of a filter the caller may use: their own first, else a shared one.
CREATE FUNCTION audit._saved_query(name text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    who text := audit._caller()::regrole::text;
    found text;
    shared_count int;
BEGIN
    SELECT s.query INTO found FROM audit.saved_filter_store s WHERE s.owner = who AND s.name = _saved_query.name;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    SELECT count(*), min(s.query) INTO shared_count, found FROM audit.saved_filter_store s WHERE s.shared AND s.name = _saved_query.name;
    IF shared_count = 0 THEN
        RAISE EXCEPTION 'no saved filter named %', quote_literal(name)
            USING ERRCODE = 'undefined_object', HINT = 'List the filters you can use: SELECT * FROM audit.saved_filters;';
    ELSIF shared_count > 1 THEN
        RAISE EXCEPTION 'several users share a filter named %', quote_literal(name)
            USING ERRCODE = 'ambiguous_parameter', HINT = 'Save a copy under your own name with audit.save_filter().';
    END IF;
    RETURN found;
END
$$;

CREATE FUNCTION audit.search_saved(name text, max_rows int DEFAULT 100, cursor text DEFAULT NULL, include_archived boolean DEFAULT false)
RETURNS SETOF audit.events
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off  -- see audit.search
AS $$ SELECT * FROM audit.search(audit._saved_query(name), max_rows, cursor, include_archived) $$;

CREATE FUNCTION audit._csv(value text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN value IS NULL THEN ''
                  WHEN value ~ '[",\r\n]' OR value <> btrim(value) THEN '"' || replace(value, '"', '""') || '"'
                  ELSE value END $$;

-- Lines for \copy (SELECT * FROM audit.export(...)) TO 'file'. Every export is itself an EXPORT event.
CREATE FUNCTION audit.export(query text, format text DEFAULT 'csv', include_metadata boolean DEFAULT true)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fmt text := lower(btrim(format));
    compiled record;
    e audit.events;
    doc jsonb;
    n bigint := 0;
BEGIN
    IF fmt IS NULL OR fmt NOT IN ('csv', 'json', 'ndjson') THEN
        RAISE EXCEPTION 'unknown export format %', quote_literal(format)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use csv, json or ndjson.';
    END IF;
    SELECT * INTO compiled FROM audit._compile_search(coalesce(query, ''));
    IF fmt = 'csv' THEN
        RETURN NEXT 'id,occurred_at,actor,actor_role,action,entity_type,entity_id,changes,ip,user_agent,session_id,source,org_id,'
                    || CASE WHEN include_metadata THEN 'metadata,' ELSE '' END || 'statement_id,hash';
    ELSIF fmt = 'json' THEN
        RETURN NEXT '[';
    END IF;
    FOR e IN EXECUTE format('SELECT %s FROM audit._event_rows r WHERE %s ORDER BY r.chunk_id, r.id',
                            audit._event_columns('r'), compiled.condition) USING compiled.params LOOP
        n := n + 1;
        IF fmt = 'csv' THEN
            -- (The caller's own events not stored yet have no id and no hash: empty fields.)
            RETURN NEXT concat_ws(',', audit._csv(e.id::text), audit._csv(to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
                audit._csv(e.actor), audit._csv(e.actor_role), audit._csv(e.action), audit._csv(e.entity_type),
                audit._csv(e.entity_id), audit._csv(e.changes::text), audit._csv(host(e.ip)), audit._csv(e.user_agent),
                audit._csv(e.session_id), audit._csv(e.source), audit._csv(e.org_id))
                || ',' || CASE WHEN include_metadata THEN audit._csv(e.metadata::text) || ',' ELSE '' END
                || coalesce(e.statement_id::text, '') || ',' || coalesce(encode(e.hash, 'hex'), '');
        ELSE
            doc := audit._event_json(e);
            IF NOT include_metadata THEN
                doc := doc - 'metadata';
            END IF;
            RETURN NEXT CASE WHEN fmt = 'json' AND n > 1 THEN ',' ELSE '' END || doc::text;
        END IF;
    END LOOP;
    IF fmt = 'json' THEN
        RETURN NEXT ']';
    END IF;
    PERFORM audit.log_event('EXPORT', 'audit.events', NULL,
                            jsonb_build_object('query', query, 'format', fmt, 'rows', n, 'include_metadata', include_metadata));
END
$$;

REVOKE EXECUTE ON FUNCTION audit.search(text, int, text, boolean), audit.explain_search(text),
    audit.list_events(timestamptz, timestamptz, text, text, text, int, text), audit.get_event(bigint),
    audit.entity_events(text, text), audit.stats(timestamptz, timestamptz), audit.save_filter(text, text, boolean),
    audit.drop_filter(text), audit.search_saved(text, int, text, boolean), audit.export(text, text, boolean),
    audit._saved_query(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.search(text, int, text, boolean), audit.explain_search(text),
    audit.list_events(timestamptz, timestamptz, text, text, text, int, text), audit.get_event(bigint),
    audit.entity_events(text, text), audit.stats(timestamptz, timestamptz), audit.save_filter(text, text, boolean),
    audit.drop_filter(text), audit.search_saved(text, int, text, boolean), audit.export(text, text, boolean),
    audit._saved_query(text) TO audit_reader;
