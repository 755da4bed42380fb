/**
 * Stripe's money as the platform sees it: balance transactions (with Stripe's fees) that make up the
 * balance per currency, `pending` until `available_on`; refunds (pending while the balance cannot cover
 * them), transfers to connected accounts and their reversals, disputes, and connected accounts' balances
 * with payouts to their banks.
 * @module
 */
import {
  type Currency,
  DISPUTE_REASONS,
  MAX_AMOUNT,
  REFUND_REASONS,
} from "../../../supabase/functions/_shared/stripe_contract.ts";
import type { Params } from "./form.ts";
import {
  type Answer,
  before,
  currency,
  embeddedList,
  event,
  int,
  invalid,
  metadata,
  missing,
  money,
  newId,
  noSuch,
  oneOf,
  refused,
  type State,
  str,
  type StripeObject,
} from "./resources.ts";

const DAY = 86_400;

/** Standard card pricing, 2.9% + 30¢ per successful domestic card charge (stripe.com/pricing). */
export const CARD_FEE = { percent: 2.9, fixed: 30 } as const;

/**
 * The dispute fee taken with the disputed amount, $15.00 (stripe.com/pricing, "Disputes"), in one balance
 * transaction (support.stripe.com/questions/dispute-fees-faq); a won dispute returns the disputed amount
 * (support.stripe.com/topics/disputes: "the disputed amount and the dispute countered fee is returned").
 */
export const DISPUTE_FEE = 1500;

/**
 * Refund failure reasons (`Refunds.d.ts`, `failure_reason`; typed as a plain string by the SDK).
 */
export const REFUND_FAILURE_REASONS = [
  "charge_for_pending_refund_disputed",
  "declined",
  "expired_or_canceled_card",
  "insufficient_funds",
  "lost_or_stolen_card",
  "merchant_request",
  "unknown",
] as const;

/**
 * Stripe's answer to a transfer above the available balance (`balance_insufficient`; the text Stripe sends in
 * test mode, docs.stripe.com/testing#available-balance).
 */
const INSUFFICIENT_FUNDS =
  "You have insufficient available funds in your Stripe account. Try adding funds directly to your available balance by creating Charges using the 4000000000000077 test card. See: https://stripe.com/docs/testing#available-balance";

/** Stripe's processing fee on a card charge of `amount` (minor units). */
export function processingFee(amount: number): number {
  return Math.round((amount * CARD_FEE.percent) / 100) + CARD_FEE.fixed;
}

/**
 * Records a balance transaction. Its net (`amount - fee`) counts as `pending` until `available_on`, then
 * as `available` (docs.stripe.com/payments/balances; `BalanceTransactions.d.ts`).
 */
function transaction(
  state: State,
  t: {
    amount: number;
    currency: string;
    type: string;
    reporting_category: string;
    source: string;
    description?: string;
    fee?: number;
    feeDescription?: string;
    available_on?: number;
  },
): StripeObject {
  const now = state.now();
  const fee = t.fee ?? 0;
  const availableOn = t.available_on ?? now;
  const txn: StripeObject = {
    id: newId("txn"),
    object: "balance_transaction",
    amount: t.amount,
    available_on: availableOn,
    balance_type: "payments",
    created: now,
    currency: t.currency,
    description: t.description ?? null,
    exchange_rate: null,
    fee,
    fee_details: fee
      ? [{
        amount: fee,
        application: null,
        currency: t.currency,
        description: t.feeDescription,
        type: "stripe_fee",
      }]
      : [],
    net: t.amount - fee,
    reporting_category: t.reporting_category,
    source: t.source,
    status: availableOn <= now ? "available" : "pending",
    type: t.type,
  };
  state.balanceTransactions.set(txn.id, txn);
  return txn;
}

/**
 * A card charge's funds: the amount less Stripe's fee, pending until the charge's `created` plus the
 * settlement delay (`fundsDelaySeconds`, default 2 days: docs.stripe.com/payments/balances, "Balances and
 * settlement time"; `settlement_timing.delay_days: 2` in docs.stripe.com/api/balance-settings/object).
 */
