-- 007: what a real gateway needs kept beside a payment.
-- gateway_references: the gateway's own id for a payment's charge (a Stripe PaymentIntent
-- id), recorded as soon as the gateway answers with one and before the charge is confirmed, so
-- that whoever asks again (a redelivered command, the reconciler, a restarted worker)
-- continues that charge and never starts a second one. The first reference recorded for a
-- payment is the one kept.
CREATE TABLE gateway_references (
    payment_id          uuid PRIMARY KEY REFERENCES payments (id),
    gateway             text NOT NULL,
    reference           text NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);

-- finish_payments with each payment's is_simulated (false for a real gateway's answer). An
-- overload, not a replacement: workers of the previous release go on calling the former
-- signature on a database migrated under them. It locks the pending payments in id order, as
-- the former does, before it sets the flag and calls the former for the rest.
CREATE FUNCTION finish_payments(
    p_ids uuid[], p_statuses text[], p_error_codes text[], p_error_messages text[],
    p_failure_reasons text[], p_transaction_ids text[], p_processed_ats timestamptz[],
    p_simulated_responses text[],
    l_command_ids uuid[], l_outcomes text[], l_error_messages text[],
    o_items integer[], o_kinds text[], o_topics text[], o_partitions integer[],
    o_keys bytea[], o_values bytea[], o_headers jsonb[], o_event_ids uuid[], o_payment_ids uuid[],
    p_is_simulated boolean[],
    OUT done integer[], OUT outbox_ids bigint[]
) LANGUAGE plpgsql SET search_path FROM CURRENT
    -- The former's settings (003_key_lookup_plans.sql), for the statements added here.
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    SET plan_cache_mode = force_generic_plan AS $$
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
