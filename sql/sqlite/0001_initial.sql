-- runtara schema, version 1 (SQLite).
-- Times are integer epoch milliseconds. Statuses and types are the protocol's
-- lowercase strings. Child rows go with their instance (ON DELETE CASCADE).

CREATE TABLE instances (
    instance_id   TEXT    PRIMARY KEY,
    tenant_id     TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN
                      ('pending', 'running', 'suspended', 'completed', 'failed', 'cancelled')),
    checkpoint_id TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    sleep_until   INTEGER,
    output        BLOB,
    error         TEXT
);
CREATE INDEX instances_by_created ON instances (created_at DESC, instance_id DESC);
CREATE INDEX instances_by_tenant_status ON instances (tenant_id, status);
CREATE INDEX instances_by_finished ON instances (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE checkpoints (
    instance_id   TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id TEXT    NOT NULL,
    state         BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (instance_id, checkpoint_id)
);

CREATE TABLE events (
    event_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    event_type    TEXT    NOT NULL,
    subtype       TEXT,
    checkpoint_id TEXT,
    payload       BLOB    NOT NULL,
    client_ts     INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX events_by_instance ON events (instance_id, event_id);

-- At most one instance-wide signal per instance; pending while acknowledged_at IS NULL.
CREATE TABLE signals (
    instance_id     TEXT    PRIMARY KEY REFERENCES instances (instance_id) ON DELETE CASCADE,
    signal_type     TEXT    NOT NULL CHECK (signal_type IN ('cancel', 'pause', 'resume')),
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    acknowledged_at INTEGER
);

-- Pending custom signals; a row is deleted when it is delivered.
CREATE TABLE custom_signals (
    instance_id   TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (instance_id, checkpoint_id)
);

CREATE TABLE retry_attempts (
    instance_id    TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id  TEXT    NOT NULL,
    attempt_number INTEGER NOT NULL,
    client_ts      INTEGER,
    error_message  TEXT,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (instance_id, checkpoint_id, attempt_number)
);