export function chargeSucceeded(state: State, charge: StripeObject): void {
  const amount = charge.amount as number;
  const txn = transaction(state, {
    amount,
    currency: charge.currency as string,
    type: "charge",
    reporting_category: "charge",
    source: charge.id,
    fee: processingFee(amount),
    feeDescription: "Stripe processing fees",
    available_on: (charge.created as number) + (state.options.fundsDelaySeconds ?? 2 * DAY),
  });
  charge.balance_transaction = txn.id;
}

/** The platform's balance in `cur`: the initial balance plus the net of its balance transactions. */
function totals(state: State, cur: string): { available: number; pending: number } {
  const out = { available: state.options.initialBalance?.[cur] ?? 0, pending: 0 };
  for (const t of state.balanceTransactions.values()) {
    if (t.currency === cur) out[t.status as "available" | "pending"] += t.net as number;
  }
  return out;
}

/** GET /v1/balance: `available` and `pending` per currency (docs.stripe.com/api/balance/balance_object). */
export function balance(state: State): Answer {
  const curs = new Set([
    ...Object.keys(state.options.initialBalance ?? {}),
    ...[...state.balanceTransactions.values()].map((t) => t.currency as string),
  ]);
  if (curs.size === 0) curs.add("usd");
  const rows = (kind: "available" | "pending") =>
    [...curs].map((c) => {
      const amount = totals(state, c)[kind];
      return { amount, currency: c, source_types: { card: amount } };
    });
  return { object: "balance", available: rows("available"), livemode: false, pending: rows("pending") };
}

/**
 * Moves funds whose `available_on` passed to `available`, and completes pending refunds, oldest first per
 * currency, as the available balance covers them (`refund.updated` with `previous_attributes`).
 */
export function settle(state: State): void {
  const now = state.now();
  for (const t of state.balanceTransactions.values()) {
    if (t.status === "pending" && (t.available_on as number) <= now) t.status = "available";
  }
  const blocked = new Set<string>();
  for (const r of state.refunds.values()) {
    const cur = r.currency as string;
    if (r.status !== "pending" || blocked.has(cur)) continue;
    if (totals(state, cur).available < (r.amount as number)) {
      blocked.add(cur);
      const reason = pendingReason(state, r);
      if (reason !== r.pending_reason) {
        const previous = before(r, ["pending_reason"]);
        r.pending_reason = reason;
        event(state, "refund.updated", r, previous);
      }
      continue;
    }
    const previous = before(r, ["status", "pending_reason", "balance_transaction"]);
    debitRefund(state, r);
    event(state, "refund.updated", r, previous);
  }
}

/** POST /v1/refunds (and a refund made in the dashboard: no metadata, no request). */
export function createRefund(state: State, p: Params): StripeObject {
  const piId = str(p, "payment_intent");
  const chargeId = str(p, "charge");
  if (!piId && !chargeId) throw missing("payment_intent");
  const amount = int(p, "amount", "amount", 1);
  const reason = oneOf(str(p, "reason"), REFUND_REASONS, "reason");
  const meta = metadata(p);
  let charge: StripeObject | undefined;
  if (piId) {
    const pi = state.paymentIntents.get(piId);
    if (!pi) throw noSuch("payment_intent", piId, "payment_intent");
    charge = pi.latest_charge ? state.charges.get(pi.latest_charge as string) : undefined;
  } else {
    charge = state.charges.get(chargeId!);
    if (!charge) throw noSuch("charge", chargeId!, "charge");
  }
  // A payment can be refunded "after it succeeds" (docs.stripe.com/refunds).
  if (!charge || charge.status !== "succeeded") {
    throw refused(
      "charge_not_refundable",
      `This ${
        piId ? `PaymentIntent (${piId})` : `charge (${chargeId})`
      } does not have a successful charge to refund.`,
    );
  }
  const dispute = [...state.disputes.values()].find((d) => d.charge === charge.id && d.status !== "won");
  if (dispute) {
    // docs.stripe.com/error-codes#charge-disputed
    throw refused(
      "charge_disputed",
      `Charge ${charge.id} has been charged back (${dispute.id}); cannot issue a refund.`,
    );
  }
  const remaining = (charge.amount as number) - (charge.amount_refunded as number);
  if (remaining === 0) {
    throw refused("charge_already_refunded", `Charge ${charge.id} has already been refunded.`);
  }
  const value = amount ?? remaining;
  if (value > remaining) {
    throw refused(
      "amount_too_large",
      `Refund amount (${value}) is greater than unrefunded amount on charge (${remaining})`,
      "amount",
    );
  }
  const cur = charge.currency as string;
  const refund: StripeObject = {
    id: newId("re"),
    object: "refund",
    amount: value,
    balance_transaction: null,
    charge: charge.id,
    created: state.now(),
    currency: cur,
    metadata: meta,
    payment_intent: charge.payment_intent,
    reason: reason ?? null,
    status: "pending",
  };
  // Refunds use the available balance; when it does not cover the refund, Stripe "holds the refund as
  // pending until you top up your account balance" (docs.stripe.com/refunds), with `pending_reason`
  // `insufficient_funds`, or `charge_pending` while the refunded payment's own funds have not settled
  // (docs.stripe.com/changelog/basil/2025-04-30/refund-pending-reason). Pending refunds go first.
  const queued = [...state.refunds.values()].some((r) => r.currency === cur && r.status === "pending");
  state.refunds.set(refund.id, refund);
  if (!queued && totals(state, cur).available >= value) debitRefund(state, refund);
  else refund.pending_reason = pendingReason(state, refund);
  charge.amount_refunded = (charge.amount_refunded as number) + value;
  charge.refunded = charge.amount_refunded === charge.amount;
  event(state, "charge.refunded", charge);
  event(state, "refund.created", refund);
  return refund;
}

