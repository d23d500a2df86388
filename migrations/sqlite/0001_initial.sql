-- Runtara core schema (SQLite). Logically identical to migrations/postgres/0001_initial.sql:
-- BLOB for BYTEA, INTEGER for BIGINT, REAL for DOUBLE PRECISION, AUTOINCREMENT for identity.
-- Times are Unix epoch milliseconds. JSON columns hold JSON text.

CREATE TABLE images (
    image_id      TEXT    PRIMARY KEY CHECK (length(image_id) > 0),
    tenant        TEXT    NOT NULL,
    name          TEXT    NOT NULL CHECK (length(name) > 0),
    version       INTEGER NOT NULL CHECK (version >= 1),
    description   TEXT    NOT NULL DEFAULT '',
    entrypoint    TEXT    NOT NULL,
    input_schema  TEXT,
    metadata      TEXT    NOT NULL DEFAULT '{}',
    sha256        TEXT    NOT NULL,
    size_bytes    INTEGER NOT NULL CHECK (size_bytes >= 0),
    created_at_ms INTEGER NOT NULL,
    UNIQUE (tenant, name, version)
) STRICT;

CREATE TABLE instances (
    instance_id         TEXT    PRIMARY KEY CHECK (length(instance_id) > 0),
    tenant              TEXT    NOT NULL,
    image_id            TEXT    REFERENCES images (image_id) ON DELETE SET NULL,
    image_name          TEXT    NOT NULL,
    image_version       INTEGER NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN
                            ('pending', 'running', 'suspended', 'completed', 'failed', 'cancelled')),
    termination_reason  TEXT    CHECK (termination_reason IN
                            ('completed', 'application_error', 'crashed', 'timeout',
                             'heartbeat_timeout', 'cancelled', 'stopped', 'paused', 'sleeping',
                             'waiting')),
    attempt             INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    max_attempts        INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    input               BLOB    NOT NULL,
    output              BLOB,
    error               TEXT,
    created_at_ms       INTEGER NOT NULL,
    started_at_ms       INTEGER,
    finished_at_ms      INTEGER,
    updated_at_ms       INTEGER NOT NULL,
    wake_at_ms          INTEGER,
    heartbeat_at_ms     INTEGER,
    waiting_signal_name TEXT,
    checkpoint_id       TEXT,
    node_id             TEXT,
    priority            INTEGER NOT NULL DEFAULT 0,
    timeout_ms          INTEGER CHECK (timeout_ms > 0),
    env                 TEXT    NOT NULL DEFAULT '{}',
    pid                 INTEGER,
    pid_create_time     REAL,
    peak_rss_bytes      INTEGER,
    cpu_time_ms         INTEGER,
    exit_code           INTEGER,
    exit_signal         INTEGER,
    stderr_tail         TEXT
) STRICT;

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
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id TEXT    NOT NULL CHECK (length(checkpoint_id) > 0),
    state         BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (instance_id, checkpoint_id)
) STRICT;

CREATE INDEX checkpoints_history ON checkpoints (instance_id, seq);

CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    type          TEXT    NOT NULL,
    subtype       TEXT,
    payload       BLOB,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX events_history ON events (instance_id, id);

-- One instance-wide slot per instance; precedence is decided in code (rules.signal_takes_slot).
CREATE TABLE signals (
    instance_id   TEXT    PRIMARY KEY REFERENCES instances (instance_id) ON DELETE CASCADE,
    signal_type   TEXT    NOT NULL CHECK (signal_type IN ('cancel', 'pause', 'resume')),
    payload       BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE custom_signals (
    id                        INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id               TEXT    NOT NULL
                                  REFERENCES instances (instance_id) ON DELETE CASCADE,
    name                      TEXT    NOT NULL CHECK (length(name) > 0),
    payload                   BLOB    NOT NULL,
    created_at_ms             INTEGER NOT NULL,
    consumed_at_ms            INTEGER,
    consumed_by_checkpoint_id TEXT
) STRICT;

CREATE INDEX custom_signals_queue ON custom_signals (instance_id, name, id)
    WHERE consumed_at_ms IS NULL;
CREATE INDEX custom_signals_history ON custom_signals (instance_id, id);
