-- Named queries of the PostgreSQL adapter. Each block starts with "-- name: NAME".
-- Parameters are %(name)s placeholders; tables resolve through the connection's search_path.

-- name: ledger_entries
SELECT command_id, order_id, customer_id, amount, currency, state, outcome, error_message,
       payment_id, reply_route
FROM command_ledger WHERE command_id = ANY(%(command_ids)s);

-- name: payment_by_id
SELECT * FROM payments WHERE id = %(id)s;

-- name: insert_pending_payment
INSERT INTO payments (id, order_id, customer_id, reservation_id, amount, currency,
                      payment_method, status, created_at, is_simulated, command_id)
VALUES (%(id)s, %(order_id)s, %(customer_id)s, %(reservation_id)s, %(amount)s, %(currency)s,
        %(payment_method)s, 'pending', %(created_at)s, true, %(command_id)s);

-- name: insert_ledger_in_progress
INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state,
                            payment_id, reply_route)
VALUES (%(command_id)s, %(order_id)s, %(customer_id)s, %(amount)s, %(currency)s,
        'in_progress', %(payment_id)s, %(reply_route)s);

-- name: finalize_payment
UPDATE payments
SET status = %(status)s, error_code = %(error_code)s, error_message = %(error_message)s,
    failure_reason = %(failure_reason)s, transaction_id = %(transaction_id)s,
    processed_at = %(processed_at)s, simulated_response = %(simulated_response)s
WHERE id = %(id)s AND status = 'pending'
RETURNING id;

-- name: finalize_ledger
UPDATE command_ledger
SET state = 'final', outcome = %(outcome)s, error_message = %(error_message)s,
    payment_id = %(payment_id)s, finished_at = now()
WHERE command_id = %(command_id)s AND state = 'in_progress';

-- name: insert_ledger_final
INSERT INTO command_ledger (command_id, order_id, customer_id, amount, currency, state,
                            outcome, error_message, payment_id, reply_route, finished_at)
VALUES (%(command_id)s, %(order_id)s, %(customer_id)s, %(amount)s, %(currency)s, 'final',
        %(outcome)s, %(error_message)s, %(payment_id)s, %(reply_route)s, now())
ON CONFLICT (command_id) DO NOTHING
RETURNING command_id;

-- name: insert_outbox
INSERT INTO outbox (kind, topic, partition, key, value, headers, event_id, payment_id)
VALUES (%(kind)s, %(topic)s, %(partition)s, %(key)s, %(value)s, %(headers)s, %(event_id)s,
        %(payment_id)s)
RETURNING id;

-- name: mark_sent
UPDATE outbox SET sent_at = now() WHERE id = ANY(%(ids)s) AND sent_at IS NULL;

-- name: claim_unsent
SELECT id, kind, topic, partition, key, value, headers
FROM outbox
WHERE sent_at IS NULL AND created_at < now() - make_interval(secs => %(older_than_s)s)
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: outbox_backlog
SELECT count(*) AS backlog FROM outbox WHERE sent_at IS NULL;

-- name: stale_pending_payments
SELECT p.*, l.reply_route
FROM payments p LEFT JOIN command_ledger l ON l.command_id = p.command_id
WHERE p.status = 'pending' AND p.created_at < now() - make_interval(secs => %(age_s)s)
ORDER BY p.created_at
LIMIT %(limit)s;

-- name: recorded_answers
-- Replay's batch lookup: each ledger entry with its payment in the shape of the reply's
-- `Payment` record (text ids, timestamp-micros), so that nothing is converted in Python.
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
WHERE l.command_id = ANY(%(command_ids)s::uuid[]);

-- name: insert_outbox_many
INSERT INTO outbox (kind, topic, partition, key, value, headers, event_id, payment_id)
SELECT * FROM unnest(%(kinds)s::text[], %(topics)s::text[], %(partitions)s::integer[],
                     %(keys)s::bytea[], %(values)s::bytea[], %(headers)s::jsonb[],
                     %(event_ids)s::uuid[], %(payment_ids)s::uuid[])
RETURNING id, kind, topic, partition, key, value, headers, event_id, payment_id;

-- name: recorded_events
SELECT DISTINCT ON (payment_id) payment_id, topic, partition, key, value, headers, event_id
FROM outbox
WHERE kind = 'event' AND payment_id = ANY(%(payment_ids)s::uuid[])
ORDER BY payment_id, id;

-- name: active_payments_for_orders
SELECT * FROM payments
WHERE order_id = ANY(%(order_ids)s) AND status IN ('succeeded', 'pending');

-- name: lock_orders
-- One advisory lock per order, taken in key order so that concurrent batches cannot deadlock.
SELECT pg_advisory_xact_lock(k)
FROM (SELECT DISTINCT hashtextextended(o::text, 7204) AS k
      FROM unnest(%(order_ids)s::uuid[]) AS o ORDER BY k) AS keys;
