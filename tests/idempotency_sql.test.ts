// The idempotency state machine in SQL, under real concurrency: many connections claiming at once,
// leases, fencing, the inbound key table, the purge, the old plan's functions, and who may call what.
import assert from "node:assert/strict";
import postgres from "npm:postgres@3.4.9";
import { sharedStack, stackTest } from "./_helpers.ts";

type Row = Record<string, unknown> & { outcome: string };

/** A pool of `max` connections to the shared stack's database, as the postgres superuser. */
async function pool(max: number) {
  const stack = await sharedStack();
  return postgres(stack.databaseUrl!, { max, onnotice: () => {} });
}

const uid = () => crypto.randomUUID();

async function claim(sql: postgres.Sql, type: string, id: string, params: unknown, lease = 60): Promise<Row> {
  const [r] = await sql`select public.claim_stripe_operation(${type}, ${id}, ${`${type}:${id}:${uid()}`},
    ${sql.json(params as postgres.JSONValue)}, null, '{}', ${lease}) as r`;
  return r.r as Row;
}

stackTest(
  "50 concurrent claims of one operation: one acquired, the rest in_progress, then replay",
  async () => {
    const sql = await pool(50);
    try {
      const id = uid();
      const params = { amount: 1000, currency: "usd" };
      const results = await Promise.all(
        Array.from({ length: 50 }, () => claim(sql, "refund:create", id, params)),
      );
      const acquired = results.filter((r) => r.outcome === "acquired");
      assert.equal(acquired.length, 1);
      assert.equal(results.filter((r) => r.outcome === "in_progress").length, 49);
      assert.equal(
        new Set(results.map((r) => r.stripe_idempotency_key)).size,
        1,
        "every claimant sees the one stored key",
      );

      await sql`select public.complete_stripe_operation('refund:create', ${id}, ${acquired[0]
        .fencing_token as number},
      're_123', '{"id": "re_123", "status": "succeeded"}')`;
      const after = await Promise.all(
        Array.from({ length: 50 }, () => claim(sql, "refund:create", id, params)),
      );
      assert.ok(after.every((r) => r.outcome === "replay" && r.stripe_resource_id === "re_123"));
      assert.deepEqual(after[0].response, { id: "re_123", status: "succeeded" });
      const [{ n }] =
        await sql`select count(*)::int as n from public.stripe_idempotency_keys where operation_id = ${id}`;
      assert.equal(n, 1);
    } finally {
      await sql.end();
    }
  },
);

stackTest("parameter order does not change the fingerprint; other parameters are a mismatch", async () => {
  const sql = await pool(2);
  try {
    const id = uid();
    const first = await claim(sql, "payout:create", id, {
      amount: 500,
      currency: "usd",
      metadata: { a: "1", b: "2" },
    });
    assert.equal(first.outcome, "acquired");
    const reordered = await claim(sql, "payout:create", id, {
      metadata: { b: "2", a: "1" },
      currency: "usd",
      amount: 500,
    });
    assert.equal(reordered.outcome, "in_progress");
    const other = await claim(sql, "payout:create", id, {
      amount: 501,
      currency: "usd",
      metadata: { a: "1", b: "2" },
    });
    assert.equal(other.outcome, "mismatch");
  } finally {
    await sql.end();
  }
});

