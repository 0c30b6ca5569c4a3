-- 006: begin_facts, the begin step that states facts; the domain decides (domain/decision.py
-- `decide`). A new name: workers of the previous release go on calling the begin_payments they
-- know (it decided verdicts) while the new ones start, on a database migrated before this
-- migration; the next release's migration drops it.
-- For each candidate pending payment it answers what the ledger records once the batch's
-- inserts are made: the command id's entry, the order's succeeded payment, the order's pending
-- payment, and whether it inserted this candidate's pending payment and in-progress entry. It
-- inserts only when nothing blocks the candidate: no entry for its command id, no succeeded or
-- pending payment for its order, and no earlier unblocked candidate of the batch for the same
-- order or the same command id. No verdicts: the rule order lives in `decide` alone.
CREATE FUNCTION begin_facts(
    p_ids uuid[], p_order_ids uuid[], p_customer_ids uuid[], p_reservation_ids uuid[],
    p_amounts numeric[], p_currencies text[], p_payment_methods text[],
    p_created_ats timestamptz[], p_command_ids uuid[],
    l_order_ids uuid[], l_customer_ids uuid[], l_amounts numeric[], l_currencies text[],
    l_reply_routes jsonb[]
) RETURNS TABLE (n integer, inserted boolean, ledger command_ledger, succeeded payments,
                 pending payments)
LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan AS $$
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
