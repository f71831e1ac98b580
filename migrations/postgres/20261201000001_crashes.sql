-- PostgreSQL translation of ../20261201000001_crashes.sql.
-- Crashes are counted apart from runs: a graceful restart requeues a job without using up its
-- crash budget (`attempts` still counts every start).
ALTER TABLE jobs ADD COLUMN crashes BIGINT NOT NULL DEFAULT 0;
