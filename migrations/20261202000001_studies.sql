-- Studies: models x configurations x seeds, each trial an ordinary job of the queue.
CREATE TABLE studies (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    name             TEXT,
    spec             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trials           INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    best_job_id      TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT
);

ALTER TABLE jobs ADD COLUMN study_id TEXT REFERENCES studies (id) ON DELETE CASCADE;
ALTER TABLE jobs ADD COLUMN trial INTEGER;
-- The searched parameters of a trial (JSON object), as the study drew them.
ALTER TABLE jobs ADD COLUMN params TEXT;
ALTER TABLE jobs ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_study ON jobs (study_id, trial);

-- training.eval_train_subset scores, per epoch (JSON: loss and metrics).
ALTER TABLE epochs ADD COLUMN train_eval TEXT;
-- Per test sentence entity counts [[tp, pred, truth], ...] of the fine-tuned model (bootstraps).
ALTER TABLE evaluations ADD COLUMN sentence_counts TEXT;

CREATE TABLE study_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id   TEXT NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX study_events_study ON study_events (study_id, id);
