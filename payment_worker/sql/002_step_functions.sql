-- 002: the worker's multi-statement steps as server-side functions.
-- One call is one statement: in autocommit it is its own transaction, sent and answered in
-- one round trip, where the same step as separate statements in a transaction block cost the
-- worker several round trips and about four times the client CPU (psycopg, per batch).
-- The functions are VOLATILE plpgsql: under READ COMMITTED each statement in them reads a
-- fresh snapshot, exactly as the separate statements did (a lock taken by one statement is
-- followed by reads that see what the previous holder committed).
-- Tables resolve through the schema the function was created in (SET search_path FROM
-- CURRENT), whatever the caller's search_path.

-- finish_payments: the final state of a batch of payments, their ledger entries and their
-- outbox rows, in one transaction.
--   p_*: one element per payment (1-based position = its item number);
--   l_*: the ledger outcome of each payment's command, by the same position;
--   o_*: the outbox rows, each naming its payment's position in o_items.
-- Returns the positions of the payments that were still pending (now final; the others were
-- finalized by someone else and get nothing written), and the ids of the outbox rows written
-- for them, ascending in input order.
CREATE FUNCTION finish_payments(
    p_ids uuid[], p_statuses text[], p_error_codes text[], p_error_messages text[],
    p_failure_reasons text[], p_transaction_ids text[], p_processed_ats timestamptz[],
    p_simulated_responses text[],
    l_command_ids uuid[], l_outcomes text[], l_error_messages text[],
    o_items integer[], o_kinds text[], o_topics text[], o_partitions integer[],
    o_keys bytea[], o_values bytea[], o_headers jsonb[], o_event_ids uuid[], o_payment_ids uuid[],
    OUT done integer[], OUT outbox_ids bigint[]
) LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
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

