/*
 * The exactly-once protocol for one Stripe side effect (one row of public.stripe_idempotency_keys),
 * with Stripe's side of it, checked with spin. `npm run model` (model/run.sh) runs every check.
 *
 * The row:      status, lease (locked_until > now()), fencing token, stored Stripe key, stored result.
 * Its users:    two clients (a double click, or a retry on another instance) that claim, call Stripe and
 *               record; the reconciler (stripe-reconcile) that takes over expired leases; an operator
 *               (resolve_stripe_operation) who settles what is left for a person.
 * Stripe:       an idempotency-key store (first request executes; its answer is saved once execution
 *               began, 500s included; the same key while executing -> 409; afterwards the saved answer,
 *               replayed; keys forgotten after 24 h, after which the same key executes again), answers
 *               lost on the way back, 500s before execution (nothing saved).
 * Faults:       any holder may crash at any point, a live holder may be too slow for its lease (the
 *               lease expires under it: it goes on and calls Stripe late), answers are lost, Stripe
 *               answers 5xx; MAXFAULTS of them in one run, all kinds drawn from one budget.
 * Time:         three phases of the operation's age (see `phase`); leases expire by themselves.
 *
 * The design checked here (the default) settles by look-up what the same key cannot settle: a replayed
 * saved 5xx, and an operation past the key window. `needs_attention` only when a look-up cannot decide.
 * -D flags select a broken variant (each must yield a counterexample) or today's code:
 *   NO_FENCE_COMPLETE     (a) complete_stripe_operation without `fencing_token = p_fencing_token`
 *   NEW_KEY_ON_TAKEOVER   (b) a takeover stores the new claimant's candidate key
 *   RELEASE_DELETES       (c) release_stripe_operation deletes the row instead of ending the lease
 *   LOOKUP_ON_UNKNOWN     (d) any unknown outcome (fresh 5xx, 409, timeout) settled by look-up
 *   ABSENT_AT_23H         (e) "absent" after the 23 h window taken as proof before every sender is gone
 *   NO_WINDOW             (f) re-sending with the stored key whatever the operation's age
 *   CURRENT               the code before the model (commit 00a099f), kept to show what it caught: a replayed 5xx is released and retried with the same key,
 *                         past 23 h the row becomes needs_attention, and the operator may resolve an
 *                         in_progress row whose lease ran out with what the dashboard shows
 *   NOCLOCK               time never passes: checks that operations settle inside the key window
 *   UNSAVED_4XX           Stripe behaviour, not a variant: a 4xx refused before execution is not saved
 *                         (Stripe saves only once execution began), so a later request may execute
 *
 * Abstraction of the fencing token: a process holds at most one claim at a time, so the token is
 * represented by the process that obtained it (`tok` = pid of the current holder); the SQL's
 * `k.fencing_token = p_fencing_token` is `tok == _pid`. This keeps the state space finite (a real token
 * grows with every takeover). The ghost `taken_over[p]` records independently that p's claim was
 * superseded; the fencing property asserts it is false whenever p changes the row.
 */

#ifndef MAXFAULTS
#define MAXFAULTS 2
#endif
#ifndef ATTEMPTS
#define ATTEMPTS 2          /* claims of the first client: the request and one retry with its Idempotency-Key */
#endif
#define MAXK 3              /* Stripe keys the model tells apart (the protocol uses one) */
#define NPROC 8

/* public.stripe_idempotency_keys.status; NONE = no row */
#define NONE            0
#define IN_PROGRESS     1
#define COMPLETED       2
#define FAILED          3
#define NEEDS_ATTENTION 4

/* The operation's age, abstracted. The timing assumption: a holder lives far less than an hour (an edge
 * function's wall clock is minutes), so no holder that claimed before 23 h still calls Stripe after 24 h:
 * the clock reaches FORGOTTEN only when no claimed send is pending and no request is executing. */
