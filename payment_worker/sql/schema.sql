-- The schema as the migrations leave it (payment_worker/sql/0NN_*.sql, then the runner's
-- schema_migrations table): generated, do not edit. After changing a migration, regenerate it
-- with `make schema` (python -m payment_worker.adapters.postgres.schema_dump);
-- tests/integration/test_schema_file.py fails while it differs from a freshly migrated schema.
-- A reading copy, not a migration: the runner applies only files named NNN_name.sql.
-- Names are unqualified, as the migrations write them (they run with search_path set to
-- PAYMENT_DB_SCHEMA); owners and grants are the deployment's and are left out.
-- Order: tables by name (columns in order, constraints, then the table's indexes),
-- sequences, then functions by name and arguments.

CREATE TABLE command_ledger (
    command_id    uuid NOT NULL,
    order_id      uuid NOT NULL,
    customer_id   uuid NOT NULL,
    amount        numeric(18,2) NOT NULL,
    currency      text NOT NULL,
    state         text NOT NULL,
    outcome       text,
    error_message text,
    payment_id    uuid,
    reply_route   jsonb NOT NULL,
    created_at    timestamp with time zone DEFAULT now() NOT NULL,
    finished_at   timestamp with time zone,
    CONSTRAINT command_ledger_pkey PRIMARY KEY (command_id),
    CONSTRAINT command_ledger_payment_id_fkey FOREIGN KEY (payment_id) REFERENCES payments(id),
    CONSTRAINT command_ledger_check CHECK (((state = 'final'::text) = (outcome IS NOT NULL))),
    CONSTRAINT command_ledger_state_check CHECK ((state = ANY (ARRAY['in_progress'::text, 'final'::text])))
);
CREATE INDEX command_ledger_by_order ON command_ledger USING btree (order_id);

CREATE TABLE gateway_references (
    payment_id  uuid NOT NULL,
    gateway     text NOT NULL,
    reference   text NOT NULL,
    recorded_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT gateway_references_pkey PRIMARY KEY (payment_id),
    CONSTRAINT gateway_references_payment_id_fkey FOREIGN KEY (payment_id) REFERENCES payments(id)
);

CREATE TABLE outbox (
    id              bigint DEFAULT nextval('outbox_id_seq'::regclass) NOT NULL,
    kind            text NOT NULL,
    topic           text NOT NULL,
    partition       integer,
    key             bytea,
    value           bytea,
    headers         jsonb DEFAULT '[]'::jsonb NOT NULL,
    event_id        uuid,
    payment_id      uuid,
    created_at      timestamp with time zone DEFAULT now() NOT NULL,
    sent_at         timestamp with time zone,
    attempts        integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone,
    last_error      text,
    parked_at       timestamp with time zone,
    CONSTRAINT outbox_pkey PRIMARY KEY (id),
    CONSTRAINT outbox_kind_check CHECK ((kind = ANY (ARRAY['event'::text, 'reply'::text, 'dead_letter'::text, 'republished_event'::text])))
);
CREATE INDEX outbox_dead_letters_by_age ON outbox USING btree (created_at) WHERE (kind = 'dead_letter'::text);
CREATE UNIQUE INDEX outbox_one_event_per_payment ON outbox USING btree (payment_id) WHERE (kind = 'event'::text);
CREATE INDEX outbox_parked ON outbox USING btree (id) WHERE ((sent_at IS NULL) AND (parked_at IS NOT NULL));
CREATE INDEX outbox_unsent ON outbox USING btree (id) WHERE ((sent_at IS NULL) AND (parked_at IS NULL));

CREATE TABLE payments (
    id                 uuid NOT NULL,
    order_id           uuid NOT NULL,
    customer_id        uuid NOT NULL,
    reservation_id     uuid,
    amount             numeric(18,2) NOT NULL,
    currency           text NOT NULL,
    payment_method     text NOT NULL,
    status             text NOT NULL,
    error_code         text,
    error_message      text,
    failure_reason     text,
    transaction_id     text,
    created_at         timestamp with time zone DEFAULT now() NOT NULL,
    processed_at       timestamp with time zone,
    is_simulated       boolean DEFAULT true NOT NULL,
    simulated_response text,
    command_id         uuid,
    CONSTRAINT payments_pkey PRIMARY KEY (id),
    CONSTRAINT payments_amount_check CHECK ((amount > (0)::numeric)),
    CONSTRAINT payments_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'succeeded'::text, 'failed'::text])))
);
CREATE INDEX payments_by_command ON payments USING btree (command_id);
CREATE INDEX payments_by_order ON payments USING btree (order_id);
CREATE UNIQUE INDEX payments_one_pending_per_order ON payments USING btree (order_id) WHERE (status = 'pending'::text);
CREATE UNIQUE INDEX payments_one_succeeded_per_order ON payments USING btree (order_id) WHERE (status = 'succeeded'::text);
CREATE INDEX payments_pending_by_age ON payments USING btree (created_at) WHERE (status = 'pending'::text);

