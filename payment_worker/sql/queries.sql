-- Named queries of the PostgreSQL adapter. Each block starts with "-- name: NAME".
-- Parameters are %(name)s placeholders (%(name)b: sent in binary, which for arrays costs a
-- fraction of the text form's escaping); tables resolve through the connection's search_path.
-- The batch statements take one array per column, named after the column (adapters/postgres/
-- rows.py lists the columns); rows are read by position or by name, so no query selects a
-- table's `*`.

-- name: snapshots
-- The pipeline's first read (sql/003_key_lookup_plans.sql), one row per (command id, order id)
-- in input order: the command's ledger entry, the order's succeeded payment and its pending one
-- (each all NULL when absent). One statement with no transaction block: it reads committed
-- data, and begin_facts checks everything again under the order's lock.
-- The facts placeholder below is each part's columns named one by one after it,
-- `(succeeded).id AS succeeded_id`... (FACTS in adapters/postgres/rows.py, made from the column
-- lists the store reads them by; never `(succeeded).*`: a column added to payments later is
-- not read until it is listed there).
SELECT {facts}
FROM snapshots(%(command_ids)b::uuid[], %(order_ids)b::uuid[]);

-- name: payment_by_id
SELECT id, order_id, customer_id, reservation_id, amount, currency, payment_method, status,
       error_code, error_message, failure_reason, transaction_id, created_at, processed_at,
       is_simulated, simulated_response, command_id
FROM payments WHERE id = %(id)s;

-- name: begin_facts
-- The begin step in one statement (begin_facts, sql/006_begin_facts.sql): the orders' locks,
-- the new pending payments with their ledger entries, and per candidate in input order whether it was inserted
-- and what the ledger records of its command id and order (the facts, as in `snapshots`). The
-- batch statements take one array per column (unnest): one statement per batch, however many
-- commands it serves, instead of one statement per row.
SELECT n, inserted, {facts}
FROM begin_facts(
    %(id)b::uuid[], %(order_id)b::uuid[], %(customer_id)b::uuid[],
    %(reservation_id)b::uuid[], %(amount)b::numeric[], %(currency)b::text[],
    %(payment_method)b::text[], %(created_at)b::timestamptz[], %(command_id)b::uuid[],
    %(ledger_order_id)b::uuid[], %(ledger_customer_id)b::uuid[], %(ledger_amount)b::numeric[],
    %(ledger_currency)b::text[], %(reply_route)b::jsonb[]);

-- name: finish_payments
-- The finish step in one statement (sql/002_step_functions.sql, its settings in 003, the
-- is_simulated overload in 007): final states, ledger entries and outbox rows of the payments
-- still pending.
SELECT done, outbox_ids
FROM finish_payments(
    %(id)b::uuid[], %(status)b::text[], %(error_code)b::text[], %(error_message)b::text[],
    %(failure_reason)b::text[], %(transaction_id)b::text[], %(processed_at)b::timestamptz[],
    %(simulated_response)b::text[],
    %(command_id)b::uuid[], %(outcome)b::text[], %(ledger_error_message)b::text[],
    %(item)b::integer[], %(kind)b::text[], %(topic)b::text[], %(partition)b::integer[],
    %(key)b::bytea[], %(value)b::bytea[], %(headers)b::jsonb[], %(event_id)b::uuid[],
    %(payment_id)b::uuid[], %(is_simulated)b::boolean[]);

-- name: insert_ledgers_final
-- Returns the command ids that were new (an entry recorded before is left as it was).
INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state,
                            outcome, error_message, payment_id, reply_route, finished_at)
SELECT command_id, order_id, customer_id, amount, currency, 'final', outcome, error_message,
       payment_id, reply_route, now()
FROM unnest(%(command_id)b::uuid[], %(order_id)b::uuid[], %(customer_id)b::uuid[],
            %(amount)b::numeric[], %(currency)b::text[], %(outcome)b::text[],
            %(error_message)b::text[], %(payment_id)b::uuid[], %(reply_route)b::jsonb[])
     WITH ORDINALITY
     AS v(command_id, order_id, customer_id, amount, currency, outcome, error_message,
          payment_id, reply_route, n)