stackTest("an expired lease is taken over with the same key; the stale holder cannot finish", async () => {
  const sql = await pool(2);
  try {
    const id = uid();
    const first = await claim(sql, "checkout:create", id, { a: 1 }, 1);
    await new Promise((r) => setTimeout(r, 1100));
    const second = await claim(sql, "checkout:create", id, { a: 1 }, 60);
    assert.equal(second.outcome, "acquired");
    assert.equal(second.stripe_idempotency_key, first.stripe_idempotency_key);
    assert.equal(second.fencing_token, (first.fencing_token as number) + 1);
    assert.equal(second.attempts, 2);

    for (
      const call of [
        sql`select public.complete_stripe_operation('checkout:create', ${id}, ${first
          .fencing_token as number}, 'cs_stale')`,
        sql`select public.fail_stripe_operation('checkout:create', ${id}, ${first
          .fencing_token as number}, '{"message": "x"}')`,
        sql`select public.release_stripe_operation('checkout:create', ${id}, ${first
          .fencing_token as number}, 'x')`,
      ]
    ) {
      await assert.rejects(
        call,
        (e: postgres.PostgresError) =>
          e.code === "PT409" && /fencing token 1 is stale \(the current one is 2\)/.test(e.message),
      );
    }
    const [row] = await sql`select status, stripe_resource_id, locked_until > now() as held
      from public.stripe_idempotency_keys where operation_id = ${id}`;
    assert.deepEqual({ ...row }, { status: "in_progress", stripe_resource_id: null, held: true });

    await sql`select public.complete_stripe_operation('checkout:create', ${id}, ${second
      .fencing_token as number}, 'cs_ok')`;
    // the same holder repeating its completion is harmless; a different resource is not
    await sql`select public.complete_stripe_operation('checkout:create', ${id}, ${second
      .fencing_token as number}, 'cs_ok')`;
    await assert.rejects(
      sql`select public.complete_stripe_operation('checkout:create', ${id}, ${second
        .fencing_token as number}, 'cs_other')`,
      (e: postgres.PostgresError) => e.code === "PT409" && /already completed/.test(e.message),
    );
  } finally {
    await sql.end();
  }
});

stackTest("concurrent takeovers of an expired lease: exactly one acquires", async () => {
  const sql = await pool(20);
  try {
    const id = uid();
    await claim(sql, "refund:create", id, { a: 1 }, 1);
    await new Promise((r) => setTimeout(r, 1100));
    const results = await Promise.all(
      Array.from({ length: 20 }, () => claim(sql, "refund:create", id, { a: 1 })),
    );
    assert.equal(results.filter((r) => r.outcome === "acquired").length, 1);
    assert.equal(results.filter((r) => r.outcome === "in_progress").length, 19);
  } finally {
    await sql.end();
  }
});

stackTest("release keeps the key and makes the operation claimable at once; fail is replayed", async () => {
  const sql = await pool(2);
  try {
    const id = uid();
    const first = await claim(sql, "refund:create", id, { a: 1 });
    await sql`select public.release_stripe_operation('refund:create', ${id}, ${first
      .fencing_token as number}, 'timeout')`;
    const second = await claim(sql, "refund:create", id, { a: 1 });
    assert.equal(second.outcome, "acquired");
    assert.equal(second.stripe_idempotency_key, first.stripe_idempotency_key);
    const error = {
      status: 400,
      type: "invalid_request_error",
      code: "amount_too_large",
      message: "too much",
    };
    await sql`select public.fail_stripe_operation('refund:create', ${id}, ${second
      .fencing_token as number}, ${sql.json(error)})`;
    const replay = await claim(sql, "refund:create", id, { a: 1 });
    assert.equal(replay.outcome, "replay");
    assert.equal(replay.status, "failed");
    assert.deepEqual(replay.error, error);
  } finally {
    await sql.end();
  }
});

stackTest(
  "inbound keys: 30 concurrent claims, one acquired; replay, mismatch and scope isolation",
  async () => {
    const sql = await pool(30);
    try {
      const key = uid();
      const claimKey = (scope: string, fingerprint: string) =>
        sql`select public.claim_idempotency_key(${scope}, ${key}, 'test', ${fingerprint}) as r`.then(([r]) =>
          r.r as Row
        );
      const results = await Promise.all(Array.from({ length: 30 }, () => claimKey("user:a", "fp1")));
      const winner = results.filter((r) => r.outcome === "acquired");
      assert.equal(winner.length, 1);
      assert.equal(results.filter((r) => r.outcome === "in_progress").length, 29);
      await sql`select public.complete_idempotency_key('user:a', ${key}, ${winner[0]
        .fencing_token as number}, 201,
      '{"content-type": "application/json"}', ${'{"ok":true}'})`;
      const replay = await claimKey("user:a", "fp1");
      assert.deepEqual([replay.outcome, replay.response_status, replay.response_body], [
        "replay",
        201,
        '{"ok":true}',
      ]);
      assert.equal((await claimKey("user:a", "fp2")).outcome, "mismatch");
      assert.equal(
        (await claimKey("user:b", "fp2")).outcome,
        "acquired",
        "another caller's same key is its own",
      );
    } finally {
      await sql.end();
    }
  },
);

