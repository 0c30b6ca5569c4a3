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

-- The begin step is 006_begin_facts.sql's begin_facts: it states facts, and the domain decides.