-- begin_payments: for a batch of candidate pending payments, take the orders' locks, then
-- decide each from what the ledger and the order's payments say, and insert the new ones
-- with their in-progress ledger entries, in one transaction. One row per candidate (n is its
-- 1-based position), verdict:
--   inserted          its pending payment and ledger entry are written: charge it;
--   ledger            its command id has a final outcome (the ledger columns);
--   succeeded         the order has a succeeded payment (the payment columns);
--   pending / busy    the order has a pending payment of this / another command (payment);
--   pending_in_batch / busy_in_batch
--                     an earlier candidate of this batch (first_n) got the order's new pending
--                     payment, for this / another command;
--   error             its ledger entry is in progress but the order has no pending payment.
-- The checks come in that order, as for candidates served one at a time.
CREATE FUNCTION begin_payments(
    p_ids uuid[], p_order_ids uuid[], p_customer_ids uuid[], p_reservation_ids uuid[],
    p_amounts numeric[], p_currencies text[], p_payment_methods text[],
    p_created_ats timestamptz[], p_command_ids uuid[],
    l_order_ids uuid[], l_customer_ids uuid[], l_amounts numeric[], l_currencies text[],
    l_reply_routes jsonb[]
) RETURNS TABLE (
    n integer, verdict text, first_n integer,
    l_command_id uuid, l_order_id uuid, l_customer_id uuid, l_amount numeric, l_currency text,
    l_state text, l_outcome text, l_error_message text, l_payment_id uuid, l_reply_route jsonb,
    p_id uuid, p_order_id uuid, p_customer_id uuid, p_reservation_id uuid, p_amount numeric,
    p_currency text, p_payment_method text, p_status text, p_error_code text,
    p_error_message text, p_failure_reason text, p_transaction_id text,
    p_created_at timestamptz, p_processed_at timestamptz, p_is_simulated boolean,
    p_simulated_response text, p_command_id uuid
) LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    -- One advisory lock per order, taken in key order so that concurrent batches cannot
    -- deadlock; the statement below reads a snapshot taken after they are all held.
    PERFORM pg_advisory_xact_lock(k)
    FROM (SELECT DISTINCT hashtextextended(o::text, 7204) AS k
          FROM unnest(p_order_ids) AS o ORDER BY k) AS keys;

    RETURN QUERY
    WITH v AS (
        SELECT *
        FROM unnest(p_ids, p_order_ids, p_customer_ids, p_reservation_ids, p_amounts,
                    p_currencies, p_payment_methods, p_created_ats, p_command_ids,
                    l_order_ids, l_customer_ids, l_amounts, l_currencies, l_reply_routes)
             WITH ORDINALITY
             AS v(id, order_id, customer_id, reservation_id, amount, currency, payment_method,
                  created_at, command_id, l_order_id, l_customer_id, l_amount, l_currency,
                  reply_route, n)
    ),
    judged AS (
        SELECT v.n::integer AS n, v.order_id AS v_order_id, v.command_id AS v_command_id,
               l AS ledger, coalesce(s, p) AS payment,
               CASE WHEN l.state = 'final' THEN 'ledger'
                    WHEN s.id IS NOT NULL THEN 'succeeded'
                    WHEN p.id IS NOT NULL THEN
                         CASE WHEN p.command_id = v.command_id THEN 'pending' ELSE 'busy' END
                    WHEN l.command_id IS NOT NULL THEN 'error'
                    ELSE 'new' END AS verdict
        FROM v
        LEFT JOIN command_ledger l ON l.command_id = v.command_id
        LEFT JOIN payments s ON s.order_id = v.order_id AND s.status = 'succeeded'
        LEFT JOIN payments p ON p.order_id = v.order_id AND p.status = 'pending'
    ),
    -- The first 'new' candidate of an order gets its pending payment; the order's later
    -- 'new' or 'error' candidates find that payment pending.
    ranked AS (
        SELECT j.*,
               first_value(j.n) OVER w AS first_n,
               first_value(j.v_command_id) OVER w AS first_command_id,
               first_value(j.verdict) OVER w = 'new' AS order_has_new
        FROM judged j
        WINDOW w AS (PARTITION BY j.v_order_id ORDER BY j.verdict <> 'new', j.n)
    ),
    decided AS (
        SELECT r.n, r.ledger, r.payment, r.first_n,
               CASE WHEN r.verdict IN ('new', 'error') AND r.order_has_new AND r.first_n < r.n
                         THEN CASE WHEN r.first_command_id = r.v_command_id
                                   THEN 'pending_in_batch' ELSE 'busy_in_batch' END
                    WHEN r.verdict = 'new' THEN 'inserted'
                    ELSE r.verdict END AS verdict
        FROM ranked r
    ),
    inserted_payments AS (
        INSERT INTO payments (id, order_id, customer_id, reservation_id, amount, currency,
                              payment_method, status, created_at, is_simulated, command_id)
        SELECT v.id, v.order_id, v.customer_id, v.reservation_id, v.amount, v.currency,
               v.payment_method, 'pending', v.created_at, true, v.command_id
        FROM v JOIN decided d ON d.n = v.n
        WHERE d.verdict = 'inserted'
        ORDER BY v.n
    ),
    inserted_ledgers AS (
        INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state,
                                    payment_id, reply_route)
        SELECT v.command_id, v.l_order_id, v.l_customer_id, v.l_amount, v.l_currency,
               'in_progress', v.id, v.reply_route
        FROM v JOIN decided d ON d.n = v.n
        WHERE d.verdict = 'inserted'
        ORDER BY v.n
    )
    SELECT d.n, d.verdict, d.first_n,
           (d.ledger).command_id, (d.ledger).order_id, (d.ledger).customer_id,
           (d.ledger).amount, (d.ledger).currency, (d.ledger).state, (d.ledger).outcome,
           (d.ledger).error_message, (d.ledger).payment_id, (d.ledger).reply_route,
           (d.payment).id, (d.payment).order_id, (d.payment).customer_id,
           (d.payment).reservation_id, (d.payment).amount, (d.payment).currency,
           (d.payment).payment_method, (d.payment).status, (d.payment).error_code,
           (d.payment).error_message, (d.payment).failure_reason, (d.payment).transaction_id,
           (d.payment).created_at, (d.payment).processed_at, (d.payment).is_simulated,
           (d.payment).simulated_response, (d.payment).command_id
    FROM decided d
    ORDER BY d.n;
END
$$;
