-- kind: expand
-- The API writes every time one way: RFC 3339 in UTC with `Z` and six fraction
-- digits (server/core/times.py rfc3339, server/api/pages.py utc_json). Stored
-- event documents wrote `+00:00` and dropped trailing zeros; they follow now.

CREATE OR REPLACE FUNCTION ayon_event_doc(e events) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT json_build_object(
        'id', e.id, 'topic', e.topic, 'status', e.status, 'description', e.description,
        'summary', e.summary, 'payload', e.payload, 'sender', e.sender, 'depends_on', e.depends_on,
        'created_at', to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'updated_at', to_char(e.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
$$;

-- Existing rows, without firing the touch and notify triggers.
ALTER TABLE events DISABLE TRIGGER USER;
UPDATE events SET doc = ayon_event_doc(events);
ALTER TABLE events ENABLE TRIGGER USER;
