-- 003: the batch steps look rows up by key, whatever the tables' statistics say.
-- Each step matches a batch of keys (unnest of array parameters) against payments and
-- command_ledger, with a plan cached per connection. On a database that fills up
-- faster than autovacuum analyzes it (a new deployment, the benchmark), the planner, told the
-- tables were tiny, had chosen hash joins and nested loops over whole-table scans: cheap for
-- the few rows it was told of, but growing with the table (PostgreSQL CPU per payment went
-- from 0.8 ms to 2.2 ms between 1,000 and 5,000 payments). Here every lookup is one probe of
-- a primary key or a partial unique index per key, which costs the same at any size:
--   * the reads are correlated subqueries (one index probe each, at most one row each by the
--     unique indexes), never joins the planner could turn into scans;
--   * the functions run with sequential scans, hash joins and merge joins disabled, so the
--     remaining joins (the finish step's UPDATE ... FROM unnest) are nested loops on the keys;
--   * and with their statements' generic plans, made once per connection: under the default
--     plan_cache_mode, begin_payments was planned anew on every call (its generic plan looked
--     dearer than the custom ones), 0.6 ms of PostgreSQL CPU per batch before any work.

-- snapshots: the pipeline's first read (it was the `snapshots` query): for each
-- (command id, order id), in input order, the command's ledger entry and the order's succeeded
-- and pending payments (each NULL when absent). It reads committed data; begin_payments checks
-- everything again under the order's lock.
CREATE FUNCTION snapshots(p_command_ids uuid[], p_order_ids uuid[])
RETURNS TABLE (ledger command_ledger, succeeded payments, pending payments)
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY
    SELECT (SELECT l FROM command_ledger l WHERE l.command_id = v.command_id),
           (SELECT s FROM payments s WHERE s.order_id = v.order_id AND s.status = 'succeeded'),
           (SELECT p FROM payments p WHERE p.order_id = v.order_id AND p.status = 'pending')
    FROM unnest(p_command_ids, p_order_ids) WITH ORDINALITY AS v(command_id, order_id, n)
    ORDER BY v.n;
END
$$;

ALTER FUNCTION finish_payments(
    uuid[], text[], text[], text[], text[], text[], timestamptz[], text[],
    uuid[], text[], text[],
    integer[], text[], text[], integer[], bytea[], bytea[], jsonb[], uuid[], uuid[]
)
    SET enable_seqscan = off
    SET enable_hashjoin = off
    SET enable_mergejoin = off
    SET plan_cache_mode = force_generic_plan;

-- begin_payments: as in 002 (same arguments, same rows, same verdicts), with the reads done
-- by key and the candidates carried through the steps instead of joined back to them.
CREATE OR REPLACE FUNCTION begin_payments(
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
) LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_seqscan = off
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
    judged AS (
        SELECT f.*, coalesce(f.succeeded, f.pending) AS payment,
               CASE WHEN (f.ledger).state = 'final' THEN 'ledger'
                    WHEN (f.succeeded).id IS NOT NULL THEN 'succeeded'
                    WHEN (f.pending).id IS NOT NULL THEN
                         CASE WHEN (f.pending).command_id = f.command_id
                              THEN 'pending' ELSE 'busy' END
                    WHEN (f.ledger).command_id IS NOT NULL THEN 'error'
                    ELSE 'new' END AS verdict
        FROM found f
    ),
    -- The first 'new' candidate of an order gets its pending payment; the order's later
    -- 'new' or 'error' candidates find that payment pending.
    ranked AS (
        SELECT j.*,
               first_value(j.n) OVER w AS first_n,
               first_value(j.command_id) OVER w AS first_command_id,
               first_value(j.verdict) OVER w = 'new' AS order_has_new
        FROM judged j
        WINDOW w AS (PARTITION BY j.order_id ORDER BY j.verdict <> 'new', j.n)
    ),
    decided AS (
        SELECT r.*,
               CASE WHEN r.verdict IN ('new', 'error') AND r.order_has_new AND r.first_n < r.n
                         THEN CASE WHEN r.first_command_id = r.command_id
                                   THEN 'pending_in_batch' ELSE 'busy_in_batch' END
                    WHEN r.verdict = 'new' THEN 'inserted'
                    ELSE r.verdict END AS decision
        FROM ranked r
    ),
    inserted_payments AS (
        INSERT INTO payments (id, order_id, customer_id, reservation_id, amount, currency,
                              payment_method, status, created_at, is_simulated, command_id)
        SELECT d.id, d.order_id, d.customer_id, d.reservation_id, d.amount, d.currency,
               d.payment_method, 'pending', d.created_at, true, d.command_id
        FROM decided d
        WHERE d.decision = 'inserted'
        ORDER BY d.n
    ),
    inserted_ledgers AS (
        INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state,
                                    payment_id, reply_route)
        SELECT d.command_id, d.l_order_id, d.l_customer_id, d.l_amount, d.l_currency,
               'in_progress', d.id, d.reply_route
        FROM decided d
        WHERE d.decision = 'inserted'
        ORDER BY d.n
    )
    SELECT d.n::integer, d.decision, d.first_n::integer,
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
