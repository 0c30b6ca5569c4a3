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
-- and pending payments (each NULL when absent). It reads committed data; the begin step checks
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

-- The begin step is 006_begin_facts.sql's begin_facts, with these settings: it states facts, and the
-- domain decides.