stackTest(
  "purge deletes expired finished rows in bounded batches and never an operation in progress",
  async () => {
    const sql = await pool(2);
    try {
      const tag = uid();
      await sql`insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, status,
        stripe_resource_id, completed_at, expires_at, metadata)
      select 'purge:test', ${tag}::text || ':' || i, 'purge:test:' || ${tag}::text || ':' || i, 'completed', 'x_' || i, now(),
        now() - interval '1 day', jsonb_build_object('tag', ${tag}::text)
      from generate_series(1, 25) as i`;
      await sql`insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, status,
        locked_until, expires_at, metadata)
      values ('purge:test', ${tag}::text || ':running', 'purge:test:' || ${tag}::text || ':running', 'in_progress',
        now() - interval '1 hour', now() - interval '1 day', jsonb_build_object('tag', ${tag}::text))`;
      let deleted = 0;
      for (let batch = 0; batch < 100; batch++) {
        const [{ r }] = await sql`select public.purge_expired_idempotency(10) as r`;
        assert.ok(r.stripe_operations <= 10);
        deleted += r.stripe_operations;
        if (r.stripe_operations < 10) break;
      }
      assert.ok(deleted >= 25);
      const left =
        await sql`select status from public.stripe_idempotency_keys where metadata ->> 'tag' = ${tag}`;
      assert.deepEqual(left.map((r) => r.status), ["in_progress"]);
    } finally {
      await sql.end();
    }
  },
);

stackTest(
  "check_ and record_stripe_idempotency keep their names and arguments on the state machine",
  async () => {
    const sql = await pool(2);
    try {
      const id = uid();
      const check = async () =>
        (await sql`select public.check_stripe_idempotency('checkout:create', ${id}) as r`)[0].r;
      assert.equal((await check()).is_completed, false);
      const [{ r: rowId }] = await sql`select public.record_stripe_idempotency('checkout:create', ${id},
      ${`checkout:create:${id}:${uid()}`}, 'cs_1', null, '{"source": "legacy"}') as r`;
      assert.match(rowId, /^[0-9a-f-]{36}$/);
      assert.deepEqual(
        [(await check()).is_completed, (await check()).stripe_resource_id, (await check()).status],
        [true, "cs_1", "completed"],
      );
      // recording the same resource again is harmless; a different one raises instead of returning NULL
      await sql`select public.record_stripe_idempotency('checkout:create', ${id}, 'another-key', 'cs_1')`;
      await assert.rejects(
        sql`select public.record_stripe_idempotency('checkout:create', ${id}, 'another-key-2', 'cs_2')`,
        (e: postgres.PostgresError) => e.code === "PT409" && /completed with cs_1/.test(e.message),
      );
      // and the old seven-argument form still binds
      await sql`select public.record_stripe_idempotency('checkout:create', ${uid()}, ${uid()}, null, null, null,
      now() + interval '1 day')`;
    } finally {
      await sql.end();
    }
  },
);

stackTest("the idempotency RPCs refuse anon and authenticated through the gateway", async () => {
  const stack = await sharedStack();
  const user = await stack.userToken("22222222-2222-4222-8222-222222222222");
  const calls: [string, Record<string, unknown>][] = [
    ["claim_stripe_operation", {
      p_operation_type: "x:y",
      p_operation_id: "1",
      p_stripe_idempotency_key: "k",
      p_params: {},
    }],
    ["complete_stripe_operation", {
      p_operation_type: "x:y",
      p_operation_id: "1",
      p_fencing_token: 1,
      p_stripe_resource_id: "r",
    }],
    ["fail_stripe_operation", {
      p_operation_type: "x:y",
      p_operation_id: "1",
      p_fencing_token: 1,
      p_error: {},
    }],
    ["release_stripe_operation", { p_operation_type: "x:y", p_operation_id: "1", p_fencing_token: 1 }],
    ["claim_idempotency_key", { p_scope: "s", p_key: "k", p_endpoint: "e", p_fingerprint: "f" }],
    ["release_idempotency_key", { p_scope: "s", p_key: "k", p_fencing_token: 1 }],
    ["purge_expired_idempotency", {}],
    ["check_stripe_idempotency", { p_operation_type: "x:y", p_operation_id: "1" }],
    ["record_stripe_idempotency", {
      p_operation_type: "x:y",
      p_operation_id: "1",
      p_stripe_idempotency_key: "k",
    }],
  ];
  for (const [fn, args] of calls) {
    for (const [token, status] of [[stack.anonKey, 401], [user, 403]] as const) {
      const res = await fetch(`${stack.url}/rest/v1/rpc/${fn}`, {
        method: "POST",
        headers: {
          apikey: stack.anonKey,
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
        },
        body: JSON.stringify(args),
      });
      const body = await res.json();
      assert.equal(res.status, status, `${fn}: ${JSON.stringify(body)}`);
      assert.equal(body.code, "42501");
    }
  }
});

