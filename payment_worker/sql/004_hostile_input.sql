-- 004: nothing wedges (rules I5 and I7).
-- An outbox row the broker refuses is tried again with a growing wait and parked after
-- PAYMENT_OUTBOX_MAX_ATTEMPTS refusals; a row waiting or parked never holds back newer ones.
-- The sweeper leases the rows it hands to the producer (next_attempt_at) instead of holding
-- their locks while they are delivered.
ALTER TABLE outbox
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz,
    ADD COLUMN last_error text,
    ADD COLUMN parked_at timestamptz;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NOT NULL;

-- The reconciler claims a stale pending payment before finishing it, so that exactly one
-- worker does; the claim lapses at claimed_until (a worker that died), then another may.
CREATE TABLE reconciler_claims (
    payment_id      uuid PRIMARY KEY REFERENCES payments (id),
    claimed_by      text NOT NULL,
    claimed_until   timestamptz NOT NULL,
    claims          integer NOT NULL DEFAULT 1
);