#define YOUNG     0         /* < 23 h: private.stripe_key_window_passed() is false: (re-)send with the key */
#define CLOSED    1         /* 23-24 h: window passed: nothing is sent any more; Stripe still has the key */
#define FORGOTTEN 2         /* > 24 h: Stripe forgot the key; every holder from before 23 h has ended */

/* claim outcomes (claim_stripe_operation, claim_stale_stripe_operations); mtype so trails name them */
mtype = {
  ACQUIRED,                 /* call Stripe with the stored key */
  LOOKUP,                   /* past the window: settle by look-up, send nothing */
  REPLAY,                   /* completed, failed or needs_attention: the stored result */
  BUSY                      /* another holder's lease runs: 409 + Retry-After */
}

/* Stripe's answer as the caller sees it; A_OBJ, A_4XX and A_5XX are also what a key has saved */
#define PENDING 0           /* no answer yet: the request executes */
mtype = {
  A_OBJ,                    /* 2xx with the object: the first execution, or its replay */
  A_4XX,                    /* executed and refused: terminal (saved, replayed as such) */
  A_5XX,                    /* a fresh 5xx: before execution (nothing saved) or after it began (saved) */
  A_5XX_REPLAYED,           /* a saved 5xx replayed (Idempotent-Replayed: true) */
  A_409,                    /* the key's first request is still executing (nothing saved) */
  A_LOST                    /* no answer: timeout, connection reset */
}

/* Stripe's idempotency-key store, per key */
#define K_UNSEEN    0       /* never seen, or forgotten after 24 h: the next request executes */
#define K_EXECUTING 1
#define K_SAVED     2

/* look-up results */
#define ABSENT_PROVEN 253   /* no object, and none can be made any more with our key */
#define ABSENT_NOT_YET 254  /* no object now, but a holder from before the window may still send */
#define UNDECIDABLE 255

/* ---- the row ---- */
byte status = NONE;
bool leased;                /* locked_until > now() */
bool deferred;              /* locked_until set to when absence becomes provable (24 h + margin) */
byte tok;                   /* fencing_token, as the pid that holds it (0: none) */
byte rkey;                  /* stripe_idempotency_key (1..MAXK) */
byte resource;              /* stripe_resource_id (0: none) */

/* ---- Stripe ---- */
byte kstate[MAXK + 1];
mtype ksaved[MAXK + 1];      /* the saved answer: A_OBJ, A_4XX or A_5XX */
byte kobj[MAXK + 1];        /* the object its execution made (0: none) */
byte kreq[MAXK + 1];        /* who sent the executing request */
byte nobjects;              /* Stripe objects carrying this operation's metadata */
byte made;                  /* the last one made (objects are numbered 1, 2, ...) */
mtype ans[NPROC];           /* the answer each process is waiting for */
byte aobj[NPROC];           /* and the object it carries */

/* ---- environment and ghosts ---- */
byte phase = YOUNG;
byte faults;                /* faults used so far, at most MAXFAULTS */
bool holder_live;           /* the current token's holder has neither crashed nor finished */
byte pending;               /* holders that acquired to send and have not sent yet */
byte nkeys;                 /* Stripe keys generated and stored so far */
byte first_key;             /* the first key ever sent to Stripe for this operation */
bool taken_over[NPROC];     /* ghost: this process's claim was superseded by another's */

/* Promotes the caller to holder of the current token (insert, or takeover: token + 1). */
inline acquire() {
  if
  :: tok != 0 && tok != _pid && holder_live -> taken_over[tok] = true   /* a live holder superseded */
  :: else -> skip
  fi;
  tok = _pid; taken_over[_pid] = false; leased = true; deferred = false; holder_live = true;
  mykey = rkey;
  if
  :: out == ACQUIRED -> sending = true; pending++
  :: else -> skip
  fi
}

