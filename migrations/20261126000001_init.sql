-- metafora schema. Timestamps are RFC 3339 UTC text; JSON columns hold serde documents.

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    spec             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    progress         TEXT,
    device           TEXT,
    output_dir       TEXT NOT NULL,
    results_csv      TEXT,
    best_epoch       INTEGER,
    best_checkpoint  TEXT,
    best_model_dir   TEXT,
    improvement_f1   REAL,
    csv_row          TEXT,
    push_status      TEXT NOT NULL DEFAULT 'none' CHECK (push_status IN ('none', 'pending', 'pushed', 'failed')),
    push_error       TEXT,
    push_url         TEXT
);
CREATE INDEX jobs_status_seq ON jobs (status, seq);

CREATE TABLE epochs (
    job_id            TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    epoch             INTEGER NOT NULL,
    step              INTEGER NOT NULL,
    train_loss        REAL NOT NULL,
    eval_loss         REAL NOT NULL,
    precision         REAL NOT NULL,
    recall            REAL NOT NULL,
    f1                REAL NOT NULL,
    accuracy          REAL NOT NULL,
    per_label         TEXT NOT NULL,
    learning_rate     REAL NOT NULL,
    train_seconds     REAL NOT NULL,
    eval_seconds      REAL NOT NULL,
    samples_per_second REAL NOT NULL,
    checkpoint        TEXT NOT NULL,
    PRIMARY KEY (job_id, epoch)
);

CREATE TABLE evaluations (
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind      TEXT NOT NULL CHECK (kind IN ('base', 'finetuned')),
    loss      REAL NOT NULL,
    precision REAL NOT NULL,
    recall    REAL NOT NULL,
    f1        REAL NOT NULL,
    accuracy  REAL NOT NULL,
    per_label TEXT NOT NULL,
    seconds   REAL NOT NULL,
    PRIMARY KEY (job_id, kind)
);

CREATE TABLE label_distribution (
    job_id                TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    split                 TEXT NOT NULL,
    label                 TEXT NOT NULL,
    count                 INTEGER NOT NULL,
    percent               REAL NOT NULL,
    sentences             INTEGER NOT NULL,
    words                 INTEGER NOT NULL,
    sentences_with_entity INTEGER NOT NULL,
    PRIMARY KEY (job_id, split, label)
);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE datasets (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    format     TEXT NOT NULL,
    labels     TEXT NOT NULL,
    stats      TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