/** Why a refund waits: its payment's own funds have not settled yet, or the balance is short. */
function pendingReason(state: State, refund: StripeObject): string {
  const charge = state.charges.get(refund.charge as string)!;
  const funds = state.balanceTransactions.get(charge.balance_transaction as string);
  return funds?.status === "pending" ? "charge_pending" : "insufficient_funds";
}

/**
 * A refund takes its amount from the available balance; Stripe's processing fee on the payment is not
 * returned (support.stripe.com/questions/understanding-fees-for-refunded-payments).
 */
function debitRefund(state: State, refund: StripeObject): void {
  const txn = transaction(state, {
    amount: -(refund.amount as number),
    currency: refund.currency as string,
    type: "refund",
    reporting_category: "refund",
    source: refund.id,
    description: "REFUND FOR CHARGE",
  });
  refund.balance_transaction = txn.id;
  refund.status = "succeeded";
  delete refund.pending_reason;
}

/**
 * A refund failing later (e.g. the card was closed): `failed` with `failure_reason`, its amount back on the
 * charge and, if it had left the balance, back in the balance (`failure_balance_transaction`). Events:
 * `refund.updated` (with `previous_attributes`) and `refund.failed` (docs.stripe.com/api/refunds: events;
 * docs.stripe.com/changelog/acacia/2024-10-28/refund-webhook-update). `charge.refund.updated` is only sent
 * "on selected payment methods", not cards.
 */
export function failRefund(state: State, id: string, reason = "expired_or_canceled_card"): StripeObject {
  const refund = getRefund(state, id);
  oneOf(reason, REFUND_FAILURE_REASONS, "failure_reason");
  if (refund.status !== "succeeded" && refund.status !== "pending") {
    throw refused(
      "refund_not_failable",
      `Refund ${id} is ${refund.status}; only a succeeded or pending refund can fail`,
    );
  }
  const previous = before(refund, [
    "status",
    "failure_reason",
    "failure_balance_transaction",
    ...(refund.pending_reason ? ["pending_reason"] : []),
  ]);
  if (refund.balance_transaction) {
    refund.failure_balance_transaction = transaction(state, {
      amount: refund.amount as number,
      currency: refund.currency as string,
      type: "refund_failure",
      reporting_category: "refund_failure",
      source: refund.id,
      description: "REFUND FAILURE",
    }).id;
  }
  Object.assign(refund, { status: "failed", failure_reason: reason });
  delete refund.pending_reason;
  const charge = state.charges.get(refund.charge as string)!;
  charge.amount_refunded = (charge.amount_refunded as number) - (refund.amount as number);
  charge.refunded = charge.amount_refunded === charge.amount;
  event(state, "refund.updated", refund, previous);
  event(state, "refund.failed", refund);
  return refund;
}

