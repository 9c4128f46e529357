#!/usr/bin/env bash
# homeless.sh BUSCTL: a service account without a home directory runs a group consumer, which
# starts busd; busd's state then goes where no home is needed (docs/naming.md, "Files
# outside /dev/shm"). Three homes that are not the account's: HOME unset, HOME=/nonexistent,
# HOME=/ (root's); no XDG_* variable, no SHMBUS_DIR. As root (CI) the checks run as an
# unused uid of this run's own (60000 + pid % 5000: its /tmp/shmbus-<uid> is nobody else's),
# since root has /run/shmbus and /var/lib/shmbus; as anyone else, as themselves.
# Also: a /tmp/shmbus-<uid> that is a symbolic link is refused, naming it.
set -euo pipefail
busctl=$(realpath "$1")
if [ "$(id -u)" -eq 0 ]; then
  uid=$((60000 + $$ % 5000))
  as=(setpriv --reuid=$uid --regid=$uid --clear-groups)
else
  uid=$(id -u)
  as=()
fi
run_base=/tmp/shmbus-$uid
state_base=/var/tmp/shmbus-$uid
# Bases that exist already belong to someone else's run: left as they are.
[ -e "$run_base" ] || [ -L "$run_base" ] && own_run=0 || own_run=1
[ -e "$state_base" ] || [ -L "$state_base" ] && own_state=0 || own_state=1
bus=homeless-$$-$RANDOM  # and $bus-1, -2, -3: a bus for each check, with a busd of its own
out=$(mktemp /tmp/shmbus-homeless.XXXXXX)
chmod 0644 "$out"

# As the account, with nothing but PATH and what the caller adds (HOME=...).
as_account() { "${as[@]}" env -i PATH=/usr/bin:/bin "$@"; }
cleanup() {
  for b in "$bus" "$bus-1" "$bus-2" "$bus-3"; do as_account "$busctl" --bus "$b" bus delete --purge >/dev/null 2>&1 || true; done
  [ "$own_run" = 1 ] && [ -L "$run_base" ] && rm -f "$run_base"
  # A busd that is exiting may still write its last log line: retry for up to 5 s.
  for base in "$run_base" "$state_base"; do
    [ "$base" = "$run_base" ] && [ "$own_run" = 0 ] && continue
    [ "$base" = "$state_base" ] && [ "$own_state" = 0 ] && continue
    for _ in $(seq 50); do rm -rf "$base" 2>/dev/null && [ ! -e "$base" ] && break; sleep 0.1; done
  done
  rm -f "$out"
}
trap cleanup EXIT
fail() { echo "homeless.sh: $*" >&2; cat "$out" >&2; exit 1; }

if [ "$own_run" = 1 ]; then
  echo "-- a /tmp/shmbus-$uid that is a symbolic link is refused"
  as_account "$busctl" --bus "$bus" topic create t >"$out" 2>&1 || fail "topic create"
  as_account ln -s /tmp "$run_base"
  if as_account "$busctl" --bus "$bus" consume t --group g --count 1 --timeout-ms 2000 >"$out" 2>&1; then
    fail "a group consumer used $run_base, a symbolic link"
  fi
  grep -q "refusing to use $run_base: it is a symbolic link" "$out" || fail "refused, but not saying why"
  rm -f "$run_base"
  as_account "$busctl" --bus "$bus" bus delete --purge >"$out" 2>&1 || fail "bus delete"
fi

n=0
for home in unset /nonexistent /; do
  n=$((n + 1))
  b=$bus-$n
  echo "-- HOME ${home}, XDG_RUNTIME_DIR and XDG_STATE_HOME unset: a group consumer starts busd"
  homevar=()
  [ "$home" = unset ] || homevar=(HOME="$home")
  as_account "${homevar[@]}" "$busctl" --bus "$b" topic create t --partitions 2 >"$out" 2>&1 || fail "topic create"
  printf 'a\nb\nc\n' | as_account "${homevar[@]}" "$busctl" --bus "$b" produce t >"$out" 2>&1 || fail "produce"
  as_account "${homevar[@]}" "$busctl" --bus "$b" consume t --group g --count 3 --timeout-ms 10000 >"$out" 2>&1 ||
    fail "the group consumer failed"
  [ "$(sort "$out" | tr '\n' ' ')" = "a b c " ] || fail "the group consumer printed something else than a b c"
  # busd's socket in the runtime base, busd's offset store in the state base.
  [ -S "$run_base/$b/busd.sock" ] || fail "no busd socket at $run_base/$b/busd.sock"
  [ -e "$state_base/$b/offsets.log" ] || fail "no offset store at $state_base/$b/offsets.log"
  [ "$(stat -c '%u %a' "$run_base")" = "$uid 700" ] || fail "$run_base is not 0700 and the account's"
  [ "$(stat -c '%u %a' "$state_base")" = "$uid 700" ] || fail "$state_base is not 0700 and the account's"
  as_account "$busctl" --bus "$b" bus delete --purge >"$out" 2>&1 || fail "bus delete"
  [ ! -e "$run_base/$b" ] && [ ! -e "$state_base/$b" ] || fail "bus delete --purge left the bus's directories"
done
echo "homeless.sh: passed"