stackTest(
  "a claim past Stripe's key window is acquired to look the object up, never to re-send it",
  async () => {
    const sql = await pool(2);
    try {
      const id = uid();
      const key = `refund:create:${id}:old`;
      await sql`insert into public.stripe_idempotency_keys (operation_type, operation_id, stripe_idempotency_key, status,
        request_params, request_fingerprint, locked_until, created_at, fencing_token)
      values ('refund:create', ${id}, ${key}, 'in_progress', '{"a": 1}',
        encode(sha256(convert_to('{"a": 1}', 'UTF8')), 'hex'), now() - interval '1 minute', now() - interval '23 hours 30 minutes', 1)`;
      const first = await claim(sql, "refund:create", id, { a: 1 });
      assert.deepEqual(
        [first.outcome, first.mode, first.stripe_idempotency_key, first.fencing_token],
        ["acquired", "lookup", key, 2],
      );
      const second = await claim(sql, "refund:create", id, { a: 1 });
      assert.equal(second.outcome, "in_progress", "the look-up holds a lease like any holder");
      // a young operation is sent, an operation a look-up could not decide is looked up again
      const young = uid();
      assert.equal((await claim(sql, "refund:create", young, { a: 1 }, 1)).mode, "send");
    } finally {
      await sql.end();
    }
  },
);

stackTest(
  "a look-up that cannot decide parks the operation; a stale holder cannot finish it; the next look-up can",
  async () => {
    const sql = await pool(2);
    try {
      const id = uid();
      const first = await claim(sql, "payout:create", id, { a: 1 }, 1);
      await sql`update public.stripe_idempotency_keys set created_at = now() - interval '24 hours',
      locked_until = now() - interval '1 second' where operation_id = ${id}`;
      const lookup = await claim(sql, "payout:create", id, { a: 1 });
      assert.deepEqual([lookup.outcome, lookup.mode], ["acquired", "lookup"]);
      const [parked] = await sql`select public.attention_stripe_operation('payout:create', ${id},
      ${lookup.fencing_token as number}, '{"reason": "several objects", "ids": ["tr_1", "tr_2"]}') as r`;
      assert.equal((parked.r as Row).status, "needs_attention");
      assert.equal(
        (await claim(sql, "payout:create", id, { a: 1 })).status,
        "needs_attention",
        "clients get 409",
      );
      await assert.rejects(
        sql`select public.complete_stripe_operation('payout:create', ${id}, ${first
          .fencing_token as number}, 'tr_late')`,
        (e: { code: string }) => e.code === "PT409",
        "the first holder's token is stale",
      );
      // the reconciler looks again after 15 minutes, with a new token, and settles it
      await sql`update public.stripe_idempotency_keys set updated_at = now() - interval '16 minutes'
      where operation_id = ${id}`;
      const [{ r: stale }] = await sql`select public.claim_stale_stripe_operations(500, 60) as r`;
      const again = (stale as { claimed: Row[] }).claimed.find((c) => c.operation_id === id)!;
      assert.deepEqual([again.mode, again.status], ["lookup", "in_progress"]);
      await sql`select public.complete_stripe_operation('payout:create', ${id}, ${again
        .fencing_token as number}, 'tr_1')`;
      const [row] = await sql`select status, stripe_resource_id, evidence from public.stripe_idempotency_keys
      where operation_id = ${id}`;
      assert.deepEqual([row.status, row.stripe_resource_id], ["completed", "tr_1"]);
      assert.deepEqual(row.evidence, { reason: "several objects", ids: ["tr_1", "tr_2"] });
    } finally {
      await sql.end();
    }
  },
);