/** GET /v1/refunds/:id */
export function getRefund(state: State, id: string): StripeObject {
  const r = state.refunds.get(id);
  if (!r) throw noSuch("refund", id);
  return r;
}

/**
 * POST /v1/transfers, from the platform to a connected account (docs.stripe.com/connect/separate-charges-and-
 * transfers). Refused with `balance_insufficient` above the available balance in that currency, unless
 * `source_transaction` names a charge: then at most what of that charge is not transferred yet, and "a
 * pending balance will transfer immediately but the funds will not become available until the original charge
 * becomes available" (`Transfers.d.ts`, `source_transaction`).
 */
export function createTransfer(state: State, p: Params): StripeObject {
  const cur = currency(p, "currency");
  if (!cur) throw missing("currency");
  const amount = int(p, "amount", "amount", 1);
  if (amount === undefined) throw missing("amount");
  if (amount > MAX_AMOUNT) {
    throw invalid(
      `Amount must be no more than ${money(MAX_AMOUNT, cur)} (got ${amount})`,
      "amount",
      "amount_too_large",
    );
  }
  const destination = str(p, "destination");
  if (!destination) throw missing("destination");
  if (!/^acct_[A-Za-z0-9_]+$/.test(destination)) throw noSuch("destination", destination, "destination");
  const meta = metadata(p);
  const sourceId = str(p, "source_transaction") ?? null;
  const now = state.now();
  let availableOn = now;
  if (sourceId) {
    const charge = state.charges.get(sourceId);
    if (!charge) throw noSuch("charge", sourceId, "source_transaction");
    if (charge.status !== "succeeded") {
      throw refused(
        "charge_not_succeeded",
        `Source transaction ${sourceId} is ${charge.status}, not succeeded`,
      );
    }
    if (charge.currency !== cur) {
      throw invalid(
        `Currency ${cur} does not match the source transaction's currency ${charge.currency}`,
        "currency",
      );
    }
    const transferred = [...state.transfers.values()].filter((t) => t.source_transaction === sourceId)
      .reduce((n, t) => n + (t.amount as number), 0);
    const left = (charge.amount as number) - transferred;
    if (amount > left) {
      throw refused(
        "amount_too_large",
        `Transfer amount (${amount}) is greater than what is left to transfer from ${sourceId} (${left})`,
        "amount",
      );
    }
    const funds = state.balanceTransactions.get(charge.balance_transaction as string)!;
    availableOn = Math.max(now, funds.available_on as number);
  } else if (totals(state, cur).available < amount) {
    throw refused("balance_insufficient", INSUFFICIENT_FUNDS);
  }
  const id = newId("tr");
  const txn = transaction(state, {
    amount: -amount,
    currency: cur,
    type: "transfer",
    reporting_category: "transfer",
    source: id,
    available_on: availableOn,
  });
  state.accountEntries.push({ account: destination, currency: cur, amount, available_on: availableOn });
  const transfer: StripeObject = {
    id,
    object: "transfer",
    amount,
    amount_reversed: 0,
    balance_transaction: txn.id,
    created: now,
    currency: cur,
    description: str(p, "description") ?? null,
    destination,
    destination_payment: newId("py"),
    livemode: false,
    metadata: meta,
    reversals: embeddedList(`/v1/transfers/${id}/reversals`, []),
    reversed: false,
    source_transaction: sourceId,
    source_type: "card",
    transfer_group: str(p, "transfer_group") ?? null,
  };
  state.transfers.set(id, transfer);
  event(state, "transfer.created", transfer);
  return transfer;
}

/** GET /v1/transfers/:id */
export function getTransfer(state: State, id: string): StripeObject {
  const t = state.transfers.get(id);
  if (!t) throw noSuch("transfer", id);
  return t;
}

/**
 * POST /v1/transfers/:id: `description` and `metadata` (docs.stripe.com/api/transfers/update; metadata keys
 * are merged, an empty value unsets a key, an empty `metadata` unsets all); `transfer.updated` "occurs
 * whenever a transfer's description or metadata is updated" (`Events.d.ts`).
 */
