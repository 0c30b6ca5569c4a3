-- 005: what an operator reads (`payment-worker status`, the state gauges).
-- Dead letters of the last hour, by reason, without scanning the whole outbox.
CREATE INDEX outbox_dead_letters_by_age ON outbox (created_at) WHERE kind = 'dead_letter';

-- Each reconciler's last pass (one row per worker process; rows of processes gone a week are
-- pruned by the next pass of any worker).
CREATE TABLE reconciler_runs (
    reconciler_id       text PRIMARY KEY,
    last_run_at         timestamptz NOT NULL,
    last_finished       integer NOT NULL,
    total_finished      bigint NOT NULL
);