stackTest(
  "the reconciler takes over expired leases only: never a live one, nor a parked operation within 15 minutes",
  async () => {
    const sql = await pool(2);
    try {
      const [live, parked, expired]: string[] = [uid(), uid(), uid()];
      const holder = await claim(sql, "refund:create", live, { a: 1 }, 600);
      const lookup = await claim(sql, "payout:create", parked, { a: 1 });
      await sql`select public.attention_stripe_operation('payout:create', ${parked}, ${lookup
        .fencing_token as number}, '{"reason": "two candidates"}')`;
      await claim(sql, "refund:create", expired, { a: 1 });
      await sql`update public.stripe_idempotency_keys set locked_until = now() - interval '1 second'
        where operation_id = ${expired}`;
      const stale = async () => {
        const [{ r }] = await sql`select public.claim_stale_stripe_operations(500, 60) as r`;
        return (r as { claimed: Row[] }).claimed.filter((c) =>
          [live, parked, expired].includes(c.operation_id as string)
        );
      };
      const state = async (id: string) => {
        const [row] = await sql`select status, fencing_token::int as token, locked_until > now() as held
          from public.stripe_idempotency_keys where operation_id = ${id}`;
        return { ...row };
      };

      assert.deepEqual((await stale()).map((c) => [c.operation_id, c.fencing_token]), [[expired, 2]]);
      assert.deepEqual(
        await state(live),
        { status: "in_progress", token: 1, held: true },
        "the holder keeps its lease",
      );
      assert.deepEqual(await state(parked), { status: "needs_attention", token: 1, held: null });
      assert.deepEqual(await stale(), [], "what was just taken over is live now");
      await sql`select public.complete_stripe_operation('refund:create', ${live}, ${holder
        .fencing_token as number}, 're_live')`;

      // a parked operation is looked at again 15 minutes after it was parked, not before
      await sql`update public.stripe_idempotency_keys set updated_at = now() - interval '14 minutes'
        where operation_id = ${parked}`;
      assert.deepEqual(await stale(), []);
      await sql`update public.stripe_idempotency_keys set updated_at = now() - interval '16 minutes'
        where operation_id = ${parked}`;
      assert.deepEqual((await stale()).map((c) => [c.operation_id, c.mode, c.fencing_token]), [[
        parked,
        "lookup",
        2,
      ]]);
    } finally {
      await sql.end();
    }
  },
);

stackTest(
  "a stale holder can neither park nor defer an operation taken over; the new holder's lease stands",
  async () => {
    const sql = await pool(2);
    try {
      const id = uid();
      const first = await claim(sql, "payout:create", id, { a: 1 });
      // its look-up outlived the lease, and another holder took the operation over
      await sql`update public.stripe_idempotency_keys set locked_until = now() - interval '1 second'
        where operation_id = ${id}`;
      const second = await claim(sql, "payout:create", id, { a: 1 });
      assert.deepEqual([second.outcome, second.fencing_token], ["acquired", 2]);

      const stale = first.fencing_token as number;
      for (
        const [action, call] of [
          [
            "park",
            sql`select public.attention_stripe_operation('payout:create', ${id}, ${stale},
            '{"reason": "two candidates"}')`,
          ],
          [
            "defer",
            sql`select public.defer_stripe_operation('payout:create', ${id}, ${stale},
            'nothing found', now(), true)`,
          ],
        ] as const
      ) {
        await assert.rejects(
          call,
          (e: postgres.PostgresError) =>
            e.code === "PT409" &&
            new RegExp(`Cannot ${action} .*fencing token 1 is stale \\(the current one is 2\\)`).test(
              e.message,
            ),
        );
      }
      const [row] =
        await sql`select status, fencing_token::int as token, locked_until > now() as held, evidence,
          key_burned_at from public.stripe_idempotency_keys where operation_id = ${id}`;
      assert.deepEqual({ ...row }, {
        status: "in_progress",
        token: 2,
        held: true,
        evidence: null,
        key_burned_at: null,
      });
      assert.equal((await claim(sql, "payout:create", id, { a: 1 })).outcome, "in_progress");

      // the current holder may
      const [{ r }] = await sql`select public.defer_stripe_operation('payout:create', ${id}, ${second
        .fencing_token as number}, 'nothing found', now()) as r`;
      assert.equal((r as Row).outcome, "deferred");
      assert.equal((await claim(sql, "payout:create", id, { a: 1 })).fencing_token, 3);
    } finally {
      await sql.end();
    }
  },
);

