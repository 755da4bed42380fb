#!/usr/bin/env bash
# npm run model: checks model/protocol.pml with spin. The protocol as designed must pass (safety and
# liveness under weak fairness); every broken variant must be caught with a counterexample, by the
# property it breaks. Prints a table; exits non-zero when a check does not come out as expected.
# Counterexamples (message sequence of the trail) are written to model/out/<check>.txt.
#   model/run.sh [-v] [check ...]     -v prints each counterexample; checks: by name, default all
set -euo pipefail
cd "$(dirname "$0")/.."

verbose=false
if [[ ${1:-} == -v ]]; then verbose=true; shift; fi
for tool in spin gcc; do
  command -v "$tool" >/dev/null || { echo "model: $tool not found (Debian: apt-get install -y spin gcc)" >&2; exit 2; }
done

# name | spin -D flags | mode | expected: pass, or the property whose violation catches it | what it is
#   mode safety: assertions only, breadth-first (shortest counterexample)
#   mode live:   assertions + the LTL property `settles` under weak fairness (-a -f)
#   mode live-A: the LTL property only (assertion violations ignored, -A)
checks=(
  "correct||live|pass|the protocol as designed: safety P1-P5 and liveness L"
  "correct-no-clock|-DNOCLOCK|live|pass|the same with time frozen: every operation settles inside the key window"
  "a-no-fence|-DNO_FENCE_COMPLETE|safety|P3|(a) complete without the fencing-token check"
  "b-new-key|-DNEW_KEY_ON_TAKEOVER|safety|P2|(b) a new Stripe key on takeover"
  "c-release-deletes|-DRELEASE_DELETES|safety|P2|(c) release deletes the row"
  "d-lookup-unknown|-DLOOKUP_ON_UNKNOWN|safety|P5|(d) look-up after any unknown outcome, not only a replayed 5xx"
  "e-absent-at-23h|-DABSENT_AT_23H|safety|P5|(e) absence after 23 h taken as proof while a late holder may send"
  "f-no-window|-DNO_WINDOW|safety|P1|(f) re-send with the stored key whatever the age (key forgotten)"
  "before-fix|-DCURRENT|safety|P5|the code before the model: resolve_stripe_operation on an expired in_progress row"
  "before-fix-no-clock|-DCURRENT -DNOCLOCK|live-A|L|the code before the model: a saved 5xx retried until the 23 h window"
  "open-unsaved-4xx|-DUNSAVED_4XX|safety|P5|open: a 4xx Stripe did not save, then a late holder's request executes"
)

property_of() { # the property an assertion text or a cycle belongs to
  case "$1" in
    *"acceptance cycle"*) echo L ;;
    *nobjects\<=1*) echo P1 ;;
    *first_key*) echo P2 ;;
    *taken_over*) echo P3 ;;
    *found*|*obj!=0*|*seen==made*) echo P4 ;;
    *status!=3*|*nobjects==0*) echo P5 ;;
    *) echo "?" ;;
  esac
}

selected=("$@")
out=model/out
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run_check() { # name flags mode -> $work/<name>.result: verdict|states|seconds|property|detail
  local name=$1 flags=$2 mode=$3 dir="$work/$1" started=$SECONDS
  mkdir -p "$dir"
  cp model/protocol.pml "$dir/"
  (
    cd "$dir"
    # shellcheck disable=SC2086
    spin -a $flags protocol.pml >spin.log 2>&1 || { echo "spin failed: $(tail -1 spin.log)" >pan.log; exit 0; }
    case $mode in
      safety)
        gcc -w -O0 -DSAFETY -DNOCLAIM -DBFS -o pan pan.c && ./pan -m20000 -w21 >pan.log 2>&1 ;;
      live)
        gcc -w -O0 -DNFAIR=3 -o pan pan.c && ./pan -a -f -m20000 >pan.log 2>&1 ;;
      live-A)
        gcc -w -O0 -DNFAIR=3 -o pan pan.c && ./pan -a -f -A -m20000 -w21 >pan.log 2>&1 ;;
    esac
  ) || true
  local log="$dir/pan.log" errors states violation property=""
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$log" | tail -1)
  states=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$log" | tail -1)
  violation=$(grep -m1 -E '^pan:[0-9]+: ' "$log" || true)
  if grep -q -E 'max search depth too small|out of memory|spin failed' "$log"; then
    errors=incomplete
  fi
  if [[ -n $violation ]]; then
    property=$(property_of "$violation")
    # shellcheck disable=SC2086
    (cd "$dir" && spin $flags -t protocol.pml 2>/dev/null |
      grep -E 'MSC:|START OF CYCLE|text of failed' | sed -e 's/^ *//' -e 's/^MSC: //' | head -60) >"$out/$name.txt" || true
  fi
  echo "${errors:-?}|${states:-?}|$((SECONDS - started))|$property|${violation#pan:*: }" >"$work/$name.result"
}

started=$SECONDS
jobs_max=$(nproc 2>/dev/null || echo 2)
for entry in "${checks[@]}"; do
  IFS='|' read -r name flags mode _ _ <<<"$entry"
  if ((${#selected[@]})) && [[ ! " ${selected[*]} " == *" $name "* ]]; then continue; fi
  while (($(jobs -rp | wc -l) >= jobs_max)); do wait -n || true; done
  run_check "$name" "$flags" "$mode" &
done
wait

failed=0
printf '%-18s %-8s %-10s %-12s %5s  %s\n' check expect result states sec what
for entry in "${checks[@]}"; do
  IFS='|' read -r name _ mode expect what <<<"$entry"
  [[ -f $work/$name.result ]] || continue
  IFS='|' read -r errors states seconds property violation <"$work/$name.result"
  if [[ $expect == pass ]]; then
    if [[ $errors == 0 ]]; then result=pass; else result="FAILED"; failed=1; fi
  elif [[ $errors =~ ^[1-9] && $property == "$expect" ]]; then
    result="caught $property"
  elif [[ $errors =~ ^[1-9] ]]; then
    result="caught $property?"; failed=1  # caught, but not by the property it should break
  else
    result="NOT caught"; failed=1
  fi
  printf '%-18s %-8s %-10s %-12s %5s  %s\n' "$name" "$expect" "$result" "$states" "$seconds" "$what"
  if [[ $result != pass ]] && [[ $result == FAILED || $verbose == true ]]; then
    echo "    $violation"
    [[ -f $out/$name.txt ]] && sed 's/^/    | /' "$out/$name.txt"
  fi
done
echo "properties: P1 one Stripe object; P2 one Stripe key; P3 fencing; P4 completed = Stripe's object;"
echo "            P5 failed => no Stripe object; L every operation ends completed/failed/needs_attention"
echo "counterexamples: $out/<check>.txt ($((SECONDS - started)) s in all)"
if ((failed)); then
  echo "model: a check did not come out as expected" >&2
  exit 1
fi
