-- Runtara core schema (PostgreSQL). Logically identical to migrations/sqlite/0001_initial.sql:
-- BYTEA for BLOB, BIGINT for INTEGER, DOUBLE PRECISION for REAL, identity columns for AUTOINCREMENT.
-- Times are Unix epoch milliseconds. JSON columns hold JSON text.

CREATE TABLE images (
    image_id      TEXT    PRIMARY KEY CHECK (length(image_id) > 0),
    tenant        TEXT    NOT NULL,
    name          TEXT    NOT NULL CHECK (length(name) > 0),
    version       BIGINT  NOT NULL CHECK (version >= 1),
    description   TEXT    NOT NULL DEFAULT '',
    entrypoint    TEXT    NOT NULL,
    input_schema  TEXT,
    metadata      TEXT    NOT NULL DEFAULT '{}',
    sha256        TEXT    NOT NULL,
    size_bytes    BIGINT  NOT NULL CHECK (size_bytes >= 0),
    created_at_ms BIGINT  NOT NULL,
    UNIQUE (tenant, name, version)
);

CREATE TABLE instances (
    instance_id         TEXT    PRIMARY KEY CHECK (length(instance_id) > 0),
    tenant              TEXT    NOT NULL,
    image_id            TEXT    REFERENCES images (image_id) ON DELETE SET NULL,
    image_name          TEXT    NOT NULL,
    image_version       BIGINT  NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN
                            ('pending', 'running', 'suspended', 'completed', 'failed', 'cancelled')),
    termination_reason  TEXT    CHECK (termination_reason IN
                            ('completed', 'application_error', 'crashed', 'timeout',
                             'heartbeat_timeout', 'cancelled', 'stopped', 'paused', 'sleeping',
                             'waiting')),
    attempt             BIGINT  NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    max_attempts        BIGINT  NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    input               BYTEA   NOT NULL,
    output              BYTEA,
    error               TEXT,
    created_at_ms       BIGINT  NOT NULL,
    started_at_ms       BIGINT,
    finished_at_ms      BIGINT,
    updated_at_ms       BIGINT  NOT NULL,
    wake_at_ms          BIGINT,
    heartbeat_at_ms     BIGINT,
    waiting_signal_name TEXT,
    checkpoint_id       TEXT,
    node_id             TEXT,
    priority            BIGINT  NOT NULL DEFAULT 0,
    timeout_ms          BIGINT  CHECK (timeout_ms > 0),
    env                 TEXT    NOT NULL DEFAULT '{}',
    pid                 BIGINT,
    pid_create_time     DOUBLE PRECISION,
    peak_rss_bytes      BIGINT,
    cpu_time_ms         BIGINT,
    exit_code           BIGINT,
    exit_signal         BIGINT,
    stderr_tail         TEXT
) WITH (fillfactor = 80);  -- room for HOT updates of liveness and status columns

-- No index on heartbeat_at_ms: every checkpoint and beat rewrites it, and an index on it
-- would turn those into index writes (on PostgreSQL: no HOT updates). Stale-instance scans
-- only visit running rows.
CREATE INDEX instances_tenant_created ON instances (tenant, created_at_ms);
CREATE INDEX instances_status_created ON instances (status, created_at_ms);
CREATE INDEX instances_finished ON instances (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
CREATE INDEX instances_image ON instances (image_id);
CREATE INDEX instances_launch_queue ON instances (priority DESC, created_at_ms)
    WHERE status = 'pending';
-- The wake scheduler's index (claims of due instances, the next wake time). status leads so a
-- claim's "status = 'suspended' AND wake_at_ms <= now" is one range of it: SQLite plans without
-- statistics, and with a bare (wake_at_ms) index it took instances_status_created and visited
-- every suspended row instead.
CREATE INDEX instances_wake ON instances (status, wake_at_ms) WHERE wake_at_ms IS NOT NULL;

CREATE TABLE checkpoints (
    seq           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id TEXT    NOT NULL CHECK (length(checkpoint_id) > 0),
    state         BYTEA   NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    UNIQUE (instance_id, checkpoint_id)
);

CREATE INDEX checkpoints_history ON checkpoints (instance_id, seq);

CREATE TABLE events (
    id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    type          TEXT    NOT NULL,
    subtype       TEXT,
    payload       BYTEA,
    created_at_ms BIGINT  NOT NULL
);

CREATE INDEX events_history ON events (instance_id, id);

-- One instance-wide slot per instance; precedence is decided in code (rules.signal_takes_slot).
CREATE TABLE signals (
    instance_id   TEXT    PRIMARY KEY REFERENCES instances (instance_id) ON DELETE CASCADE,
    signal_type   TEXT    NOT NULL CHECK (signal_type IN ('cancel', 'pause', 'resume')),
    payload       BYTEA   NOT NULL,
    created_at_ms BIGINT  NOT NULL
);

CREATE TABLE custom_signals (
    id                        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id               TEXT    NOT NULL
                                  REFERENCES instances (instance_id) ON DELETE CASCADE,
    name                      TEXT    NOT NULL CHECK (length(name) > 0),
    payload                   BYTEA   NOT NULL,
    created_at_ms             BIGINT  NOT NULL,
    consumed_at_ms            BIGINT,
    consumed_by_checkpoint_id TEXT
);

CREATE INDEX custom_signals_queue ON custom_signals (instance_id, name, id)
    WHERE consumed_at_ms IS NULL;
CREATE INDEX custom_signals_history ON custom_signals (instance_id, id);
