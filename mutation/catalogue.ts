/**
 * The mutations `npm run mutate` applies, one at a time: each replaces `find` (found exactly once in
 * `file`; for SQL, in the newest definition of `fn`) with `replace`, then runs `tests`. `equivalent` says
 * why a mutation may survive; `subsets: ["ci"]` puts it in CI's run.
 * @module
 */

/** One mutation of a guard. */
export interface Mutation {
  id: string;
  area: "idempotency" | "checkout" | "money" | "security" | "authorization";
  file: string;
  /** The SQL function mutated (checked to be its newest definition). */
  fn?: string;
  find: string;
  replace: string;
  what: string;
  tests: string[];
  /** Only the tests whose names match (deno test --filter), to keep CI's run short. */
  filter?: string;
  subsets?: string[];
  equivalent?: string;
}

export const CATALOGUE: Mutation[] = [
  {
    "id": "sql-complete-fence",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.complete_stripe_operation",
    "find":
      "    and k.status in ('in_progress', 'needs_attention') and k.fencing_token = p_fencing_token\n  returning k.* into v_row;\n  if found then\n    return private.stripe_operation_json(v_row, 'completed');",
    "replace":
      "    and k.status in ('in_progress', 'needs_attention')\n  returning k.* into v_row;\n  if found then\n    return private.stripe_operation_json(v_row, 'completed');",
    "what": "complete without the fencing-token check",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-fail-fence",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.fail_stripe_operation",
    "find":
      "    and k.status in ('in_progress', 'needs_attention') and k.fencing_token = p_fencing_token\n  returning k.* into v_row;\n  if found then\n    return private.stripe_operation_json(v_row, 'failed');",
    "replace":
      "    and k.status in ('in_progress', 'needs_attention')\n  returning k.* into v_row;\n  if found then\n    return private.stripe_operation_json(v_row, 'failed');",
    "what": "fail without the fencing-token check",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-release-fence",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.release_stripe_operation",
    "find":
      "  set locked_until = now(), last_error = left(p_error, 2000), updated_at = now()\n  where k.operation_type = p_operation_type and k.operation_id = p_operation_id\n    and k.status = 'in_progress' and k.fencing_token = p_fencing_token",
    "replace":
      "  set locked_until = now(), last_error = left(p_error, 2000), updated_at = now()\n  where k.operation_type = p_operation_type and k.operation_id = p_operation_id\n    and k.status = 'in_progress'",
    "what": "release without the fencing-token check",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-complete-terminal",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.complete_stripe_operation",
    "find":
      "    and k.status in ('in_progress', 'needs_attention') and k.fencing_token = p_fencing_token\n  returning k.* into v_row;\n  if found then\n    return private.stripe_operation_json(v_row, 'completed');",
    "replace":
      "    and k.fencing_token = p_fencing_token\n  returning k.* into v_row;\n  if found then\n    return private.stripe_operation_json(v_row, 'completed');",
    "what": "complete a row that is already failed",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-claim-mismatch",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000200_operation_registry.sql",
    "fn": "public.claim_stripe_operation",
    "find":
      "    if v_row.request_fingerprint is not null and v_row.request_fingerprint <> v_fingerprint then",
    "replace": "    if false then",
    "what": "claim ignores other parameters (no mismatch)",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-claim-busy",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000200_operation_registry.sql",
    "fn": "public.claim_stripe_operation",
    "find":
      "    if v_row.locked_until > now() then\n      return private.stripe_operation_json(v_row, 'in_progress');",
    "replace": "    if false then\n      return private.stripe_operation_json(v_row, 'in_progress');",
    "what": "claim takes over a live lease",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-claim-replay",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000200_operation_registry.sql",
    "fn": "public.claim_stripe_operation",
    "find":
      "    if v_row.status <> 'in_progress' then\n      return private.stripe_operation_json(v_row, 'replay');",
    "replace":
      "    if v_row.status not in ('in_progress', 'completed') then\n      return private.stripe_operation_json(v_row, 'replay');",
    "what": "claim of a completed operation does not replay",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-stale-live",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000200_operation_registry.sql",
    "fn": "public.claim_stale_stripe_operations",
    "find": "    where (k.status = 'in_progress' and k.locked_until <= now())",
    "replace": "    where (k.status = 'in_progress')",
    "what": "the reconciler claims live leases too",
    "tests": [
      "tests/webhooks.test.ts",
      "tests/idempotency_sql.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-stale-attention-wait",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000200_operation_registry.sql",
    "fn": "public.claim_stale_stripe_operations",
    "find": "       or (k.status = 'needs_attention' and k.updated_at <= now() - interval '15 minutes'",
    "replace": "       or (k.status = 'needs_attention'",
    "what": "needs_attention looked at again at once",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-attention-fence",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000200_operation_registry.sql",
    "fn": "public.attention_stripe_operation",
    "find":
      "  set status = 'needs_attention', locked_until = null, updated_at = now(),\n      evidence = coalesce(p_evidence, '{}'), last_error = left('look-up undecided: ' || coalesce(p_evidence::text, ''), 2000)\n  where k.operation_type = p_operation_type and k.operation_id = p_operation_id\n    and k.status = 'in_progress' and k.fencing_token = p_fencing_token",
    "replace":
      "  set status = 'needs_attention', locked_until = null, updated_at = now(),\n      evidence = coalesce(p_evidence, '{}'), last_error = left('look-up undecided: ' || coalesce(p_evidence::text, ''), 2000)\n  where k.operation_type = p_operation_type and k.operation_id = p_operation_id\n    and k.status = 'in_progress'",
    "what": "park as needs_attention without the fencing check",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-window-23h",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "private.stripe_key_window_passed",
    "find": "  select p_created_at < now() - interval '23 hours' or p_params is null",
    "replace": "  select p_created_at < now() - interval '25 hours' or p_params is null",
    "what": "Stripe's key window taken as 25 hours (re-sends a forgotten key)",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-forgotten-23h",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000500_lookup_proof.sql",
    "fn": "private.stripe_key_forgotten",
    "find": "  select p_created_at < now() - interval '24 hours 5 minutes'",
    "replace": "  select p_created_at < now() - interval '23 hours'",
    "what": "absence taken as proof at 23 h (the key may still execute)",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-resolve-attention-only",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000500_lookup_proof.sql",
    "fn": "public.resolve_stripe_operation",
    "find": "  if not found or v_row.status <> 'needs_attention' then",
    "replace": "  if not found or v_row.status not in ('needs_attention', 'in_progress') then",
    "what": "an operator may resolve an in_progress row",
    "tests": [
      "tests/guards.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-resolve-error-wait",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000500_lookup_proof.sql",
    "fn": "public.resolve_stripe_operation",
    "find": "  if p_error is not null and not private.stripe_key_forgotten(v_row.created_at) then",
    "replace": "  if false then",
    "what": "an operator's 'no object' accepted while the key may still execute",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-rowop-vanished",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000500_lookup_proof.sql",
    "fn": "private.claim_row_operation",
    "find":
      "    if not found then\n      raise exception '% % has no record of its Stripe call; an operator must settle it', p_operation_type,",
    "replace":
      "    if false then\n      raise exception '% % has no record of its Stripe call; an operator must settle it', p_operation_type,",
    "what": "a business row whose operation vanished gets a new key",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-burned-grace",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000600_redteam_fixes.sql",
    "fn": "private.stripe_operation_json",
    "find": "or k.key_burned_at <= now() - interval '15 minutes'",
    "replace": "or k.key_burned_at is not null",
    "what": "absence right after a saved 5xx taken as proof",
    "tests": [
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-defer-fence",
    "area": "idempotency",
    "file": "supabase/migrations/20261128000600_redteam_fixes.sql",
    "fn": "public.defer_stripe_operation",
    "find": "    and k.status = 'in_progress' and k.fencing_token = p_fencing_token",
    "replace": "    and k.status = 'in_progress'",
    "what": "defer without the fencing check",
    "tests": [
      "tests/money.test.ts",
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [],
    "equivalent":
      "a deferral only moves the lease of a row the holder just claimed; no test can interleave a takeover between the claim and the deferral of one request, and the model (P3) covers the guard",
  },
  {
    "id": "sql-key-claim-mismatch",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.claim_idempotency_key",
    "find":
      "    elsif v_row.request_fingerprint is not null and v_row.request_fingerprint <> p_fingerprint then",
    "replace": "    elsif false then",
    "what": "an Idempotency-Key replays for another payload",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-key-claim-expiry",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.claim_idempotency_key",
    "find": "    if v_row.expires_at <= now() then",
    "replace": "    if false then",
    "what": "an expired Idempotency-Key is never claimed anew",
    "tests": [
      "tests/guards.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-key-finish-fence",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "private.finish_idempotency_key",
    "find":
      "      response_body = p_response_body, locked_until = null, completed_at = now()\n  where k.scope = p_scope and k.key = p_key and k.status = 'in_progress' and k.fencing_token = p_fencing_token",
    "replace":
      "      response_body = p_response_body, locked_until = null, completed_at = now()\n  where k.scope = p_scope and k.key = p_key and k.status = 'in_progress'",
    "what": "a stale holder stores its answer",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-key-release-fence",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.release_idempotency_key",
    "find":
      "    update public.idempotency_keys k\n    set locked_until = now()\n    where k.scope = p_scope and k.key = p_key and k.status = 'in_progress' and k.fencing_token = p_fencing_token",
    "replace":
      "    update public.idempotency_keys k\n    set locked_until = now()\n    where k.scope = p_scope and k.key = p_key and k.status = 'in_progress'",
    "what": "a stale holder releases the key",
    "tests": [
      "tests/idempotency_sql.test.ts",
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-purge-running",
    "area": "idempotency",
    "file": "supabase/migrations/20261127000100_stripe_idempotency.sql",
    "fn": "public.purge_expired_idempotency",
    "find": "    where k.status in ('completed', 'failed') and k.expires_at <= now()",
    "replace": "    where k.expires_at <= now()",
    "what": "the purge deletes operations in progress",
    "tests": [
      "tests/idempotency_sql.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-capacity",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find": "    if v_item.sold + v_item.held + v_item.quantity > v_item.capacity then",
    "replace": "    if v_item.sold + v_item.held + v_item.quantity > v_item.capacity + 1 then",
    "what": "capacity exceeded by one",
    "tests": [
      "tests/checkout.test.ts",
      "tests/money_rules.test.ts",
      "tests/guards.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-amount-limits",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find": "  if v_subtotal + v_fee not between v_currency.minimum_charge and private.max_amount() then",
    "replace": "  if false then",
    "what": "orders outside Stripe's amount limits reach Stripe",
    "tests": [
      "tests/money_rules.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-on-sale",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find": "  if not v_event.on_sale then",
    "replace": "  if false then",
    "what": "an event not on sale sells",
    "tests": [
      "tests/checkout.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-started",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find": "  if v_event.starts_at <= now() then",
    "replace": "  if false then",
    "what": "an event that started sells",
    "tests": [
      "tests/checkout.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-tier-of-event",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find": "    if v_item.found_id is null or v_item.event_id <> p_event_id then",
    "replace": "    if v_item.found_id is null then",
    "what": "a tier of another event sells",
    "tests": [
      "tests/checkout.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-max-per-order",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find": "v_item.quantity > v_item.max_per_order then",
    "replace": "v_item.quantity > v_item.max_per_order + 100 then",
    "what": "more than max_per_order in one order",
    "tests": [
      "tests/checkout.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-checkout-closed",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find":
      "    if exists (select from events.orders o where o.id = v_order_id and o.status <> 'pending') then",
    "replace": "    if false then",
    "what": "an old key reopens a closed order's checkout",
    "tests": [
      "tests/guards.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-checkout-changed",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "private.begin_checkout",
    "find":
      "          is distinct from (select jsonb_agg(jsonb_build_array(x.tier_id, x.quantity) order by x.tier_id)",
    "replace":
      "          is not distinct from (select jsonb_agg(jsonb_build_array(x.tier_id, x.quantity) order by x.tier_id)",
    "what": "an old key answers with an order of other items",
    "tests": [
      "tests/guards.test.ts",
      "tests/checkout.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-event-currency",
    "area": "checkout",
    "file": "supabase/migrations/20261128000300_money_rules.sql",
    "fn": "public.create_event",
    "find": "  if not exists (select from private.currencies c where c.code = lower(p_currency)) then",
    "replace": "  if false then",
    "what": "events in a currency the platform does not settle",
    "tests": [
      "tests/money_rules.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-fraudulent-admin",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find": "    if p_reason = 'fraudulent' and not coalesce(p_is_admin, false) then",
    "replace": "    if false then",
    "what": "organisers refund as fraudulent",
    "tests": [
      "tests/money_rules.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-refund-owner",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find":
      "    if v_order.id is null or not (coalesce(p_is_admin, false) or v_organiser = p_requested_by) then",
    "replace": "    if v_order.id is null then",
    "what": "anyone refunds anyone's order",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-refund-paid",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find": "    if v_order.status not in ('paid', 'partially_refunded') then",
    "replace": "    if false then",
    "what": "an unpaid order is refunded",
    "tests": [
      "tests/guards.test.ts",
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-refundable",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find": "    if v_amount > v_refundable or v_amount <= 0 then",
    "replace": "    if v_amount <= 0 then",
    "what": "refunds beyond what is refundable",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-refund-in-flight",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find":
      "    from events.refunds r where r.order_id = p_order_id and r.status in ('pending', 'requires_action', 'succeeded');",
    "replace": "    from events.refunds r where r.order_id = p_order_id and r.status in ('succeeded');",
    "what": "refunds in flight not counted against what is refundable",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-recovery-cover",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find": "      if v_recoverable < v_shortfall then",
    "replace": "      if false then",
    "what": "a refund whose shortfall cannot be recovered is let through",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-recovery-admin",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find": "    if v_shortfall > 0 and not coalesce(p_is_admin, false) then",
    "replace": "    if false then",
    "what": "an organiser's refund after payout is not recovered from their transfers",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-refund-held",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find": "    update public.stripe_idempotency_keys k set locked_until = 'infinity'",
    "replace": "    update public.stripe_idempotency_keys k set locked_until = now()",
    "what": "the refund is not held back for its recovery",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-recovery-failed",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "private.settle_refund_recovery",
    "find": "  if v_failed then",
    "replace": "  if false then",
    "what": "a failed recovery leaves the refund waiting",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-share-reserved",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.settle_order",
    "find":
      "         coalesce(sum(r.amount_cents) filter (where r.status in ('pending', 'requires_action')), 0)",
    "replace": "         coalesce(sum(r.amount_cents) filter (where r.status in ('requires_action')), 0)",
    "what": "refunds in flight reserve nothing",
    "tests": [
      "tests/ledger.test.ts",
      "tests/money.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-share-cap",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.settle_order",
    "find": "  v_target := floor(least(v_refunded + v_reserved + v_disputed, v_order.total_cents)::numeric",
    "replace": "  v_target := floor((v_refunded + v_reserved + v_disputed)::numeric",
    "what": "the share is not capped at the order's total",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-share-floor",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.settle_order",
    "find": "  v_target := floor(least(v_refunded + v_reserved + v_disputed, v_order.total_cents)::numeric",
    "replace": "  v_target := ceil(least(v_refunded + v_reserved + v_disputed, v_order.total_cents)::numeric",
    "what": "the share rounds up",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-share-disputes",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.settle_order",
    "find":
      "  select coalesce(sum(d.withdrawn_cents - d.reinstated_cents), 0), coalesce(bool_or(d.status = 'lost'), false)",
    "replace": "  select 0, coalesce(bool_or(d.status = 'lost'), false)",
    "what": "disputes do not move the share",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-tickets-valid",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.settle_order",
    "find":
      "  set status = case when v_status in ('paid', 'partially_refunded') then 'valid' else 'void' end",
    "replace":
      "  set status = case when v_status in ('paid', 'partially_refunded', 'disputed') then 'valid' else 'void' end",
    "what": "tickets of a disputed order stay valid",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-refund-reopen",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "private.apply_refund_status",
    "find": "    if not coalesce(v_reopen, false) then",
    "replace": "    if false then",
    "what": "a refund that failed at Stripe comes back to life",
    "tests": [
      "tests/webhooks.test.ts",
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-refund-park",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.record_stripe_refund",
    "find":
      "    if not found or v_order.status in ('pending', 'expired') then\n      return jsonb_build_object('park', coalesce(p_refund ->> 'payment_intent', p_refund ->> 'charge'));",
    "replace":
      "    if not found then\n      return jsonb_build_object('park', coalesce(p_refund ->> 'payment_intent', p_refund ->> 'charge'));",
    "what": "a refund of a payment not recorded yet is applied to the pending order",
    "tests": [
      "tests/ledger.test.ts",
      "tests/webhooks.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-dispute-closed-sticky",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.record_stripe_dispute",
    "find":
      "      status = case when d.status in ('won', 'lost', 'warning_closed') then d.status else excluded.status end,",
    "replace": "      status = excluded.status,",
    "what": "a closed dispute reopens on a late event",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent":
      "the status column is informative: the share follows withdrawn and reinstated amounts, which only grow; a late open event cannot take back a reinstatement",
  },
  {
    "id": "sql-dispute-won",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.record_stripe_dispute",
    "find": "  if v_reinstated = 0 and (p_type = 'charge.dispute.funds_reinstated' or v_status = 'won') then",
    "replace": "  if false then",
    "what": "a won dispute without balance transactions is not credited back",
    "tests": [
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent":
      "the emulator's disputes always carry their balance transactions, as Stripe's do; the fallback covers events without them, which no test sends",
  },
  {
    "id": "sql-payment-amount",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "public.complete_order_payment",
    "find": "  if p_amount_total <> v_order.total_cents then",
    "replace": "  if false then",
    "what": "a payment of another amount completes the order",
    "tests": [
      "tests/guards.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-payment-session",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "public.complete_order_payment",
    "find":
      "  if v_order.stripe_session_id is not null and v_order.stripe_session_id <> p_stripe_session_id then",
    "replace": "  if false then",
    "what": "another session's payment completes the order",
    "tests": [
      "tests/guards.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-payment-once",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "public.complete_order_payment",
    "find":
      "  if v_order.status not in ('pending', 'expired') then\n    return jsonb_build_object('order_id', v_order.id, 'status', v_order.status, 'changed', false);",
    "replace":
      "  if v_order.status not in ('pending', 'expired', 'paid') then\n    return jsonb_build_object('order_id', v_order.id, 'status', v_order.status, 'changed', false);",
    "what": "a payment recorded twice issues tickets twice",
    "tests": [
      "tests/money.test.ts",
      "tests/webhooks.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-funds-pending",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "private.wallet_funds",
    "find": "    where t.wallet_id = p_wallet_id and t.type = 'sale' and o.funds_available_at > now()",
    "replace":
      "    where t.wallet_id = p_wallet_id and t.type = 'sale' and o.funds_available_at > 'infinity'",
    "what": "funds Stripe has not made available count as available",
    "tests": [
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-event-dedup",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "public.handle_stripe_event",
    "find": "    where w.status not in ('processed', 'parked', 'ignored')",
    "replace": "    where w.status not in ('ignored')",
    "what": "a processed event is processed again",
    "tests": [
      "tests/webhooks.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-event-park",
    "area": "money",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "public.handle_stripe_event",
    "find":
      "    if v_effect ? 'park' then\n      update public.stripe_webhook_events w\n      set status = 'parked'",
    "replace": "    if false then\n      update public.stripe_webhook_events w\n      set status = 'parked'",
    "what": "an event to park is recorded processed (lost)",
    "tests": [
      "tests/webhooks.test.ts",
      "tests/ledger.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-get-order-scope",
    "area": "authorization",
    "file": "supabase/migrations/20261128000700_ledger_from_stripe.sql",
    "fn": "public.get_order",
    "find":
      "  where o.id = p_order_id and auth.uid() is not null and (o.buyer_id = auth.uid() or e.organiser_id = auth.uid());",
    "replace": "  where o.id = p_order_id and auth.uid() is not null;",
    "what": "any user reads any order",
    "tests": [
      "tests/checkout.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-payout-balance",
    "area": "money",
    "file": "supabase/migrations/20261128000710_create_payout_lint.sql",
    "fn": "public.create_payout",
    "find": "    if p_amount_cents > v_wallet.entries_total_cents then",
    "replace": "    if false then",
    "what": "a payout beyond the balance",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "sql-payout-funds",
    "area": "money",
    "file": "supabase/migrations/20261128000710_create_payout_lint.sql",
    "fn": "public.create_payout",
    "find": "    if p_amount_cents > v_funds.available then",
    "replace": "    if false then",
    "what": "a payout of funds Stripe has not made available",
    "tests": [
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-payout-platform",
    "area": "money",
    "file": "supabase/migrations/20261128000710_create_payout_lint.sql",
    "fn": "public.create_payout",
    "find": "    if p_amount_cents > p_platform_available - v_in_flight then",
    "replace": "    if false then",
    "what": "a payout beyond the platform's balance at Stripe",
    "tests": [
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-payout-minimum",
    "area": "money",
    "file": "supabase/migrations/20261128000710_create_payout_lint.sql",
    "fn": "public.create_payout",
    "find": "    if p_amount_cents is null or p_amount_cents < v_minimum then",
    "replace": "    if p_amount_cents is null then",
    "what": "a payout under the minimum",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-payout-enabled",
    "area": "money",
    "file": "supabase/migrations/20261128000710_create_payout_lint.sql",
    "fn": "public.create_payout",
    "find": "    if not v_account.payouts_enabled then",
    "replace": "    if false then",
    "what": "a payout to an account whose payouts are not enabled",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-payout-failed-back",
    "area": "money",
    "file": "supabase/migrations/20261127000300_wallet.sql",
    "fn": "private.settle_payout",
    "find": "  if p_status = 'failed' then",
    "replace": "  if false then",
    "what": "a failed payout's debit is not given back",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-reversal-once",
    "area": "money",
    "file": "supabase/migrations/20261127000400_webhooks_reconcile.sql",
    "fn": "private.record_transfer_reversal",
    "find":
      "    set reversed_cents = v_reversed, status = case when v_reversed = p.amount_cents then 'reversed' else p.status end,",
    "replace": "    set status = case when v_reversed = p.amount_cents then 'reversed' else p.status end,",
    "what": "a reversal credited again on every delivery",
    "tests": [
      "tests/webhooks.test.ts",
      "tests/guards.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-expire-pending-only",
    "area": "checkout",
    "file": "supabase/migrations/20261127000200_ticketing.sql",
    "fn": "private.expire_order",
    "find": "  perform 1 from events.orders o where o.id = p_order_id and o.status = 'pending' for update;",
    "replace": "  perform 1 from events.orders o where o.id = p_order_id for update;",
    "what": "a paid order expires",
    "tests": [
      "tests/webhooks.test.ts",
      "tests/guards.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-fail-checkout-expires",
    "area": "checkout",
    "file": "supabase/migrations/20261127000200_ticketing.sql",
    "fn": "public.fail_checkout_session",
    "find":
      "  perform public.fail_stripe_operation('checkout:create', p_order_id::text, p_fencing_token, p_error);\n  perform private.expire_order(p_order_id);",
    "replace":
      "  perform public.fail_stripe_operation('checkout:create', p_order_id::text, p_fencing_token, p_error);",
    "what": "a checkout Stripe refused keeps its seats",
    "tests": [
      "tests/guards.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-terminal-5xx",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency.ts",
    "fn": undefined,
    "find": "  if (![400, 402, 403, 404].includes(status)) return null;",
    "replace": "  if (![400, 402, 403, 404, 500, 503].includes(status)) return null;",
    "what": "a 5xx treated as a terminal refusal",
    "tests": [
      "tests/idempotency_core.test.ts",
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "ts-terminal-idempotency-error",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency.ts",
    "fn": undefined,
    "find": "  if (error instanceof Stripe.errors.StripeIdempotencyError) return null;\n  const status",
    "replace": "  const status",
    "what": "Stripe's idempotency_error (a key reused with other parameters) taken as terminal",
    "tests": [
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-saved-5xx",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency.ts",
    "fn": undefined,
    "find":
      '  return headers.some(([name, value]) => name.toLowerCase() === "idempotent-replayed" && value === "true");',
    "replace": "  return headers.length < 0;",
    "what": "a replayed saved 5xx is retried for ever",
    "tests": [
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "ts-absent-proof",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency.ts",
    "fn": undefined,
    "find": '    if ("absent" in found && !absentIsProof) {',
    "replace": '    if ("absent" in found && false) {',
    "what": "absence taken as proof at once",
    "tests": [
      "tests/stripe_settlement.test.ts",
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-first-send-refused",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency.ts",
    "fn": undefined,
    "find": "  if (refusal !== null && claim.attempts === 1) {",
    "replace": "  if (refusal !== null && claim.attempts === 0) {",
    "what": "parameters Stripe would refuse on the first send are looked up instead of failed",
    "tests": [
      "tests/operations.test.ts",
    ],
    "subsets": [],
    "equivalent":
      "a builder whose first output the schema refuses is a bug that tests/operations.test.ts prevents (every builder's output parses); the guard turns such a bug into a clear 422 instead of a 15-minute deferral",
  },
  {
    "id": "ts-lookup-undecided",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency.ts",
    "fn": undefined,
    "find": '    if ("undecided" in found) {',
    "replace": '    if ("undecided" in found && false) {',
    "what": "an undecided look-up completes with nothing",
    "tests": [
      "tests/money.test.ts",
      "tests/webhooks.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-refusal-forgets",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency_http.ts",
    "fn": undefined,
    "find":
      '      await releaseQuietly(store, request.scope, key, claim.fencingToken, disposition === "refusal");',
    "replace": "      await releaseQuietly(store, request.scope, key, claim.fencingToken, false);",
    "what": "a refused request keeps its key bound (writes something)",
    "tests": [
      "tests/checkout.test.ts",
      "tests/fuzz.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-5xx-not-stored",
    "area": "idempotency",
    "file": "supabase/functions/_shared/idempotency_http.ts",
    "fn": undefined,
    "find": "  if (res.status >= 500) {",
    "replace": "  if (res.status >= 600) {",
    "what": "our 5xx answers stored and replayed",
    "tests": [
      "tests/idempotency_core.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "ts-lookup-refund-match",
    "area": "idempotency",
    "file": "supabase/functions/_shared/operations.ts",
    "fn": undefined,
    "find": "        (r) => r.metadata?.refund_id === operationId,",
    "replace": "        (r) => r.metadata?.refund_id !== undefined || true,",
    "what": "a refund look-up takes someone else's refund",
    "tests": [
      "tests/money.test.ts",
      "tests/stripe_settlement.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-lookup-payout-match",
    "area": "idempotency",
    "file": "supabase/functions/_shared/operations.ts",
    "fn": undefined,
    "find": "        (t) => t.metadata?.payout_id === operationId,",
    "replace": "        (t) => t.destination !== undefined,",
    "what": "a payout look-up takes another transfer",
    "tests": [
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-lookup-checkout-match",
    "area": "idempotency",
    "file": "supabase/functions/_shared/operations.ts",
    "fn": undefined,
    "find":
      "        (s) => s.metadata?.order_id === operationId && s.client_reference_id === params.client_reference_id,",
    "replace": "        (s) => s.client_reference_id !== undefined,",
    "what": "a checkout look-up takes another order's session",
    "tests": [
      "tests/webhooks.test.ts",
      "tests/money.test.ts",
    ],
    "subsets": [],
    "equivalent":
      "the only checkout look-up under test finds no session at all (the order expires); with a match-anything filter it would find others' sessions only if some were created since the operation, which that test's database holds: killed when the suite's other files run first, not by the file alone",
  },
  {
    "id": "ts-expires-window",
    "area": "idempotency",
    "file": "supabase/functions/_shared/stripe_contract.ts",
    "fn": undefined,
    "find":
      "    expires_at: z.int().min(now + CHECKOUT_EXPIRY.minSeconds).max(now + CHECKOUT_EXPIRY.maxSeconds),",
    "replace": "    expires_at: z.int(),",
    "what": "expires_at Stripe refuses is sent late",
    "tests": [
      "tests/operations.test.ts",
      "tests/webhooks.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-webhook-tolerance",
    "area": "security",
    "file": "supabase/functions/stripe-webhook/index.ts",
    "fn": undefined,
    "find": "const TOLERANCE_SECONDS = 300;",
    "replace": "const TOLERANCE_SECONDS = 86_400;",
    "what": "stale signatures accepted",
    "tests": [
      "tests/webhooks.test.ts",
    ],
    "subsets": [
      "ci",
    ],
    "equivalent": undefined,
  },
  {
    "id": "ts-webhook-version",
    "area": "security",
    "file": "supabase/functions/stripe-webhook/index.ts",
    "fn": undefined,
    "find": "  if (event.api_version && event.api_version !== STRIPE_API_VERSION) {",
    "replace": "  if (false) {",
    "what": "events of another API version processed",
    "tests": [
      "tests/webhooks.test.ts",
    ],
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-refund-monotone",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "private.apply_refund_status",
    "find": "  elsif private.refund_status_rank(p_status) < private.refund_status_rank(v_refund.status) then",
    "replace": "  elsif false then",
    "what": "an older refund event delivered late moves a finished refund back to pending",
    "tests": [
      "tests/ledger_outside.test.ts",
    ],
    "filter": "F1",
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-recovery-own-share",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find":
      "    v_shortfall := least(v_before - v_wallet.entries_total_cents, greatest(0, -(v_wallet.entries_total_cents",
    "replace":
      "    v_shortfall := least(v_before - v_wallet.entries_total_cents + 1000000, greatest(0, -(v_wallet.entries_total_cents",
    "what": "a refund after a payout recovers an older debt (a dispute's) with its own share",
    "tests": [
      "tests/ledger_outside.test.ts",
    ],
    "filter": "F3",
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-recovery-in-flight",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "public.create_refund",
    "find":
      "                  where p.organiser_id = v_organiser and p.currency = v_order.currency and v.status = 'pending'), 0))));",
    "replace":
      "                  where p.organiser_id = v_organiser and p.currency = v_order.currency and false), 0))));",
    "what": "reversals already on their way back are recovered a second time",
    "tests": [
      "tests/ledger_outside.test.ts",
    ],
    "filter": "F2",
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-recovery-abandon",
    "area": "money",
    "file": "supabase/migrations/20261128001000_ledger_fixes.sql",
    "fn": "private.settle_refund_recovery",
    "find":
      "    where v.refund_id = p_refund_id and v.status = 'pending' and k.operation_type = 'transfer_reversal:create'",
    "replace": "    where false and k.operation_type = 'transfer_reversal:create'",
    "what": "a refused refund's other reversals are still sent later",
    "tests": [
      "tests/ledger_outside.test.ts",
    ],
    "filter": "F7",
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "ts-audit-refund-status",
    "area": "money",
    "file": "supabase/functions/stripe-audit/index.ts",
    "fn": undefined,
    "find": "      differs(held.refunds).length === 0 && held.refunded_cents === succeeded",
    "replace": "      true && held.refunded_cents === succeeded",
    "what": "the audit compares refunded totals only, not each refund's status",
    "tests": [
      "tests/ledger_outside.test.ts",
    ],
    "filter": "F4",
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-rate-limit-bound",
    "area": "security",
    "file": "supabase/migrations/20261129000100_guest_rate_limit_unknown_address.sql",
    "fn": "private.take_rate_limit",
    "find": "  if v_hits > p_limit then",
    "replace": "  if v_hits > p_limit + 1 then",
    "what": "one guest checkout a minute more than the limit",
    "tests": [
      "tests/checkout.test.ts",
    ],
    "filter": "rate-limited",
    "subsets": [],
    "equivalent": undefined,
  },
  {
    "id": "sql-rate-limit-event",
    "area": "security",
    "file": "supabase/migrations/20261130000200_guest_limits.sql",
    "fn": "private.limit_guest_checkouts_per_event",
    "find": "  perform private.take_rate_limit('event:' || new.event_id::text,",
    "replace": "  perform private.take_rate_limit('ip:unknown',",
    "what": "guests without an address not limited per event",
    "tests": [
      "tests/checkout.test.ts",
    ],
    "filter": "per event",
    "subsets": [],
    "equivalent": undefined,
  },
];