CREATE TABLE reconciler_claims (
    payment_id    uuid NOT NULL,
    claimed_by    text NOT NULL,
    claimed_until timestamp with time zone NOT NULL,
    claims        integer DEFAULT 1 NOT NULL,
    CONSTRAINT reconciler_claims_pkey PRIMARY KEY (payment_id),
    CONSTRAINT reconciler_claims_payment_id_fkey FOREIGN KEY (payment_id) REFERENCES payments(id)
);

CREATE TABLE reconciler_runs (
    reconciler_id  text NOT NULL,
    last_run_at    timestamp with time zone NOT NULL,
    last_finished  integer NOT NULL,
    total_finished bigint NOT NULL,
    CONSTRAINT reconciler_runs_pkey PRIMARY KEY (reconciler_id)
);

CREATE TABLE schema_migrations (
    version    integer NOT NULL,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);

CREATE SEQUENCE outbox_id_seq AS bigint
    START 1 INCREMENT 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1
    OWNED BY outbox.id;

CREATE FUNCTION begin_facts(
    p_ids uuid[], p_order_ids uuid[], p_customer_ids uuid[], p_reservation_ids uuid[],
    p_amounts numeric[], p_currencies text[], p_payment_methods text[],
    p_created_ats timestamp with time zone[], p_command_ids uuid[], l_order_ids uuid[],
    l_customer_ids uuid[], l_amounts numeric[], l_currencies text[], l_reply_routes jsonb[]
)
    RETURNS TABLE (
        n integer, inserted boolean, ledger command_ledger, succeeded payments, pending payments
    )
    LANGUAGE plpgsql VOLATILE
    SET search_path FROM CURRENT
    SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    -- One advisory lock per order, taken in key order so that concurrent batches cannot
    -- deadlock; the statement below reads a snapshot taken after they are all held.
    PERFORM pg_advisory_xact_lock(k)
    FROM (SELECT DISTINCT hashtextextended(o::text, 7204) AS k
          FROM unnest(p_order_ids) AS o ORDER BY k) AS keys;

    RETURN QUERY
    WITH found AS (
        SELECT v.*,
               (SELECT l FROM command_ledger l WHERE l.command_id = v.command_id) AS ledger,
               (SELECT s FROM payments s
                WHERE s.order_id = v.order_id AND s.status = 'succeeded') AS succeeded,
               (SELECT p FROM payments p
                WHERE p.order_id = v.order_id AND p.status = 'pending') AS pending
        FROM unnest(p_ids, p_order_ids, p_customer_ids, p_reservation_ids, p_amounts,
                    p_currencies, p_payment_methods, p_created_ats, p_command_ids,
                    l_order_ids, l_customer_ids, l_amounts, l_currencies, l_reply_routes)
             WITH ORDINALITY
             AS v(id, order_id, customer_id, reservation_id, amount, currency, payment_method,
                  created_at, command_id, l_order_id, l_customer_id, l_amount, l_currency,
                  reply_route, n)
    ),
    unblocked AS (
        SELECT f.*, (f.ledger).command_id IS NULL AND (f.succeeded).id IS NULL
                    AND (f.pending).id IS NULL AS free
        FROM found f
    ),
    chosen AS (
        SELECT u.*,
               u.free
               AND u.n = min(u.n) FILTER (WHERE u.free) OVER (PARTITION BY u.order_id)
               AND u.n = min(u.n) FILTER (WHERE u.free) OVER (PARTITION BY u.command_id)
               AS insert_it
        FROM unblocked u
    ),
    inserted_payments AS (
        INSERT INTO payments (id, order_id, customer_id, reservation_id, amount, currency,
                              payment_method, status, created_at, is_simulated, command_id)
        SELECT c.id, c.order_id, c.customer_id, c.reservation_id, c.amount, c.currency,
               c.payment_method, 'pending', c.created_at, true, c.command_id
        FROM chosen c
        WHERE c.insert_it
        ORDER BY c.n
        RETURNING *
    ),
    inserted_ledgers AS (
        INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state,
                                    payment_id, reply_route)
        SELECT c.command_id, c.l_order_id, c.l_customer_id, c.l_amount, c.l_currency,
               'in_progress', c.id, c.reply_route
        FROM chosen c
        WHERE c.insert_it
        -- In key order, as the advisory locks: two batches holding one command id for two
        -- orders meet on it in one order (one waits, then finds it written), never deadlock.
        ORDER BY c.command_id
        RETURNING *
    )
    -- What was found, or what this batch inserted (never both: a candidate inserts only where
    -- nothing was found for its command id and its order).
    SELECT c.n::integer, c.insert_it,
           coalesce(c.ledger, (SELECT ROW(il.*)::command_ledger FROM inserted_ledgers il
                               WHERE il.command_id = c.command_id)),
           c.succeeded,
           coalesce(c.pending, (SELECT ROW(ip.*)::payments FROM inserted_payments ip
                                WHERE ip.order_id = c.order_id))
    FROM chosen c
    ORDER BY c.n;
