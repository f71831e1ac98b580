-- The annotation loop: projects (Label Studio, doccano or API), their annotations, immutable
-- dataset versions, the model registry and bulk prediction runs.

CREATE TABLE projects (
    id               TEXT PRIMARY KEY,
    -- labelstudio, doccano or api
    source           TEXT NOT NULL,
    -- Label names of the project's config (JSON array) and the names of its controls.
    labels           TEXT NOT NULL,
    from_name        TEXT NOT NULL,
    to_name          TEXT NOT NULL,
    data_key         TEXT NOT NULL,
    label_config     TEXT,
    -- Deployed model name its predictions come from and its retraining deploys to.
    model_name       TEXT NOT NULL,
    -- Job spec template without `dataset` (JSON), NULL: the default (fine-tune the deployed model).
    template         TEXT,
    -- Queue a retraining every N new or changed annotations (NULL: only on request).
    retrain_every    INTEGER,
    changes_since_training INTEGER NOT NULL DEFAULT 0,
    -- The retraining job queued or running, if any (one at a time).
    training_job_id  TEXT,
    -- A trigger that arrived while a job was queued or running: one more run after it.
    retrain_pending  INTEGER NOT NULL DEFAULT 0,
    -- JSON: the last deploy-only-if-better decision.
    last_decision    TEXT,
    -- Labels predicted by the model but absent from the config, dropped from /predict.
    dropped_labels   INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);

-- The latest annotation of each task (one per task: the newest wins).
CREATE TABLE annotations (
    project_id   TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    task_id      TEXT NOT NULL,
    annotation_id TEXT,
    text         TEXT NOT NULL,
    -- JSON: words [[start, end], ...] (code points) and their tags.
    words        TEXT NOT NULL,
    tags         TEXT NOT NULL,
    -- JSON: what the conversion could not keep as given (off-boundary, overlaps, unknown labels).
    report       TEXT NOT NULL,
    split        TEXT NOT NULL CHECK (split IN ('train', 'validation', 'test')),
    -- When the tool last changed the annotation (Label Studio's updated_at), if it says: an
    -- older copy (a stale export, a retried webhook) does not replace a newer one.
    source_updated_at TEXT,
    deleted      INTEGER NOT NULL DEFAULT 0,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, task_id)
);

CREATE TABLE dataset_versions (
    project_id   TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    dir          TEXT NOT NULL,
    -- JSON: sentences per split and label counts.
    stats        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, version)
);

CREATE TABLE project_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX project_events_project ON project_events (project_id, id);

ALTER TABLE jobs ADD COLUMN project_id TEXT;
ALTER TABLE jobs ADD COLUMN project_version INTEGER;

-- Every deployment of a model name; the active one is served (restored at start).
CREATE TABLE deployments (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    -- Content hash of config.json and the weights.
    version     TEXT NOT NULL,
    path        TEXT NOT NULL,
    job_id      TEXT,
    -- api, job (deploy_as), study, project:<id>, rollback, startup
    deployed_by TEXT NOT NULL,
    active      INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);
CREATE INDEX deployments_name ON deployments (name, seq);

CREATE TABLE predictions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    model       TEXT NOT NULL,
    -- JSON: the request (input and options).
    request     TEXT NOT NULL,
    format      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    done        INTEGER NOT NULL DEFAULT 0,
    total       INTEGER NOT NULL DEFAULT 0,
    model_version TEXT,
    output      TEXT,
    error       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT
);