/* An expired lease taken over: same Stripe key, token + 1. Decides send or look-up by the window. */
inline takeover() {
#ifdef NO_WINDOW
  out = ACQUIRED;
#else
  if
  :: phase == YOUNG -> out = ACQUIRED                        /* stripe_key_window_passed() false */
  :: else ->
#ifdef CURRENT
    status = NEEDS_ATTENTION; leased = false; out = REPLAY   /* SQL: needs_attention, token unchanged */
#else
    out = LOOKUP
#endif
  fi;
#endif
  if
  :: out != REPLAY ->
#ifdef NEW_KEY_ON_TAKEOVER
    if :: nkeys < MAXK -> nkeys++ :: else -> skip fi;
    rkey = nkeys;                                            /* BROKEN (b): the claimant's candidate key */
#endif
    acquire()
  :: else -> skip
  fi
}

/* claim_stripe_operation (one transaction; its insert/read/conditional-update loop is one atomic step
 * because the update re-checks `status = 'in_progress' and locked_until <= now()` under the row lock). */
inline claim() {
  atomic {
    if
    :: status == NONE ->                                     /* insert ... on conflict do nothing: new */
      nkeys++; rkey = nkeys; status = IN_PROGRESS; phase = YOUNG; out = ACQUIRED; acquire();
      printf("MSC: %d claims: new row, key %d: %e\n", _pid, rkey, out)
    :: status == COMPLETED || status == FAILED || status == NEEDS_ATTENTION ->
      out = REPLAY                                           /* the stored result */
    :: status == IN_PROGRESS && leased -> out = BUSY          /* 409 + Retry-After */
    :: status == IN_PROGRESS && !leased ->
      takeover();
      printf("MSC: %d claims: lease expired: %e (key %d)\n", _pid, out, rkey)
    fi
  }
}

/* The process is done with its claim: its locals (and ghost) go back to their initial values, so that
 * states differing only in what a finished holder remembers are one state. */
inline forget_claim() {
  if :: tok == _pid -> holder_live = false :: else -> skip fi;
  out = 0; found = 0; mykey = 0; replayed5xx = false; ans[_pid] = PENDING; aobj[_pid] = 0;
  taken_over[_pid] = false
}

/* A crash: the process stops here for good (a request it sent goes on at Stripe). */
inline crash_point() {
  if
  :: atomic {
       faults < MAXFAULTS -> faults++;
       if :: sending -> sending = false; pending-- :: else -> skip fi;
       printf("MSC: %d crashes\n", _pid);
       forget_claim()
     };
     goto crashed
  :: true -> skip
  fi
}

/* ---- Stripe ---- */

inline make_object(k) {
  assert(status != FAILED);                  /* P5: no Stripe object for an operation recorded failed */
  nobjects++; made = nobjects; kobj[k] = made;
  assert(nobjects <= 1);                     /* P1: at most one Stripe object per operation */
  printf("MSC: Stripe makes object %d under key %d\n", made, k)
}

/* The holder's request reaches Stripe with its stored key (the SDK call in withStripeIdempotency). */
inline stripe_send() {
  atomic {
    assert(first_key == 0 || first_key == mykey);   /* P2: never two Stripe keys for one operation */
    first_key = mykey;
    sending = false; pending--;
    if
    :: kstate[mykey] == K_UNSEEN ->                  /* the first request: execution begins */
      kstate[mykey] = K_EXECUTING; kreq[mykey] = _pid; ans[_pid] = PENDING
#ifdef UNSAVED_4XX
    :: kstate[mykey] == K_UNSEEN -> ans[_pid] = A_4XX   /* refused before execution: nothing saved */
#endif
    :: kstate[mykey] == K_EXECUTING -> ans[_pid] = A_409
    :: kstate[mykey] == K_SAVED ->                   /* the saved answer, replayed */
      if
      :: ksaved[mykey] == A_5XX -> ans[_pid] = A_5XX_REPLAYED
      :: else -> ans[_pid] = ksaved[mykey]; aobj[_pid] = kobj[mykey]
      fi
    :: faults < MAXFAULTS -> faults++;               /* 500 before execution, or lost on the way: */
      ans[_pid] = A_5XX                              /* nothing happens at Stripe, nothing is saved */
    fi;
    if
    :: ans[_pid] == PENDING -> printf("MSC: %d sends key %d: Stripe begins to execute it\n", _pid, mykey)
    :: else -> printf("MSC: %d sends key %d: answer %e\n", _pid, mykey, ans[_pid])
    fi
  }
}

