-- kind: expand
-- The core schema: configuration, secrets, events, heartbeats and logs.

CREATE TABLE server_config (
    id          integer PRIMARY KEY CHECK (id = 1),
    data        jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION ayon_notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ayon_config', NEW.updated_at::text);
    RETURN NEW;
END $$;

CREATE TRIGGER server_config_notify AFTER INSERT OR UPDATE ON server_config
    FOR EACH ROW EXECUTE FUNCTION ayon_notify_config();

-- Hashes only: a secret's clear value never reaches the database.
CREATE TABLE secrets (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    topic        text NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'in_progress', 'finished', 'failed', 'aborted')),
    description  text NOT NULL DEFAULT '',
    summary      jsonb NOT NULL DEFAULT '{}',
    payload      jsonb NOT NULL DEFAULT '{}',
    sender       text,
    depends_on   uuid REFERENCES events (id) ON DELETE RESTRICT,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX events_created ON events (created_at DESC, id DESC);
CREATE INDEX events_updated ON events (updated_at);
CREATE INDEX events_topic ON events (topic text_pattern_ops, created_at DESC);
CREATE INDEX events_status ON events (status, created_at DESC);
CREATE INDEX events_depends_on ON events (depends_on) WHERE depends_on IS NOT NULL;

CREATE FUNCTION ayon_events_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

CREATE TRIGGER events_touch BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION ayon_events_touch();

-- Every change is announced, so any process can LISTEN instead of polling.
CREATE FUNCTION ayon_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ayon_events', json_build_object(
        'id', NEW.id, 'topic', NEW.topic, 'status', NEW.status,
        'description', left(NEW.description, 500),
        'updated_at', NEW.updated_at)::text);
    RETURN NEW;
END $$;

CREATE TRIGGER events_notify AFTER INSERT OR UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION ayon_notify_event();

-- One row per long-running program of each instance, refreshed every few seconds.
CREATE TABLE instances (
    instance_id  text NOT NULL,
    program      text NOT NULL,
    pid          integer,
    hostname     text,
    version      text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    info         jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (instance_id, program)
);

-- Logs are partitioned by day: retention detaches and drops whole days.
CREATE TABLE logs (
    ts        timestamptz NOT NULL,
    level     text NOT NULL,
    instance  text NOT NULL,
    program   text NOT NULL,
    pid       integer,
    logger    text,
    message   text NOT NULL,
    extras    jsonb,
    exc       text
) PARTITION BY RANGE (ts);

CREATE TABLE logs_default PARTITION OF logs DEFAULT;

CREATE INDEX logs_ts ON logs (ts DESC);
CREATE INDEX logs_level_ts ON logs (level, ts DESC);
CREATE INDEX logs_source_ts ON logs (instance, program, ts DESC);

-- Creates the partition of one day, moving any rows of that day out of the default.
CREATE FUNCTION ayon_ensure_log_partition(day date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    part text := 'logs_' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('ayon.log_partitions'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE logs INCLUDING DEFAULTS)', part);
    EXECUTE format('WITH moved AS (DELETE FROM logs_default WHERE ts >= %L AND ts < %L RETURNING *)
                    INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE logs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
END $$;

-- How far the log collector has read each spool file, committed with the rows.
CREATE TABLE log_spool_positions (
    instance_id  text NOT NULL,
    file         text NOT NULL,
    position     bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, file)
);
