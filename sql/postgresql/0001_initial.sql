-- runtara schema, version 1 (PostgreSQL).
-- Times are epoch milliseconds (BIGINT). Statuses and types are the protocol's
-- lowercase strings. Child rows go with their instance (ON DELETE CASCADE).

CREATE TABLE instances (
    instance_id   TEXT   PRIMARY KEY,
    tenant_id     TEXT   NOT NULL,
    status        TEXT   NOT NULL CHECK (status IN
                      ('pending', 'running', 'suspended', 'completed', 'failed', 'cancelled')),
    checkpoint_id TEXT,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    sleep_until   BIGINT,
    output        BYTEA,
    error         TEXT
);
CREATE INDEX instances_by_created ON instances (created_at DESC, instance_id DESC);
CREATE INDEX instances_by_tenant_status ON instances (tenant_id, status);
CREATE INDEX instances_by_finished ON instances (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE checkpoints (
    instance_id   TEXT   NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id TEXT   NOT NULL,
    state         BYTEA  NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (instance_id, checkpoint_id)
);

CREATE TABLE events (
    event_id      BIGSERIAL PRIMARY KEY,
    instance_id   TEXT   NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    event_type    TEXT   NOT NULL,
    subtype       TEXT,
    checkpoint_id TEXT,
    payload       BYTEA  NOT NULL,
    client_ts     BIGINT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX events_by_instance ON events (instance_id, event_id);

-- At most one instance-wide signal per instance; pending while acknowledged_at IS NULL.
CREATE TABLE signals (
    instance_id     TEXT   PRIMARY KEY REFERENCES instances (instance_id) ON DELETE CASCADE,
    signal_type     TEXT   NOT NULL CHECK (signal_type IN ('cancel', 'pause', 'resume')),
    payload         BYTEA  NOT NULL,
    created_at      BIGINT NOT NULL,
    acknowledged_at BIGINT
);

-- Pending custom signals; a row is deleted when it is delivered.
CREATE TABLE custom_signals (
    instance_id   TEXT   NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id TEXT   NOT NULL,
    payload       BYTEA  NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (instance_id, checkpoint_id)
);

CREATE TABLE retry_attempts (
    instance_id    TEXT    NOT NULL REFERENCES instances (instance_id) ON DELETE CASCADE,
    checkpoint_id  TEXT    NOT NULL,
    attempt_number INTEGER NOT NULL,
    client_ts      BIGINT,
    error_message  TEXT,
    created_at     BIGINT  NOT NULL,
    PRIMARY KEY (instance_id, checkpoint_id, attempt_number)
);
