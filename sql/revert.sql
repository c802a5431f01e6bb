-- Revert, restore and point-in-time reconstruction, all from the trail.

-- The tracked table of an event's entity type, or a clear error.
CREATE FUNCTION audit._tracked_for(entity text) RETURNS audit.tracked
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found audit.tracked;
    n int;
BEGIN
    SELECT count(*) INTO n FROM audit.tracked WHERE entity_type = entity;
    IF n = 0 THEN
        RAISE EXCEPTION 'no tracked table records entity type %', entity
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Enable auditing on the table again (audit.enable) before reverting its events.';
    ELSIF n > 1 THEN
        RAISE EXCEPTION 'entity type % is recorded by % tables', entity, n
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Give each table its own entity_name with audit.enable().';
    END IF;
    SELECT * INTO found FROM audit.tracked WHERE entity_type = entity;
    RETURN found;
END
$$;

-- "col1 = 'v1'::type1 AND ..." identifying the record `entity_id` of a tracked table.
CREATE FUNCTION audit._key_condition(tracked audit.tracked, entity_id text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_values text[];
    condition text;
BEGIN
    IF cardinality(tracked.key_attnums) = 1 THEN
        key_values := ARRAY[entity_id];
    ELSE
        SELECT array_agg(v ORDER BY n) INTO key_values FROM jsonb_array_elements_text(entity_id::jsonb) WITH ORDINALITY AS k(v, n);
    END IF;
    SELECT string_agg(format('%I = %L::%s', a.attname, key_values[k.pos], format_type(a.atttypid, a.atttypmod)), ' AND ')
    INTO condition
    FROM unnest(tracked.key_attnums) WITH ORDINALITY AS k(attnum, pos)
    JOIN pg_attribute a ON a.attrelid = tracked.relid AND a.attnum = k.attnum;
    RETURN condition;
END
$$;

-- The SQL type of a live column, or a clear error when it was dropped.
CREATE FUNCTION audit._column_type(target regclass, column_name text, event_id bigint) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    type_name text;
BEGIN
    SELECT format_type(atttypid, atttypmod) INTO type_name FROM pg_attribute
    WHERE attrelid = target AND attname = column_name AND attnum > 0 AND NOT attisdropped;
    IF type_name IS NULL THEN
        RAISE EXCEPTION 'column % recorded by event % no longer exists in %', column_name, event_id, target
            USING ERRCODE = 'undefined_column',
                  HINT = 'A dropped column cannot be restored; revert the other fields with field => ''<name>''.';
    END IF;
    RETURN type_name;
END
$$;

CREATE FUNCTION audit.revert(event_id bigint, field text DEFAULT NULL, force boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ev         audit.events;
    operation  text;
    tracked    audit.tracked;
    target     regclass;
    condition  text;
    fields     text[];
    f          text;
    change     jsonb;
    type_name  text;
    assignments text[] := '{}';
    columns    text[] := '{}';
    vals       text[] := '{}';
    live_same  boolean;
    row_exists boolean;
    newer      bigint;
    saved_actor text := current_setting('audit.actor', true);
BEGIN
    IF NOT pg_has_role(audit._caller(), 'audit_admin', 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied to revert audit events'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Only members of audit_admin may revert.';
    END IF;
    SELECT * INTO ev FROM audit._event(revert.event_id);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit event % does not exist', event_id
            USING ERRCODE = 'no_data_found', HINT = 'Find event ids with audit.history() or audit.search().';
    END IF;
    operation := CASE WHEN ev.action = 'REVERT' THEN ev.metadata->>'operation' ELSE ev.action END;
    IF operation IS NULL OR operation NOT IN ('INSERT', 'UPDATE', 'DELETE') OR ev.entity_id IS NULL THEN
        RAISE EXCEPTION 'event % (%) is not a record change', event_id, ev.action
            USING ERRCODE = 'wrong_object_type', HINT = 'Only INSERT, UPDATE, DELETE and REVERT events of a record can be reverted.';
    END IF;
    IF field IS NOT NULL AND operation <> 'UPDATE' THEN
        RAISE EXCEPTION 'field can only be given for an UPDATE event; event % is a % event', event_id, operation
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave field NULL to revert the whole row.';
    END IF;
    tracked := audit._tracked_for(ev.entity_type);
    target := tracked.relid::regclass;
    condition := audit._key_condition(tracked, ev.entity_id);
    EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE %s)', target, condition) INTO row_exists;

    IF operation = 'UPDATE' THEN
        fields := CASE WHEN field IS NULL THEN ARRAY(SELECT jsonb_object_keys(ev.changes) ORDER BY 1) ELSE ARRAY[field] END;
        IF NOT ev.changes ? coalesce(field, '') AND field IS NOT NULL THEN
            RAISE EXCEPTION 'event % did not change field %', event_id, field
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('It changed: %s.', (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(ev.changes) k));
        END IF;
        IF NOT row_exists THEN
            RAISE EXCEPTION '% % no longer exists', ev.entity_type, ev.entity_id
                USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Revert the DELETE event first.';
        END IF;
        FOREACH f IN ARRAY fields LOOP
            change := ev.changes -> f;
            IF change ? 'masked' THEN
                RAISE EXCEPTION 'field % is masked: its values were never recorded', f
                    USING ERRCODE = 'feature_not_supported', HINT = 'Masked columns cannot be reverted; set the value by hand.';
            END IF;
            type_name := audit._column_type(target, f, event_id);
            EXECUTE format('SELECT (%I)::text IS NOT DISTINCT FROM (%L::%s)::text FROM %s WHERE %s',
                           f, change ->> 'new', type_name, target, condition) INTO live_same;
            IF NOT live_same AND NOT force THEN
                SELECT e.id INTO newer FROM audit._record_events(ARRAY[ev.entity_type], ev.entity_id) e
                WHERE e.id > ev.id AND e.changes ? f
                ORDER BY e.id DESC LIMIT 1;
                RAISE EXCEPTION 'field % of % % was changed again since event %', f, ev.entity_type, ev.entity_id, event_id
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          DETAIL = CASE WHEN newer IS NULL THEN 'The live value differs from what the event wrote.'
                                        ELSE format('Newer event: %s.', newer) END,
                          HINT = 'Revert the newer event first, or pass force => true to overwrite it.';
            END IF;
            assignments := assignments || format('%I = %L::%s', f, change ->> 'old', type_name);
        END LOOP;
    ELSIF operation = 'DELETE' THEN
        IF row_exists THEN
            RAISE EXCEPTION '% % exists again; the deleted row cannot be restored over it', ev.entity_type, ev.entity_id
                USING ERRCODE = 'unique_violation', HINT = 'Delete or rename the current row first.';
        END IF;
        FOR f, change IN SELECT key, value FROM jsonb_each(ev.changes) ORDER BY key LOOP
            IF change ? 'masked' THEN
                RAISE EXCEPTION 'field % is masked: the deleted row cannot be restored', f
                    USING ERRCODE = 'feature_not_supported', HINT = 'Masked values were never recorded; insert the row by hand.';
            END IF;
            type_name := audit._column_type(target, f, event_id);
            columns := columns || quote_ident(f);
            vals := vals || format('%L::%s', change ->> 'old', type_name);
        END LOOP;
    ELSE -- INSERT: delete the row it created
        IF NOT row_exists THEN
            RAISE EXCEPTION '% % no longer exists', ev.entity_type, ev.entity_id
                USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Nothing to revert: the row is already gone.';
        END IF;
        SELECT e.id INTO newer FROM audit._record_events(ARRAY[ev.entity_type], ev.entity_id) e
        WHERE e.id > ev.id ORDER BY e.id DESC LIMIT 1;
        IF newer IS NOT NULL AND NOT force THEN
            RAISE EXCEPTION '% % was changed since it was inserted', ev.entity_type, ev.entity_id
                USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = format('Newer event: %s.', newer),
                      HINT = 'Revert the newer events first, or pass force => true to delete the row anyway.';
        END IF;
    END IF;

    -- Changes made now are captured as a REVERT event, acted by the caller.
    PERFORM set_config('audit.revert_context', jsonb_build_object('reverted_event_id', ev.id)::text, true);
    IF coalesce(saved_actor, '') = '' THEN
        PERFORM set_config('audit.actor', audit._caller()::regrole::text, true);
    END IF;
    IF operation = 'UPDATE' THEN
        EXECUTE format('UPDATE %s SET %s WHERE %s', target, array_to_string(assignments, ', '), condition);
    ELSIF operation = 'DELETE' THEN
        EXECUTE format('INSERT INTO %s (%s) VALUES (%s)', target, array_to_string(columns, ', '), array_to_string(vals, ', '));
    ELSE
        EXECUTE format('DELETE FROM %s WHERE %s', target, condition);
    END IF;
    PERFORM set_config('audit.revert_context', '', true);
    PERFORM set_config('audit.actor', coalesce(saved_actor, ''), true);
END
$$;

CREATE FUNCTION audit.revert_statement(statement_id bigint, force boolean DEFAULT false)
RETURNS SETOF bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
BEGIN
    IF NOT EXISTS (SELECT FROM audit._statement_events(revert_statement.statement_id)) THEN
        RAISE EXCEPTION 'no events belong to statement %', statement_id
            USING ERRCODE = 'no_data_found', HINT = 'Statement ids are in audit.events.statement_id (and metadata.bulk_operation_id).';
    END IF;
    -- Newest first, all in this transaction: any refusal undoes the whole revert.
    FOR e IN SELECT ev.id FROM audit._statement_events(revert_statement.statement_id) ev ORDER BY ev.id DESC LOOP
        PERFORM audit.revert(e.id, NULL, force);
        RETURN NEXT e.id;
    END LOOP;
END
$$;

-- The record as the trail knows it at `at`: NULL if it did not exist then.
-- Masked fields read {"masked": true}. A record created before auditing was
-- enabled holds only the fields changed since.
CREATE FUNCTION audit.record_at(entity_type text, entity_id text, at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entity_types text[] := audit._entity_types(entity_type);
    state jsonb;
    e record;
BEGIN
    FOR e IN
        SELECT coalesce(ev.metadata->>'operation', ev.action) AS operation, ev.changes, ev.id
        FROM (SELECT * FROM audit._record_events(entity_types, record_at.entity_id)
              UNION ALL
              SELECT * FROM audit.events t WHERE t.action = 'TRUNCATE' AND t.entity_type = ANY (entity_types)) ev
        WHERE ev.occurred_at <= at
        ORDER BY ev.id, ev.occurred_at  -- own events not stored yet (no id) last
    LOOP
        IF e.operation IN ('DELETE', 'TRUNCATE') THEN
            state := NULL;
        ELSIF e.operation IN ('INSERT', 'UPDATE') THEN
            SELECT coalesce(CASE WHEN e.operation = 'UPDATE' THEN state END, '{}'::jsonb)
                   || coalesce(jsonb_object_agg(c.key, CASE WHEN c.value ? 'masked' THEN '{"masked": true}'::jsonb
                                                            ELSE c.value -> 'new' END), '{}'::jsonb)
            INTO state
            FROM jsonb_each(e.changes) c;
        END IF;
    END LOOP;
    RETURN state;
END
$$;

CREATE FUNCTION audit.compare(entity_type text, entity_id text, t1 timestamptz, t2 timestamptz)
RETURNS TABLE (field text, value_at_t1 jsonb, value_at_t2 jsonb, changed boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH a AS (SELECT audit.record_at(compare.entity_type, compare.entity_id, t1) AS r),
         b AS (SELECT audit.record_at(compare.entity_type, compare.entity_id, t2) AS r)
    SELECT k.field, a.r -> k.field, b.r -> k.field, (a.r -> k.field) IS DISTINCT FROM (b.r -> k.field)
    FROM a, b,
         LATERAL (SELECT jsonb_object_keys(coalesce(a.r, '{}')) UNION SELECT jsonb_object_keys(coalesce(b.r, '{}'))) AS k(field)
    ORDER BY k.field
$$;

REVOKE EXECUTE ON FUNCTION audit.revert(bigint, text, boolean), audit.revert_statement(bigint, boolean),
    audit.record_at(text, text, timestamptz), audit.compare(text, text, timestamptz, timestamptz),
    audit._tracked_for(text), audit._key_condition(audit.tracked, text), audit._column_type(regclass, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.revert(bigint, text, boolean), audit.revert_statement(bigint, boolean) TO audit_admin;
GRANT EXECUTE ON FUNCTION audit.record_at(text, text, timestamptz), audit.compare(text, text, timestamptz, timestamptz) TO audit_reader;