/* Stripe executes a request: the object, a 4xx, or a 500 after execution began (saved; the object
 * may or may not exist). The answer reaches the caller or is lost. */
active proctype stripe() {
  byte k;
  mtype a;
end:
  do
  :: atomic {
       (kstate[1] == K_EXECUTING || kstate[2] == K_EXECUTING || kstate[3] == K_EXECUTING) ->
       if
       :: kstate[1] == K_EXECUTING -> k = 1
       :: kstate[2] == K_EXECUTING -> k = 2
       :: kstate[3] == K_EXECUTING -> k = 3
       fi;
       if
       :: a = A_OBJ; make_object(k)
       :: a = A_4XX
       :: faults < MAXFAULTS -> faults++; a = A_5XX;
          if :: make_object(k) :: skip fi
       fi;
       kstate[k] = K_SAVED; ksaved[k] = a;
       if
       :: ans[kreq[k]] = a; aobj[kreq[k]] = kobj[k]
       :: faults < MAXFAULTS -> faults++; ans[kreq[k]] = A_LOST
       fi;
       printf("MSC: Stripe executed key %d: saves %e (object %d); %d hears %e\n", k, a, kobj[k], kreq[k],
         ans[kreq[k]]);
       kreq[k] = 0; k = 0; a = 0
     }
  od
}

/* Looking the operation's object up in Stripe by our metadata (order id, refund id, payout id /
 * transfer group). Truthful when it decides; it may not decide. "Absent" is a proof only when no request
 * with our key can still execute: the key has a saved 5xx (replayed to us), or it is past 24 h. */
inline look_up() {
  atomic {
    if
    :: nobjects > 0 -> found = made
    :: nobjects == 0 ->
#ifdef ABSENT_AT_23H
      if
      :: replayed5xx || phase != YOUNG -> found = ABSENT_PROVEN      /* BROKEN (e) */
      :: else -> found = ABSENT_NOT_YET
      fi
#else
      if
      :: replayed5xx || phase == FORGOTTEN -> found = ABSENT_PROVEN
      :: else -> found = ABSENT_NOT_YET
      fi
#endif
    :: true -> found = UNDECIDABLE
    fi;
    if
    :: found == ABSENT_PROVEN -> printf("MSC: %d looks up: absent, taken as proof\n", _pid)
    :: found == ABSENT_NOT_YET -> printf("MSC: %d looks up: absent, but a holder may still send\n", _pid)
    :: found == UNDECIDABLE -> printf("MSC: %d looks up: cannot decide\n", _pid)
    :: else -> printf("MSC: %d looks up: found object %d\n", _pid, found)
    fi
  }
}

/* ---- the holder's finishing RPCs; each changes the row only with the current token ---- */

#ifdef NO_FENCE_COMPLETE
#define COMPLETE_FENCE                                       /* BROKEN (a) */
#else
#define COMPLETE_FENCE && tok == _pid
#endif

/* complete_stripe_operation */
inline complete(obj) {
  atomic {
    if
    :: (status == IN_PROGRESS || status == NEEDS_ATTENTION) COMPLETE_FENCE ->
      assert(!taken_over[_pid]);                             /* P3: fencing */
      assert(obj != 0 && obj == made && nobjects == 1);      /* P4: the resource is Stripe's object */
      status = COMPLETED; resource = obj; leased = false; deferred = false;
      printf("MSC: %d completes with object %d\n", _pid, obj)
    :: else -> skip                                          /* PT409: refused, nothing changed */
    fi
  }
}