stackTest("nothing found right after a saved 5xx is no proof; 15 minutes after it, it is", async () => {
  const sql = await pool(2);
  try {
    const id = uid();
    const first = await claim(sql, "refund:create", id, { a: 1 });
    assert.deepEqual([first.mode, first.absent_is_proof ?? false], ["send", false]);
    // Stripe replayed a saved 500 for the key and the look-up found nothing; the lease ends at once
    await sql`select public.defer_stripe_operation('refund:create', ${id}, ${first.fencing_token as number},
      'saved 500; nothing found', now(), true)`;
    const next = await claim(sql, "refund:create", id, { a: 1 });
    assert.deepEqual(
      [next.outcome, next.mode, next.absent_is_proof],
      ["acquired", "lookup", false],
      "the burned key's request may still be making the refund",
    );
    await sql`update public.stripe_idempotency_keys set key_burned_at = now() - interval '14 minutes',
      locked_until = now() - interval '1 second' where operation_id = ${id}`;
    assert.equal((await claim(sql, "refund:create", id, { a: 1 })).absent_is_proof, false);
    await sql`update public.stripe_idempotency_keys set key_burned_at = now() - interval '16 minutes',
      locked_until = now() - interval '1 second' where operation_id = ${id}`;
    const later = await claim(sql, "refund:create", id, { a: 1 });
    assert.deepEqual([later.outcome, later.mode, later.absent_is_proof], ["acquired", "lookup", true]);
  } finally {
    await sql.end();
  }
});

stackTest(
  "a stale holder of an Idempotency-Key can neither store its answer nor release the key",
  async () => {
    const sql = await pool(2);
    try {
      const scope = `user:${uid()}`;
      const key = uid();
      const claimKey = () =>
        sql`select public.claim_idempotency_key(${scope}, ${key}, 'test', 'fp') as r`.then(([r]) =>
          r.r as Row
        );
      const first = await claimKey();
      // the first request outlived its lease; the client's retry took the key over
      await sql`update public.idempotency_keys set locked_until = now() - interval '1 second'
        where scope = ${scope} and key = ${key}`;
      const second = await claimKey();
      assert.deepEqual([second.outcome, second.fencing_token], ["acquired", 2]);

      const stale = first.fencing_token as number;
      for (const fn of ["complete", "fail"]) {
        await assert.rejects(
          sql`select ${sql.unsafe(`public.${fn}_idempotency_key`)}(${scope}, ${key}, ${stale},
            ${fn === "complete" ? 201 : 400}, '{}', '{"from": "the stale holder"}')`,
          (e: postgres.PostgresError) =>
            e.code === "PT409" && /fencing token 1 is stale \(the current one is 2\)/.test(e.message),
        );
      }
      for (const forget of [false, true]) {
        await assert.rejects(
          sql`select public.release_idempotency_key(${scope}, ${key}, ${stale}, ${forget})`,
          (e: postgres.PostgresError) =>
            e.code === "PT409" && /fencing token 1 is not the current holder's/.test(e.message),
        );
      }
      const [row] = await sql`select status, fencing_token::int as token, locked_until > now() as held,
          response_body from public.idempotency_keys where scope = ${scope} and key = ${key}`;
      assert.deepEqual({ ...row }, { status: "in_progress", token: 2, held: true, response_body: null });
      assert.equal((await claimKey()).outcome, "in_progress", "the new holder's lease still runs");

      await sql`select public.complete_idempotency_key(${scope}, ${key}, ${second
        .fencing_token as number}, 201,
        '{}', '{"from": "the current holder"}')`;
      const replay = await claimKey();
      assert.deepEqual([replay.outcome, replay.response_status, replay.response_body], [
        "replay",
        201,
        '{"from": "the current holder"}',
      ]);
    } finally {
      await sql.end();
    }
  },
);
