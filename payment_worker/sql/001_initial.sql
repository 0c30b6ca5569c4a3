-- 001: payments, the command ledger and the transactional outbox.
-- Runs with search_path set to the configured schema (PAYMENT_DB_SCHEMA, default bc_payment).

CREATE TABLE payments (
    id                  uuid PRIMARY KEY,
    order_id            uuid NOT NULL,
    customer_id         uuid NOT NULL,
    reservation_id      uuid,
    amount              numeric(18, 2) NOT NULL CHECK (amount > 0),
    currency            text NOT NULL,
    payment_method      text NOT NULL,
    status              text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    error_code          text,
    error_message       text,
    failure_reason      text,
    transaction_id      text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    processed_at        timestamptz,
    is_simulated        boolean NOT NULL DEFAULT true,
    simulated_response  text,
    command_id          uuid
);

-- Rule I3: at most one succeeded and at most one pending payment per order, whoever writes.
CREATE UNIQUE INDEX payments_one_succeeded_per_order ON payments (order_id) WHERE status = 'succeeded';
CREATE UNIQUE INDEX payments_one_pending_per_order ON payments (order_id) WHERE status = 'pending';
CREATE INDEX payments_by_order ON payments (order_id);
CREATE INDEX payments_pending_by_age ON payments (created_at) WHERE status = 'pending';
CREATE INDEX payments_by_command ON payments (command_id);

-- Rule I1: one row per command id. 'in_progress' while its payment is pending (the reply
-- route is kept so the reconciler can answer a command that never comes back), 'final' once
-- the outcome is recorded. ERROR outcomes are never recorded.
CREATE TABLE command_ledger (
    command_id      uuid PRIMARY KEY,
    order_id        uuid NOT NULL,
    customer_id     uuid NOT NULL,
    amount          numeric(18, 2) NOT NULL,
    currency        text NOT NULL,
    state           text NOT NULL CHECK (state IN ('in_progress', 'final')),
    outcome         text,
    error_message   text,
    payment_id      uuid REFERENCES payments (id),
    reply_route     jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CHECK ((state = 'final') = (outcome IS NOT NULL))
);
CREATE INDEX command_ledger_by_order ON command_ledger (order_id);

-- Rule I6: everything the worker sends to Kafka is written here in the same transaction as
-- the state it announces, then published by the relay and marked sent.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('event', 'reply', 'dead_letter', 'republished_event')),
    topic       text NOT NULL,
    partition   integer,
    key         bytea,
    value       bytea,
    headers     jsonb NOT NULL DEFAULT '[]',
    event_id    uuid,
    payment_id  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
-- One event id per finalized payment, however often the finalizing step is retried.
CREATE UNIQUE INDEX outbox_one_event_per_payment ON outbox (payment_id) WHERE kind = 'event';