/* fail_stripe_operation: a terminal Stripe error, or the object proven absent */
inline fail() {
  atomic {
    if
    :: (status == IN_PROGRESS || status == NEEDS_ATTENTION) && tok == _pid ->
      assert(!taken_over[_pid]);                             /* P3 */
      assert(nobjects == 0);                                 /* P5 */
      status = FAILED; leased = false; deferred = false;
      printf("MSC: %d fails the operation\n", _pid)
    :: else -> skip
    fi
  }
}

/* release_stripe_operation: unknown outcome; same key kept, claimable at once */
inline release() {
  atomic {
    if
    :: status == IN_PROGRESS && tok == _pid ->
      assert(!taken_over[_pid]);                             /* P3 */
#ifdef RELEASE_DELETES
      status = NONE; tok = 0; rkey = 0; leased = false;      /* BROKEN (c): delete ... where token = mine */
#else
      leased = false;                                        /* locked_until = now() */
#endif
      printf("MSC: %d releases\n", _pid)
    :: else -> skip
    fi
  }
}

/* Absent, not yet provable: keep the lease until absence is provable (locked_until = 24 h + margin). */
inline defer() {
  atomic {
    if
    :: status == IN_PROGRESS && tok == _pid ->
      assert(!taken_over[_pid]);                             /* P3 */
      leased = true; deferred = true; holder_live = false;
      printf("MSC: %d defers until the key is forgotten\n", _pid)
    :: else -> skip
    fi
  }
}

/* The look-up cannot decide: needs_attention, for an operator. */
inline attention() {
  atomic {
    if
    :: status == IN_PROGRESS && tok == _pid ->
      assert(!taken_over[_pid]);                             /* P3 */
      status = NEEDS_ATTENTION; leased = false; deferred = false;
      printf("MSC: %d marks needs_attention\n", _pid)
    :: else -> skip
    fi
  }
}

/* Settle by look-up: found -> complete with it, proven absent -> fail, not yet -> defer,
 * undecidable -> needs_attention. */
inline settle_by_look_up() {
  look_up();
  crash_point();
  if
  :: found == UNDECIDABLE -> attention()
  :: found == ABSENT_PROVEN -> fail()
  :: found == ABSENT_NOT_YET -> defer()
  :: else -> complete(found)
  fi
}

/* What a holder does with its claim: withStripeIdempotency after `acquired` (idempotency.ts 138-166),
 * or the look-up after `lookup`. */
inline drive() {
  if
  :: out == ACQUIRED ->
    crash_point();
    stripe_send();
    crash_point();                           /* dies while its request runs at Stripe */
    ans[_pid] != PENDING;
    crash_point();                           /* dies after Stripe acted, before recording */
    if
    :: ans[_pid] == A_OBJ -> complete(aobj[_pid])
    :: ans[_pid] == A_4XX -> fail()          /* terminalFailure(): 400, 402, 403, 404 */
    :: ans[_pid] == A_5XX_REPLAYED ->
#ifdef CURRENT
      release()                              /* today: any 5xx is an unknown outcome */
#else
      replayed5xx = true; settle_by_look_up()
#endif
    :: else ->                               /* a fresh 5xx, 409, timeout or reset: unknown outcome */
#ifdef LOOKUP_ON_UNKNOWN
      replayed5xx = true; settle_by_look_up()   /* BROKEN (d) */
#else
      release()
#endif
    fi
  :: out == LOOKUP ->
    crash_point();
    settle_by_look_up()
  fi;
  atomic { forget_claim() }
}

/* A client's request (enhanced-checkout, refunds, payouts): claim, drive, and on 409/503 retry. The
 * first client retries (ATTEMPTS claims in all); the second is a concurrent double click: one claim. */
#define FIRST_CLIENT_PID 1    /* stripe() is process 0 */
active [2] proctype client() {
  byte attempts = (_pid == FIRST_CLIENT_PID -> 0 : ATTEMPTS - 1);
  mtype out;
  byte found, mykey;
  bool sending, replayed5xx;
  do
  :: attempts < ATTEMPTS ->
    attempts++;
    claim();
    if
    :: out == REPLAY -> break
    :: out == BUSY -> skip
    :: else -> drive()
    fi;
    out = 0
  :: else -> break
  od;
crashed:
  skip
}