END
$$;

CREATE FUNCTION finish_payments(
    p_ids uuid[], p_statuses text[], p_error_codes text[], p_error_messages text[],
    p_failure_reasons text[], p_transaction_ids text[], p_processed_ats timestamp with time zone[],
    p_simulated_responses text[], l_command_ids uuid[], l_outcomes text[], l_error_messages text[],
    o_items integer[], o_kinds text[], o_topics text[], o_partitions integer[], o_keys bytea[],
    o_values bytea[], o_headers jsonb[], o_event_ids uuid[], o_payment_ids uuid[],
    OUT done integer[], OUT outbox_ids bigint[]
)
    RETURNS record
    LANGUAGE plpgsql VOLATILE
    SET search_path FROM CURRENT
    SET enable_seqscan = off
    SET enable_hashjoin = off
    SET enable_mergejoin = off
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- Lock the payments still pending, in id order, so that concurrent batches finalizing
    -- the same payments cannot deadlock.
    PERFORM 1 FROM payments WHERE id = ANY(p_ids) AND status = 'pending' ORDER BY id FOR UPDATE;

    WITH finalized AS (
        UPDATE payments p
        SET status = v.status, error_code = v.error_code, error_message = v.error_message,
            failure_reason = v.failure_reason, transaction_id = v.transaction_id,
            processed_at = v.processed_at, simulated_response = v.simulated_response
        FROM unnest(p_ids, p_statuses, p_error_codes, p_error_messages, p_failure_reasons,
                    p_transaction_ids, p_processed_ats, p_simulated_responses) WITH ORDINALITY
             AS v(id, status, error_code, error_message, failure_reason, transaction_id,
                  processed_at, simulated_response, n)
        WHERE p.id = v.id AND p.status = 'pending'
        RETURNING v.n
    )
    SELECT coalesce(array_agg(n::integer ORDER BY n), '{}') INTO done FROM finalized;

    UPDATE command_ledger l
    SET state = 'final', outcome = v.outcome, error_message = v.error_message,
        payment_id = v.payment_id, finished_at = now()
    FROM unnest(l_command_ids, l_outcomes, l_error_messages, p_ids) WITH ORDINALITY
         AS v(command_id, outcome, error_message, payment_id, n)
    WHERE v.n = ANY(done) AND l.command_id = v.command_id AND l.state = 'in_progress';

    -- Rows are inserted in input order (ORDER BY n), so their ids, drawn from the sequence
    -- as each row is inserted, ascend in input order.
    WITH written AS (
        INSERT INTO outbox (kind, topic, partition, key, value, headers, event_id, payment_id)
        SELECT kind, topic, partition, key, value, headers, event_id, payment_id
        FROM unnest(o_items, o_kinds, o_topics, o_partitions, o_keys, o_values, o_headers,
                    o_event_ids, o_payment_ids) WITH ORDINALITY
             AS v(item, kind, topic, partition, key, value, headers, event_id, payment_id, n)
        WHERE v.item = ANY(done)
        ORDER BY n
        RETURNING id
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO outbox_ids FROM written;
END
$$;

CREATE FUNCTION finish_payments(
    p_ids uuid[], p_statuses text[], p_error_codes text[], p_error_messages text[],
    p_failure_reasons text[], p_transaction_ids text[], p_processed_ats timestamp with time zone[],
    p_simulated_responses text[], l_command_ids uuid[], l_outcomes text[], l_error_messages text[],
    o_items integer[], o_kinds text[], o_topics text[], o_partitions integer[], o_keys bytea[],
    o_values bytea[], o_headers jsonb[], o_event_ids uuid[], o_payment_ids uuid[],
    p_is_simulated boolean[], OUT done integer[], OUT outbox_ids bigint[]
)
    RETURNS record
    LANGUAGE plpgsql VOLATILE
    SET search_path FROM CURRENT
    SET enable_seqscan = off
    SET enable_hashjoin = off
    SET enable_mergejoin = off
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM 1 FROM payments WHERE id = ANY(p_ids) AND status = 'pending' ORDER BY id FOR UPDATE;
    UPDATE payments p
    SET is_simulated = v.is_simulated
    FROM unnest(p_ids, p_is_simulated) AS v(id, is_simulated)
    WHERE p.id = v.id AND p.status = 'pending' AND p.is_simulated IS DISTINCT FROM v.is_simulated;
    SELECT f.done, f.outbox_ids INTO done, outbox_ids
    FROM finish_payments(
        p_ids, p_statuses, p_error_codes, p_error_messages, p_failure_reasons,
        p_transaction_ids, p_processed_ats, p_simulated_responses,
        l_command_ids, l_outcomes, l_error_messages,
        o_items, o_kinds, o_topics, o_partitions, o_keys, o_values, o_headers, o_event_ids,
        o_payment_ids) AS f;
END
$$;

CREATE FUNCTION snapshots(p_command_ids uuid[], p_order_ids uuid[])
    RETURNS TABLE (ledger command_ledger, succeeded payments, pending payments)
    LANGUAGE plpgsql STABLE
    SET search_path FROM CURRENT
    SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT (SELECT l FROM command_ledger l WHERE l.command_id = v.command_id),
           (SELECT s FROM payments s WHERE s.order_id = v.order_id AND s.status = 'succeeded'),
           (SELECT p FROM payments p WHERE p.order_id = v.order_id AND p.status = 'pending')
    FROM unnest(p_command_ids, p_order_ids) WITH ORDINALITY AS v(command_id, order_id, n)
    ORDER BY v.n;
END
$$;