ORDER BY n
ON CONFLICT (command_id) DO NOTHING
RETURNING command_id;

-- name: insert_outbox
-- Rows are inserted in input order (ORDER BY n), so their ids, drawn from the sequence as each
-- row is inserted, ascend in input order: the caller matches sorted ids to its messages.
INSERT INTO outbox (kind, topic, partition, key, value, headers, event_id, payment_id)
SELECT kind, topic, partition, key, value, headers, event_id, payment_id
FROM unnest(%(kind)b::text[], %(topic)b::text[], %(partition)b::integer[],
            %(key)b::bytea[], %(value)b::bytea[], %(headers)b::jsonb[],
            %(event_id)b::uuid[], %(payment_id)b::uuid[]) WITH ORDINALITY
     AS v(kind, topic, partition, key, value, headers, event_id, payment_id, n)
ORDER BY n
RETURNING id;

-- name: mark_sent
UPDATE outbox SET sent_at = now() WHERE id = ANY(%(ids)b) AND sent_at IS NULL;

-- name: claim_unsent
-- The sweeper's share: unsent rows due for a try, the longest due first (a row tried again
-- waits behind the rows that were due before it), leased until %(lease_s)s from now (a
-- delivery report marks them sent or failed before then; a process that died leaves them to
-- the next lease). A row never tried is due once it is older than %(older_than_s)s: until
-- then it is the fast path's of the process that wrote it. Rows waiting or parked are skipped.
UPDATE outbox o SET next_attempt_at = now() + make_interval(secs => %(lease_s)s)
WHERE o.id IN (
    SELECT id FROM outbox
    WHERE sent_at IS NULL AND parked_at IS NULL
      AND CASE WHEN next_attempt_at IS NULL
               THEN created_at < now() - make_interval(secs => %(older_than_s)s)
               ELSE next_attempt_at <= now() END
    ORDER BY coalesce(next_attempt_at, created_at), id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING o.id, o.kind, o.topic, o.partition, o.key, o.value, o.headers;

-- name: claim_parked_probes
-- One parked row of each route (topic, partition), the oldest, not probed in the last
-- %(lease_s)s: sent again to learn whether the route works again.
UPDATE outbox o SET next_attempt_at = now() + make_interval(secs => %(lease_s)s)
WHERE o.id IN (
    SELECT id FROM outbox
    WHERE id IN (
        SELECT min(id) FROM outbox
        WHERE sent_at IS NULL AND parked_at IS NOT NULL
          AND (next_attempt_at IS NULL OR next_attempt_at <= now())
        GROUP BY topic, partition)
    FOR UPDATE SKIP LOCKED)
RETURNING o.id, o.kind, o.topic, o.partition, o.key, o.value, o.headers;

-- name: unpark
-- Parked rows back to the sweeper, due now, their refusals forgotten: all of them, a topic's,
-- or one route's (%(partition)s NULL with a topic: every partition of it, and rows without one).
UPDATE outbox SET parked_at = NULL, attempts = 0, next_attempt_at = now()
WHERE sent_at IS NULL AND parked_at IS NOT NULL
  AND (%(topic)s::text IS NULL OR topic = %(topic)s::text)
  AND (%(partition)s::integer IS NULL OR partition IS NULL OR partition = %(partition)s::integer);

-- name: mark_failed
-- Rows the broker refused: the next try after a growing, jittered wait (0.5 s doubling to
-- 60 s), parked once %(max_attempts)s refusals are counted. A failure that says nothing about
-- the row (the broker unreachable) is not counted and is tried again in 5 s.
UPDATE outbox o
SET attempts = o.attempts + CASE WHEN f.counted THEN 1 ELSE 0 END,
    last_error = f.error,
    next_attempt_at = now() + make_interval(secs => CASE
        WHEN f.counted THEN least(60, 0.5 * 2 ^ least(o.attempts, 10)) * (0.5 + random() / 2)
        ELSE 5 END),
    parked_at = CASE WHEN f.counted AND o.attempts + 1 >= %(max_attempts)s THEN now() END
FROM unnest(%(ids)b::bigint[], %(errors)b::text[], %(counted)b::boolean[])
     AS f(id, error, counted)
WHERE o.id = f.id AND o.sent_at IS NULL AND o.parked_at IS NULL
RETURNING o.id, o.kind, o.topic, o.partition, o.attempts, o.parked_at IS NOT NULL AS parked;

-- name: claim_stale_payments
-- The reconciler's share: payments pending for longer than %(age_s)s on the database's
-- clock (the age of the in-progress ledger entry, which the database stamped in the
-- statement that inserted the payment; created_at for a payment without one), not claimed
-- by a live claim, oldest first; each claimed for %(lease_s)s. Two reconcilers never get the
-- same payment: the payment rows are locked while claimed (SKIP LOCKED), and a claim made
-- meanwhile is seen by the insert's conflict check.
WITH stale AS (
    SELECT p.id
    FROM payments p LEFT JOIN command_ledger l ON l.command_id = p.command_id
    WHERE p.status = 'pending'
      AND coalesce(l.created_at, p.created_at) < now() - make_interval(secs => %(age_s)s)
      AND NOT EXISTS (SELECT 1 FROM reconciler_claims c
                      WHERE c.payment_id = p.id AND c.claimed_until > now())
    ORDER BY coalesce(l.created_at, p.created_at)
    LIMIT %(limit)s
    FOR UPDATE OF p SKIP LOCKED
), claimed AS (
    INSERT INTO reconciler_claims (payment_id, claimed_by, claimed_until)
    SELECT id, %(owner)s, now() + make_interval(secs => %(lease_s)s) FROM stale
    ON CONFLICT (payment_id) DO UPDATE
        SET claimed_by = excluded.claimed_by, claimed_until = excluded.claimed_until,
            claims = reconciler_claims.claims + 1
        WHERE reconciler_claims.claimed_until <= now()
    RETURNING payment_id
)
SELECT p.id, p.order_id, p.customer_id, p.reservation_id, p.amount, p.currency,
       p.payment_method, p.status, p.error_code, p.error_message, p.failure_reason,
       p.transaction_id, p.created_at, p.processed_at, p.is_simulated, p.simulated_response,
       p.command_id, l.reply_route
FROM claimed c JOIN payments p ON p.id = c.payment_id
     LEFT JOIN command_ledger l ON l.command_id = p.command_id
ORDER BY p.created_at;

-- name: release_claims
-- Claims of payments no longer pending have done their work.
DELETE FROM reconciler_claims c
WHERE NOT EXISTS (SELECT 1 FROM payments p WHERE p.id = c.payment_id AND p.status = 'pending');

-- name: release_claim
-- One claim given back at once (its payment's gateway answer was unknown: the next pass asks
-- again), the claimant's own only.
DELETE FROM reconciler_claims
WHERE payment_id = %(payment_id)s::uuid AND claimed_by = %(claimed_by)s;

-- name: recorded_answers
-- Replay's batch lookup: each ledger entry with its payment in the shape of the reply's
-- `Payment` record (text ids, timestamp-micros), so that nothing is converted in Python.
-- Read by position: the nine ledger columns, then the payment's in REPLY_PAYMENT_FIELDS order.
SELECT l.command_id::text AS l_command_id, l.order_id::text AS l_order_id,
       l.customer_id::text AS l_customer_id, l.amount AS l_amount, l.currency AS l_currency,
       l.state AS l_state, l.outcome AS l_outcome, l.error_message AS l_error_message,
       l.payment_id::text AS l_payment_id,
       p.id::text AS "id", p.order_id::text AS "orderId", p.customer_id::text AS "customerId",
       p.reservation_id::text AS "reservationId", p.amount AS "amount",
       p.currency AS "currency", p.payment_method AS "paymentMethod", p.status AS "status",
       p.error_code AS "errorCode", p.error_message AS "errorMessage",
       p.failure_reason AS "failureReason", p.transaction_id AS "transactionId",
       (extract(epoch FROM p.created_at) * 1000000)::bigint AS "createdAt",
       (extract(epoch FROM p.processed_at) * 1000000)::bigint AS "processedAt",
       p.is_simulated AS "isSimulated", p.simulated_response AS "simulatedResponse"
FROM command_ledger l LEFT JOIN payments p ON p.id = l.payment_id
WHERE l.command_id = ANY(%(command_ids)b::uuid[]);

-- name: recorded_events
SELECT DISTINCT ON (payment_id) kind, topic, partition, key, value, headers, event_id, payment_id
FROM outbox
WHERE kind = 'event' AND payment_id = ANY(%(payment_ids)b::uuid[])
ORDER BY payment_id, id;

-- name: stuck_state
-- What is backing up: unsent outbox rows and the age of the oldest (by id, the order rows
-- are written in: the outbox_unsent index), parked rows, pending payments and the oldest
-- (payments_pending_by_age). Ages in seconds on the database's clock; 0 when none.
SELECT
    (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NULL) AS backlog,
    coalesce((SELECT extract(epoch FROM now() - created_at)::float8 FROM outbox
              WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY id LIMIT 1), 0) AS oldest_unsent_s,
    (SELECT count(*) FROM outbox WHERE sent_at IS NULL AND parked_at IS NOT NULL) AS parked,
    (SELECT count(*) FROM payments WHERE status = 'pending') AS pending,
    coalesce((SELECT extract(epoch FROM now() - min(created_at))::float8 FROM payments
              WHERE status = 'pending'), 0) AS oldest_pending_s;

-- name: parked_by_reason
-- Parked outbox rows by kind and the broker's last refusal.
SELECT kind, coalesce(last_error, '') AS error, count(*) AS rows
FROM outbox WHERE sent_at IS NULL AND parked_at IS NOT NULL
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 20;

-- name: dead_letters_last_hour
-- Dead letters written in the last hour, by their dlq-reason header (stored as hex).
SELECT coalesce((SELECT convert_from(decode(h ->> 1, 'hex'), 'UTF8')
                 FROM jsonb_array_elements(o.headers) h
                 WHERE h ->> 0 = 'dlq-reason' LIMIT 1), 'unknown') AS reason,
       count(*) AS records
FROM outbox o
WHERE o.kind = 'dead_letter' AND o.created_at > now() - interval '1 hour'
GROUP BY 1 ORDER BY 2 DESC, 1;

-- name: last_reconciler_run
SELECT reconciler_id, extract(epoch FROM now() - last_run_at)::float8 AS age_s, last_finished,
       total_finished
FROM reconciler_runs ORDER BY last_run_at DESC LIMIT 1;

-- name: record_reconciler_run
WITH pruned AS (
    DELETE FROM reconciler_runs WHERE last_run_at < now() - interval '7 days'
)
INSERT INTO reconciler_runs (reconciler_id, last_run_at, last_finished, total_finished)
VALUES (%(reconciler_id)s, now(), %(finished)s, %(finished)s)
ON CONFLICT (reconciler_id) DO UPDATE
    SET last_run_at = now(), last_finished = excluded.last_finished,
        total_finished = reconciler_runs.total_finished + excluded.last_finished;

-- name: remember_reference
-- The gateway's reference for a payment's charge; the first recorded is kept and answered.
WITH written AS (
    INSERT INTO gateway_references (payment_id, gateway, reference)
    VALUES (%(payment_id)s, %(gateway)s, %(reference)s)
    ON CONFLICT (payment_id) DO NOTHING
    RETURNING reference
)
SELECT reference FROM written
UNION ALL
SELECT reference FROM gateway_references WHERE payment_id = %(payment_id)s
LIMIT 1;

-- name: recall_reference
SELECT reference FROM gateway_references WHERE payment_id = %(payment_id)s AND gateway = %(gateway)s;