/* stripe-reconcile on its schedule (claim_stale_stripe_operations, then the same driver). A crash ends
 * one run; the next run starts over. */
active proctype reconciler() {
  mtype out;
  byte found, mykey;
  bool sending, replayed5xx;
end:
  do
  :: atomic {
       status == IN_PROGRESS && !leased ->   /* k.status = 'in_progress' and k.locked_until <= now() */
       takeover();
       printf("MSC: reconciler %d claims the stale row: %e\n", _pid, out)
     };
     if
     :: out == ACQUIRED || out == LOOKUP -> drive()
     :: else -> out = 0
     fi;
crashed:
     skip
  od
}

/* An operator with the Stripe dashboard (resolve_stripe_operation): looks, then resolves. */
active proctype operator() {
  byte seen;
end:
#ifdef CURRENT
  /* today: a needs_attention row, or an in_progress one whose lease ran out; with the current token */
  atomic {
    (status == NEEDS_ATTENTION || (status == IN_PROGRESS && !leased)) -> seen = made;
    printf("MSC: operator sees object %d in the dashboard (0: none)\n", seen)
  };
  atomic {
    if
    :: status == NEEDS_ATTENTION || (status == IN_PROGRESS && !leased) ->
      if
      :: seen != 0 -> assert(seen == made && nobjects == 1); status = COMPLETED; resource = seen
      :: else -> assert(nobjects == 0); status = FAILED       /* P5 */
      fi;
      leased = false;
      printf("MSC: operator resolves: status %d (2 completed, 3 failed)\n", status)
    :: else -> skip
    fi
  }
#else
  /* needs_attention only; "nothing in the dashboard" counts only once the key can no longer execute */
  atomic {
    status == NEEDS_ATTENTION && (nobjects > 0 || phase == FORGOTTEN) -> seen = made
  };
  atomic {
    if
    :: status == NEEDS_ATTENTION ->
      if
      :: seen != 0 -> assert(seen == made && nobjects == 1); status = COMPLETED; resource = seen
      :: else -> assert(nobjects == 0); status = FAILED       /* P5 */
      fi
    :: else -> skip
    fi
  }
#endif
}

/* Leases run out: a dead holder's always; a live holder's only as a fault (it was too slow). */
active proctype leases() {
end:
  do
  :: atomic { status == IN_PROGRESS && leased && !deferred && !holder_live -> leased = false }
  :: atomic {
       status == IN_PROGRESS && leased && !deferred && holder_live && faults < MAXFAULTS ->
       faults++; leased = false;
       printf("MSC: holder %d is too slow: its lease runs out\n", tok)
     }
  :: atomic { status == IN_PROGRESS && leased && deferred && phase == FORGOTTEN -> leased = false; deferred = false }
  od
}

#ifndef NOCLOCK
/* Time passes: 23 h (our window), then 24 h (Stripe forgets the key) once no holder can still send. */
active proctype clock() {
end:
  do
  :: atomic { phase == YOUNG && status != NONE -> phase = CLOSED; printf("MSC: 23 h pass\n") }
  :: atomic {
       phase == CLOSED && pending == 0 && !(kstate[1] == K_EXECUTING || kstate[2] == K_EXECUTING ||
         kstate[3] == K_EXECUTING) ->
       phase = FORGOTTEN;
       kstate[1] = K_UNSEEN; kstate[2] = K_UNSEEN; kstate[3] = K_UNSEEN;
       ksaved[1] = 0; ksaved[2] = 0; ksaved[3] = 0; kobj[1] = 0; kobj[2] = 0; kobj[3] = 0;
       printf("MSC: 24 h pass: Stripe forgets the key\n")
     }
  od
}
#endif

/* Liveness: every operation that started ends completed, failed or needs_attention. */
ltl settles { [] ((status == IN_PROGRESS) -> <> (status == COMPLETED || status == FAILED || status == NEEDS_ATTENTION)) }