export function updateTransfer(state: State, id: string, p: Params): StripeObject {
  const transfer = getTransfer(state, id);
  const previous = before(transfer, ["description", "metadata"]);
  const description = str(p, "description");
  if (description !== undefined) transfer.description = description || null;
  if (p.metadata === "") transfer.metadata = {};
  else if (p.metadata !== undefined) {
    const next = { ...transfer.metadata as Record<string, string> };
    for (const [k, v] of Object.entries(metadata(p))) v === "" ? delete next[k] : next[k] = v;
    transfer.metadata = next;
  }
  const changed = Object.fromEntries(
    Object.entries(previous).filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(transfer[k] ?? null)),
  );
  if (Object.keys(changed).length > 0) event(state, "transfer.updated", transfer, changed);
  return transfer;
}

/**
 * POST /v1/transfers/:id/reversals: "Transfer reversals add to the platform's balance and subtract from the
 * destination account's balance ... It is possible to reverse a transfer_group transfer only if the
 * destination account has enough balance to cover the reversal" (docs.stripe.com/api/transfer_reversals).
 * Emits `transfer.reversed` (`Events.d.ts`: "whenever a transfer is reversed, including partial reversals").
 */
export function reverseTransfer(state: State, id: string, p: Params): StripeObject {
  const transfer = getTransfer(state, id);
  const left = (transfer.amount as number) - (transfer.amount_reversed as number);
  const amount = int(p, "amount", "amount", 1) ?? left;
  const meta = metadata(p);
  if (amount > left) {
    throw refused(
      "amount_too_large",
      `Reversal amount (${amount}) is greater than the transfer's unreversed amount (${left})`,
      "amount",
    );
  }
  const account = transfer.destination as string;
  const cur = transfer.currency as Currency;
  const held = accountTotals(state, account, cur);
  if (held.available + held.pending < amount) {
    throw refused(
      "balance_insufficient",
      `The destination account ${account} has ${
        money(held.available + held.pending, cur)
      } and cannot cover a reversal of ${money(amount, cur)}`,
    );
  }
  const reversalId = newId("trr");
  const txn = transaction(state, {
    amount,
    currency: cur,
    type: "transfer_refund",
    reporting_category: "transfer_reversal",
    source: reversalId,
  });
  state.accountEntries.push({ account, currency: cur, amount: -amount, available_on: state.now() });
  const reversal: StripeObject = {
    id: reversalId,
    object: "transfer_reversal",
    amount,
    balance_transaction: txn.id,
    created: state.now(),
    currency: cur,
    destination_payment_refund: newId("pyr"),
    metadata: meta,
    source_refund: null,
    transfer: transfer.id,
  };
  state.reversals.set(reversalId, reversal);
  transfer.amount_reversed = (transfer.amount_reversed as number) + amount;
  transfer.reversed = transfer.amount_reversed === transfer.amount;
  transfer.reversals = embeddedList(
    `/v1/transfers/${transfer.id}/reversals`,
    [...state.reversals.values()].filter((r) => r.transfer === transfer.id).reverse(),
  );
  event(state, "transfer.reversed", transfer);
  return reversal;
}

/** A connected account's balance in `cur`: transfers in, reversals and payouts out. */
function accountTotals(state: State, account: string, cur: string): { available: number; pending: number } {
  const out = { available: 0, pending: 0 };
  for (const e of state.accountEntries) {
    if (e.account === account && e.currency === cur) {
      out[e.available_on <= state.now() ? "available" : "pending"] += e.amount;
    }
  }
  return out;
}

/** A connected account's balance per currency (`available`, `pending`), with the account's id. */
export function accountBalance(state: State, account: string): Answer {
  const curs = [...new Set(state.accountEntries.filter((e) => e.account === account).map((e) => e.currency))];
  const rows = (kind: "available" | "pending") =>
    curs.map((c) => ({ amount: accountTotals(state, account, c)[kind], currency: c }));
  return { object: "balance", account, available: rows("available"), pending: rows("pending") };
}

/**
 * Pays a connected account's available balance out to its bank, so that it is gone (docs.stripe.com/connect/
 * manual-payouts: "you can move an amount up to the user's available balance"). Payout events go to the
 * platform's Connect endpoints, which the emulator does not model, so none are sent.
 */
