-- Scale-out: jobs may require a device kind; a running job carries a lease (the worker
-- process holding it and when the lease ends unless renewed); every worker process has a row
-- (heartbeats, current job); every lease ever taken is kept (who ran what, when).
-- Times in *_ms columns are Unix milliseconds of the writing process's clock.

ALTER TABLE jobs ADD COLUMN requires_device TEXT CHECK (requires_device IN ('cpu', 'cuda'));
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_ms INTEGER;

CREATE INDEX jobs_queue ON jobs (status, seq);

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    device       TEXT NOT NULL,
    device_kind  TEXT NOT NULL CHECK (device_kind IN ('cpu', 'cuda')),
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    current_job  TEXT,
    stopped_at   TEXT
);
CREATE INDEX workers_name ON workers (name);

CREATE TABLE leases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    worker_id   TEXT NOT NULL,
    worker_name TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    acquired_ms INTEGER NOT NULL,
    renewed_ms  INTEGER NOT NULL,
    ended_ms    INTEGER,
    -- finished | requeued (graceful stop) | expired (taken back after the lease ran out) |
    -- reclaimed (its worker restarted under the same name)
    outcome     TEXT
);
CREATE INDEX leases_job ON leases (job_id, id);