export function payOut(state: State, account: string): Record<string, number> {
  const paid: Record<string, number> = {};
  for (const c of new Set(state.accountEntries.filter((e) => e.account === account).map((e) => e.currency))) {
    const { available } = accountTotals(state, account, c);
    if (available <= 0) continue;
    state.accountEntries.push({ account, currency: c, amount: -available, available_on: state.now() });
    paid[c] = available;
  }
  return paid;
}

/**
 * A cardholder disputes a charge: the dispute (`needs_response`), the charge `disputed`, and the balance
 * debited the disputed amount plus the dispute fee in one balance transaction (support.stripe.com/questions/
 * dispute-fees-faq; type `adjustment`, reporting category `dispute`: docs.stripe.com/reports/reporting-
 * categories). Events: `charge.dispute.created`, `charge.dispute.funds_withdrawn` (`Events.d.ts`).
 */
export function openDispute(
  state: State,
  chargeId: string,
  options: { amount?: number; reason?: string } = {},
): StripeObject {
  const charge = state.charges.get(chargeId);
  if (!charge) throw noSuch("charge", chargeId, "charge");
  if (charge.status !== "succeeded") {
    throw invalid(`Charge ${chargeId} is ${charge.status}; only a paid charge can be disputed`, "charge");
  }
  if (charge.disputed) throw invalid(`Charge ${chargeId} is already disputed`, "charge");
  const amount = options.amount ?? (charge.amount as number);
  if (!Number.isSafeInteger(amount) || amount < 1 || amount > (charge.amount as number)) {
    throw invalid(`Invalid amount: ${amount}; a dispute is for 1 to ${charge.amount}`, "amount");
  }
  const reason = oneOf(options.reason, DISPUTE_REASONS, "reason") ?? "general";
  const now = state.now();
  const dispute: StripeObject = {
    id: newId("dp"),
    object: "dispute",
    amount,
    balance_transactions: [],
    charge: charge.id,
    created: now,
    currency: charge.currency,
    evidence: {},
    evidence_details: { due_by: now + 7 * DAY, has_evidence: false, past_due: false, submission_count: 0 },
    is_charge_refundable: false,
    livemode: false,
    metadata: {},
    payment_intent: charge.payment_intent,
    reason,
    status: "needs_response",
  };
  state.disputes.set(dispute.id, dispute);
  charge.disputed = true;
  event(state, "charge.dispute.created", dispute);
  disputeFunds(state, dispute, -amount, DISPUTE_FEE, "dispute", `Chargeback withdrawal for ${charge.id}`);
  event(state, "charge.dispute.funds_withdrawn", dispute);
  return dispute;
}

/**
 * A dispute's outcome: `won` reinstates the disputed amount (`charge.dispute.funds_reinstated`, reporting
 * category `dispute_reversal`), then `charge.dispute.closed`; `lost` only closes it (`Events.d.ts`).
 */
export function closeDispute(state: State, id: string, outcome: "won" | "lost"): StripeObject {
  const dispute = getDispute(state, id);
  oneOf(outcome, ["won", "lost"] as const, "outcome");
  if (dispute.status === "won" || dispute.status === "lost") {
    throw invalid(`Dispute ${id} is already closed (${dispute.status})`, "outcome");
  }
  dispute.status = outcome;
  if (outcome === "won") {
    disputeFunds(
      state,
      dispute,
      dispute.amount as number,
      0,
      "dispute_reversal",
      `Chargeback reversal for ${dispute.charge}`,
    );
    event(state, "charge.dispute.funds_reinstated", dispute);
  }
  event(state, "charge.dispute.closed", dispute);
  return dispute;
}

function disputeFunds(
  state: State,
  dispute: StripeObject,
  amount: number,
  fee: number,
  category: string,
  description: string,
): void {
  const txn = transaction(state, {
    amount,
    currency: dispute.currency as string,
    type: "adjustment",
    reporting_category: category,
    source: dispute.id,
    description,
    fee,
    feeDescription: "Dispute fee",
  });
  (dispute.balance_transactions as StripeObject[]).push(structuredClone(txn));
}

/** GET /v1/disputes/:id */
export function getDispute(state: State, id: string): StripeObject {
  const d = state.disputes.get(id);
  if (!d) throw noSuch("dispute", id);
  return d;
}
