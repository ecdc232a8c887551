#!/bin/bash
# The service end to end under a real systemd: runs as root INSIDE the sdvm guest (Debian 12,
# systemd 252 as PID 1; sdvm is the VM harness outside this repository that
# tests/system/run_systemd_e2e.sh finds at $SDVM). That script builds the
# wheelhouse and hands this checkout's README.md, systemd/ and config/ over as $SDVM_DIR/extra.
#
# It installs foldermirror by running the shell blocks of README.md's "Run as a service" section
# (only `sudo` is a shim, and the venv/pip lines use the fast offline form), then checks the ten
# items of issue 7, a remote target over ssh (11-13) and the journal (14), one `SDVM-RESULT: PASS|FAIL` line each.
. "$SDVM_LIB"
CHECKOUT=$SDVM_DIR/extra
U=foldermirror
CFG=/etc/foldermirror/config.yaml
BIN=/opt/foldermirror/bin/foldermirror
WORK=/root/e2e
mkdir -p "$WORK"

# ---- helpers ---------------------------------------------------------------------------------
REASON=
why() { REASON="$*"; return 1; }               # usage: CONDITION || why "what went wrong" || return
DETAIL=
run_check() {                                  # run_check NAME FUNCTION
  local name=$1 t0 t1; REASON= DETAIL=; t0=$(date +%s.%N)
  log_step "--- $name"
  if "$2"; then t1=$(date +%s.%N); pass "$name ($(elapsed "$t0" "$t1")s)${DETAIL:+: $DETAIL}"
  else fail "$name" "${REASON:-$2 returned non-zero}"; return 1; fi
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
journal() { journalctl -b -u "$1" -o cat --no-pager; }
# The unit's last journal entry, and the unit's messages after it. The cursor must be one of the
# unit's own entries: journalctl 252 with -u and --after-cursor on another unit's entry skips
# the first matching entry after it (a check once missed "Watchdog timeout" that way).
mark() { journalctl -b -u "$1" -n 1 --show-cursor -o cat --no-pager | sed -n 's/^-- cursor: //p'; }
since() { journalctl -b -u "$2" -o cat --no-pager --after-cursor="$1"; }
# jsel KEY=VALUE...: the JSON lines on stdin whose fields equal VALUE (lists and numbers as JSON);
# exit 1 when none. The guest has no jq, so this stands in for the README's jq filters.
cat > "$WORK/jsel.py" <<'PY'
import json, sys
want = [a.split("=", 1) for a in sys.argv[1:]]
hits = 0
for line in sys.stdin:
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    if isinstance(rec, dict) and all(
            (v if isinstance(v, str) else json.dumps(v)) == w
            for k, w in want for v in [rec.get(k)]):
        print(json.dumps(rec))
        hits += 1
sys.exit(0 if hits else 1)
PY
jsel() { python3 "$WORK/jsel.py" "$@"; }
has_event() { local u=$1; shift; journal "$u" | jsel "$@" >/dev/null; }
count_events() { local u=$1; shift; journal "$u" | jsel "$@" | wc -l; }
# same SRC DST: bytes, mode and mtime_ns equal (the pytest oracle, for one file)
same() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import os, sys
a, b = (os.stat(p) for p in sys.argv[1:])
same = open(sys.argv[1], "rb").read() == open(sys.argv[2], "rb").read()
sys.exit(0 if same and a.st_mode == b.st_mode and a.st_mtime_ns == b.st_mtime_ns else 1)
PY
}
temp_files() { find /srv/mirror /srv/elsewhere -name '.foldermirror-*' 2>/dev/null; }
unit_tail() { journal "$1" | tail -"${2:-4}" | cut -c1-300 | tr '\n' ' '; }
# all_json UNIT: every line the unit's processes wrote (journald's stdout transport: stdout and
# stderr) is one whole JSON object with an event, not split or merged by journald.
all_json() {
  journalctl -b -u "$1" -o json --no-pager | python3 -c '
import json, sys
n, bad = 0, []
for raw in sys.stdin:
    e = json.loads(raw)
    if e.get("_TRANSPORT") != "stdout":
        continue
    m = e.get("MESSAGE")
    m = bytes(m).decode("utf-8", "replace") if isinstance(m, list) else m
    n += 1
    try:
        assert "event" in json.loads(m)
    except Exception:
        bad.append(m[:160])
print(f"{n} daemon lines in the journal, {len(bad)} not JSON {bad[:2]}")
sys.exit(1 if bad or not n else 0)'
}
# A MainPID of 0 (no main process) must never reach kill: `kill -9 0` kills this script's group.
main_pid_ok() { [ "$1" -gt 1 ] 2>/dev/null || why "no main process (MainPID=$1, $(prop $U ActiveState)/$(prop $U SubState))"; }
edit_config() { cp "$1" "$CFG.new" && mv "$CFG.new" "$CFG"; }   # the operator's edit (sudoedit)

# readme_block LABEL [OLD=>NEW]...: the first ```sh block after the paragraph that starts with
# **LABEL in README.md's "Run as a service" section; each OLD must be a whole line of it.
readme_block() {
  python3 - "$CHECKOUT/README.md" "$@" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
try:
    sec = text.split("\n## Run as a service\n", 1)[1].split("\n## ", 1)[0]
    start = sec.index("**" + sys.argv[2])
    block = re.compile(r"```sh\n(.*?)```", re.S).search(sec, start).group(1)
except (IndexError, ValueError, AttributeError):
    sys.exit(f"README.md: no sh block after **{sys.argv[2]} in 'Run as a service'")
lines = block.splitlines()
for pair in sys.argv[3:]:
    old, new = pair.split("=>", 1)
    hit = [i for i, l in enumerate(lines) if l.split("#", 1)[0].strip() == old]
    if not hit:
        sys.exit(f"README.md: the **{sys.argv[2]} block has no line `{old}`")
    for i in hit:
        lines[i] = new
print("\n".join(lines))
PY
}
# run_readme LABEL [OLD=>NEW]...: run that block with bash -e from the checkout; log in $WORK.
run_readme() {
  local label=$1 log=$WORK/readme-${1%% *}.log
  readme_block "$@" > "$WORK/block.sh" 2>"$log" || { why "$(cat "$log")"; return; }
  log_step "README block **$label: $(grep -vc '^\s*#' "$WORK/block.sh") lines"
  (cd "$CHECKOUT" && bash -e -x "$WORK/block.sh") >>"$log" 2>&1 \
    || why "README block **$label failed: $(tail -4 "$log" | tr '\n' ' ')"
}

# The guest runs everything as root and has no sudo: a shim keeps the README's lines as written.
cat > /usr/local/bin/sudo <<'SH'
#!/bin/sh
if [ "$1" = -u ]; then user=$2; shift 2; exec runuser -u "$user" -- "$@"; fi
exec "$@"
SH
chmod 755 /usr/local/bin/sudo
PIPWHL=$(ls /usr/share/python-wheels/pip-*.whl | tail -1)
export PIPWHL

# ---- 1. install as the README says; systemd-analyze verify prints nothing ----------------------
check_install() {
  # Offline and fast (sdvm README): a venv without ensurepip, pip run from Debian's pip wheel,
  # the wheels from the wheelhouse instead of `pip install .` of a checkout.
  run_readme "Install" \
    "sudo python3 -m venv /opt/foldermirror=>python3 -m venv --without-pip /opt/foldermirror" \
    "sudo /opt/foldermirror/bin/pip install .=>/opt/foldermirror/bin/python \"\$PIPWHL/pip\" install -q --no-index --find-links \"\$SDVM_WHEELHOUSE\" foldermirror" \
    || return
  run_readme "Create the user" || return
  run_readme "Make the targets writable" || return
  "$BIN" --version >/dev/null 2>&1 || why "$BIN --version failed" || return
  [ -f /opt/foldermirror/README.md ] || why "README.md not installed beside the venv" || return
  local pw; pw=$(getent passwd foldermirror) || why "no user foldermirror" || return
  local uid; uid=$(cut -d: -f3 <<<"$pw")
  [ "$uid" -lt 1000 ] && [ "$(cut -d: -f7 <<<"$pw")" = /usr/sbin/nologin ] \
    || why "foldermirror is not a system user with nologin: $pw" || return
  [ "$(stat -c %U /srv/mirror)" = foldermirror ] || why "/srv/mirror not owned by foldermirror" || return
  grep -qx 'ReadWritePaths=/srv/mirror' /etc/systemd/system/foldermirror.service.d/targets.conf \
    || why "targets.conf drop-in missing" || return
  local out
  out=$(systemd-analyze verify /etc/systemd/system/foldermirror.service /etc/systemd/system/foldermirror@.service 2>&1)
  [ $? = 0 ] && [ -z "$out" ] || why "systemd-analyze verify printed: $out" || return
  DETAIL="uid $uid; $(ls "$SDVM_WHEELHOUSE" | tr '\n' ' ')"
}

# ---- 2. active only after READY=1; systemctl status shows STATUS= ------------------------------
check_start() {
  # "then edit it": the example config's sources are /srv/inbox/{photos,documents}; create them.
  install -d -m 0755 /srv/inbox/photos /srv/inbox/documents
  run_readme "Start it" || return
  local log=$WORK/readme-Start.log
  [ "$(systemctl is-active $U)" = active ] || why "is-active=$(systemctl is-active $U): $(unit_tail $U)" || return
  [ "$(systemctl is-enabled $U)" = enabled ] || why "not enabled" || return
  # systemd marked the unit active no earlier than the daemon logged daemon_ready (it sends
  # READY=1 right after), and the process was running before that: Type=simple would fail this.
  local ready started times
  wait_eval 30 'has_event $U event=daemon_ready'   # already there, unless systemd did not wait for it
  ready=$(journal $U | jsel event=daemon_ready | tail -1)
  started=$(journal $U | jsel event=daemon_started | tail -1)
  [ -n "$ready" ] && [ -n "$started" ] || why "no daemon_started/daemon_ready line: $(unit_tail $U)" || return
  times=$(python3 - "$started" "$ready" \
      "$(systemctl show -p ExecMainStartTimestamp --value --timestamp=us+utc $U)" \
      "$(systemctl show -p ActiveEnterTimestamp --value --timestamp=us+utc $U)" <<'PY'
import datetime as dt, json, sys
def log_ts(line):
    return dt.datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00"))
def unit_ts(text):
    return dt.datetime.strptime(text, "%a %Y-%m-%d %H:%M:%S.%f %Z").replace(tzinfo=dt.timezone.utc)
started, ready = log_ts(sys.argv[1]), log_ts(sys.argv[2])
exec_start, active = unit_ts(sys.argv[3]), unit_ts(sys.argv[4])
ok = exec_start <= started <= ready <= active
print(f"exec→daemon_started {(started - exec_start).total_seconds():.2f}s, "
      f"→daemon_ready {(ready - exec_start).total_seconds():.2f}s, "
      f"→active {(active - exec_start).total_seconds():.2f}s")
sys.exit(0 if ok else 1)
PY
  ) || why "out of order: $times" || return
  [ "$(prop $U Type)" = notify ] || why "Type=$(prop $U Type)" || return
  # The start-up catch-up of the (empty) folders says "catching up …" first; then "watching …".
  wait_eval 30 '[[ "$(prop $U StatusText)" == "watching 2 folders, "*" pending, "*" files mirrored" ]]' \
    || why "StatusText='$(prop $U StatusText)'" || return
  local st; st=$(prop $U StatusText)
  # The README's `systemctl status` runs right after start, often while the start-up catch-up
  # still runs: its Status: line is then "catching up …", later "watching …". Either shows that
  # the STATUS= sent with READY=1 reached systemd.
  grep -qE '^ *Status: "(watching 2 folders, |catching up (photos|documents): )' "$log" \
    || why "systemctl status did not show the STATUS= text: $(grep -A12 'systemctl status' "$log" | tr '\n' ' ')" || return
  DETAIL="$times; status \"$st\""
}

# ---- 3. a file is mirrored; its file_mirrored line is in the journal as JSON -------------------
check_mirror() {
  printf 'hello from the guest %s\n' "$(date +%s.%N)" > /srv/inbox/photos/hello.txt
  chmod 640 /srv/inbox/photos/hello.txt; chgrp foldermirror /srv/inbox/photos/hello.txt
  wait_until 30 same /srv/inbox/photos/hello.txt /srv/mirror/photos/hello.txt \
    || why "hello.txt not mirrored (bytes, mode, mtime): $(ls -l /srv/mirror/photos/ | tr '\n' ' ') $(unit_tail $U)" || return
  [ "$(stat -c %U /srv/mirror/photos/hello.txt)" = foldermirror ] || why "mirror not owned by foldermirror" || return
  local line
  wait_eval 15 'journal $U | jsel event=file_mirrored folder=photos path=hello.txt >/dev/null' \
    || why "no file_mirrored line for hello.txt in journalctl -u $U -o cat: $(unit_tail $U)" || return
  # Its copy, and maybe a line for the chmod/chgrp above: those change no bytes, so when they
  # land after the copy the mirror's mode and group are set in place (a line with bytes 0).
  local lines; lines=$(journal $U | grep -F '"file_mirrored"' | grep -F '"hello.txt"')
  line=$(head -1 <<<"$lines")
  python3 -c '
import json, sys
records = [json.loads(line) for line in sys.argv[1].splitlines()]
assert all(r["event"] == "file_mirrored" for r in records) and any(r["bytes"] > 0 for r in records)' "$lines" \
    || why "hello.txt's file_mirrored lines are not JSON, or none copied its bytes: $lines" || return
  local res; res=$(all_json $U) || why "$res" || return
  DETAIL="$res; $line"
}

# ---- 4. reload adds a folder; a broken YAML is logged and the service stays -------------------
check_reload() {
  local pid n_ok n_bad
  pid=$(prop $U MainPID)
  n_ok=$(count_events $U event=config_reloaded)
  n_bad=$(count_events $U event=config_invalid)
  install -d -m 0755 /srv/inbox/added
  echo "written before the reload" > /srv/inbox/added/before.txt
  cp "$CFG" "$WORK/original.yaml"
  { cat "$WORK/original.yaml"; printf '\n  - name: added\n    source: /srv/inbox/added\n    target: /srv/mirror/added\n'; } \
    > "$WORK/added.yaml"
  edit_config "$WORK/added.yaml"
  # The README's "Add a folder" block: check as the service's user, then reload (no sudoedit, no jq).
  readme_block "Add a folder" > "$WORK/add.sh" || why "$(cat "$WORK/add.sh")" || return
  grep -E 'foldermirror check|systemctl reload' "$WORK/add.sh" > "$WORK/add-run.sh"
  [ "$(wc -l < "$WORK/add-run.sh")" = 2 ] || why "README 'Add a folder' lacks the check/reload lines" || return
  (cd "$CHECKOUT" && bash -e -x "$WORK/add-run.sh") > "$WORK/add.log" 2>&1 \
    || why "README 'Add a folder' commands failed: $(tail -3 "$WORK/add.log" | tr '\n' ' ')" || return
  wait_eval 30 '[ "$(count_events $U event=config_reloaded "added=[\"added\"]")" -ge 1 ]' \
    || why "no config_reloaded with added=[added]: $(unit_tail $U)" || return
  wait_until 30 same /srv/inbox/added/before.txt /srv/mirror/added/before.txt \
    || why "the added folder was not caught up" || return
  echo "written after the reload" > /srv/inbox/added/after.txt
  wait_until 30 same /srv/inbox/added/after.txt /srv/mirror/added/after.txt \
    || why "the added folder is not watched" || return
  # A broken edit: YAML that does not parse.
  { cat "$WORK/added.yaml"; printf '  - name: oops\n   source: /srv/inbox/oops\n'; } > "$WORK/broken.yaml"
  edit_config "$WORK/broken.yaml"
  runuser -u foldermirror -- "$BIN" check --config "$CFG" > "$WORK/check-broken.log" 2>&1
  [ $? = 78 ] || why "foldermirror check of the broken YAML did not exit 78: $(cat "$WORK/check-broken.log")" || return
  systemctl reload $U || why "systemctl reload with a broken YAML failed: $(unit_tail $U)" || return
  wait_eval 30 '[ "$(count_events $U event=config_invalid)" -gt '"$n_bad"' ]' \
    || why "no config_invalid after a broken reload: $(unit_tail $U)" || return
  local invalid; invalid=$(journal $U | jsel event=config_invalid | tail -1)
  grep -qF "$CFG:" <<<"$invalid" || why "config_invalid does not name $CFG with a line: $invalid" || return
  [ "$(systemctl is-active $U)" = active ] && [ "$(prop $U MainPID)" = "$pid" ] \
    || why "service not active with the same pid after a broken reload" || return
  echo "the old configuration still serves" > /srv/inbox/added/still.txt
  wait_until 30 same /srv/inbox/added/still.txt /srv/mirror/added/still.txt \
    || why "nothing mirrored after the broken reload" || return
  edit_config "$WORK/added.yaml"
  systemctl reload $U
  wait_eval 30 '[ "$(count_events $U event=config_reloaded)" -ge '"$((n_ok + 2))"' ]' \
    || why "the fixed config was not reloaded: $(unit_tail $U)" || return
  wait_eval 10 '[ "$(systemctl show -p SubState --value $U)" = running ]' || why "not back to running" || return
  DETAIL="config_invalid: $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["error"][:140])' "$invalid")"
}

# ---- 5. hardening: targets writable, a target outside ReadWritePaths is refused clearly ---------
check_sandbox() {
  # The target exists and belongs to foldermirror, so only the sandbox (ProtectSystem=strict
  # without ReadWritePaths=) can stop the service from writing there, and only the daemon's
  # trial write (README: "a real write is tried") can notice.
  install -d -o foldermirror -g foldermirror -m 0755 /srv/elsewhere /srv/elsewhere/outside
  runuser -u foldermirror -- touch /srv/elsewhere/outside/probe && rm /srv/elsewhere/outside/probe \
    || why "foldermirror cannot write /srv/elsewhere/outside even outside the sandbox" || return
  install -d -m 0755 /srv/inbox/outside
  echo "must not be lost silently" > /srv/inbox/outside/x.txt
  local n; n=$(count_events $U event=config_reloaded)
  { cat "$WORK/added.yaml"; printf '  - name: outside\n    source: /srv/inbox/outside\n    target: /srv/elsewhere/outside\n'; } \
    > "$WORK/outside.yaml"
  edit_config "$WORK/outside.yaml"
  systemctl reload $U || why "reload failed" || return
  wait_eval 30 '[ "$(count_events $U event=config_reloaded)" -gt '"$n"' ]' || why "no config_reloaded: $(unit_tail $U)" || return
  journal $U | jsel event=config_reloaded | tail -1 | jsel 'unusable=["outside"]' >/dev/null \
    || why "config_reloaded does not list outside as unusable: $(journal $U | jsel event=config_reloaded | tail -1)" || return
  local line; line=$(journal $U | jsel event=folder_unusable folder=outside | tail -1)
  [ -n "$line" ] || why "no folder_unusable line for outside: $(unit_tail $U)" || return
  for want in /srv/elsewhere/outside "Read-only file system" ReadWritePaths; do
    grep -qF "$want" <<<"$line" || why "folder_unusable does not say '$want': $line" || return
  done
  [ -z "$(ls -A /srv/elsewhere/outside)" ] || why "written despite the sandbox: $(ls -A /srv/elsewhere/outside)" || return
  wait_eval 10 '[[ "$(prop $U StatusText)" == *"1 unusable (outside)"* ]]' \
    || why "STATUS does not show the unusable folder: $(prop $U StatusText)" || return
  local status; status=$(prop $U StatusText)
  echo "still served" > /srv/inbox/photos/sandbox.txt
  wait_until 30 same /srv/inbox/photos/sandbox.txt /srv/mirror/photos/sandbox.txt \
    || why "the other folders stopped being served" || return
  edit_config "$WORK/added.yaml"
  n=$(count_events $U event=config_reloaded)
  systemctl reload $U
  wait_eval 30 '[ "$(count_events $U event=config_reloaded)" -gt '"$n"' ]' || why "restoring reload not seen" || return
  DETAIL="status \"$status\"; $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["error"])' "$line")"
}

# ---- 6. kill -9: systemd restarts it and it catches up what was written meanwhile ------------
check_kill9() {
  local pid n0 cur newpid t0
  pid=$(prop $U MainPID); n0=$(prop $U NRestarts); cur=$(mark $U)
  main_pid_ok "$pid" || return
  t0=$(date +%s.%N)
  kill -9 "$pid"
  wait_eval 15 '[ "$(prop $U SubState)" = auto-restart ]' \
    || why "not in auto-restart after kill -9: $(prop $U ActiveState)/$(prop $U SubState)" || return
  echo "written while the service was down" > /srv/inbox/photos/while-down.txt
  [ "$(prop $U SubState)" = auto-restart ] || why "restarted before the file was written; cannot prove catch-up" || return
  wait_eval 60 '[ "$(systemctl is-active $U)" = active ] && [ "$(prop $U NRestarts)" -gt '"$n0"' ]' \
    || why "not restarted: $(prop $U ActiveState)/$(prop $U SubState) NRestarts=$(prop $U NRestarts)" || return
  newpid=$(prop $U MainPID)
  local up; up=$(elapsed "$t0" "$(date +%s.%N)")
  [ "$newpid" != "$pid" ] || why "same MainPID" || return
  since "$cur" $U | grep -q 'code=killed, status=9/KILL' || why "journal lacks status=9/KILL" || return
  wait_until 30 same /srv/inbox/photos/while-down.txt /srv/mirror/photos/while-down.txt \
    || why "while-down.txt not caught up: $(unit_tail $U)" || return
  wait_eval 30 'since "$cur" $U | jsel event=sync_finished folder=photos reason=startup >/dev/null' \
    || why "no sync_finished after the restart" || return
  local sync; sync=$(since "$cur" $U | jsel event=sync_finished folder=photos reason=startup | tail -1)
  python3 -c 'import json,sys; sys.exit(0 if json.loads(sys.argv[1])["files_mirrored"] >= 1 else 1)' "$sync" \
    || why "the start-up catch-up copied nothing: $sync" || return
  [ -z "$(temp_files)" ] || why "temp files left: $(temp_files)" || return
  DETAIL="active again ${up}s after kill -9 (RestartSec=5s); $sync"
}

# ---- 14. the journal: priorities, and a 20,000-file catch-up kept whole ---------------------------
# Each line's <N> prefix becomes its PRIORITY, so `journalctl -p warning` filters; the unit's
# LogRateLimitBurst= keeps a start-up catch-up's file_mirrored lines from being dropped.
BULK=20000
check_journal() {
  local cur; cur=$(mark $U)
  echo "the service user may not read this" > /srv/inbox/photos/locked.txt; chmod 600 /srv/inbox/photos/locked.txt
  echo "readable" > /srv/inbox/photos/readable.txt
  wait_eval 30 'since "$cur" $U | jsel event=mirror_failed path=locked.txt >/dev/null' \
    || why "no mirror_failed for locked.txt: $(unit_tail $U)" || return
  wait_eval 30 'since "$cur" $U | jsel event=file_mirrored path=readable.txt >/dev/null' \
    || why "readable.txt not mirrored: $(unit_tail $U)" || return
  local warn; warn=$(journalctl -b -u $U -p warning -o cat --no-pager)
  jsel event=mirror_failed path=locked.txt <<<"$warn" >/dev/null \
    || why "journalctl -p warning lacks the mirror_failed line: $(tail -2 <<<"$warn")" || return
  ! grep -qF '"file_mirrored"' <<<"$warn" || why "journalctl -p warning shows file_mirrored: $(grep -F '"file_mirrored"' <<<"$warn" | head -1)" || return
  local prios; prios=$(journalctl -b -u $U -o json --no-pager --after-cursor="$cur" | python3 -c '
import json, sys
seen = {}
for line in sys.stdin:
    r = json.loads(line)
    msg = r.get("MESSAGE", "")
    if isinstance(msg, str) and msg.startswith("{"):
        seen.setdefault(json.loads(msg)["event"], r["PRIORITY"])
print(" ".join(f"{e}={p}" for e, p in sorted(seen.items())))
ok = seen.get("mirror_failed") == "3" and seen.get("file_mirrored") == "6"
sys.exit(0 if ok else 1)') || why "PRIORITY fields: $prios" || return
  rm -f /srv/inbox/photos/locked.txt /srv/inbox/photos/readable.txt
  # A start-up catch-up of BULK files: every one of its file_mirrored lines is in the journal,
  # once the journal is persistent as the README says (the guest's volatile one holds ~12,000).
  [ "$(prop $U LogRateLimitBurst)" = 250000 ] || why "LogRateLimitBurst=$(prop $U LogRateLimitBurst)" || return
  run_readme "Keep a big catch-up" || return
  [ -d /var/log/journal ] && journalctl --header 2>/dev/null | grep -q '^File path: /var/log/journal/' \
    || why "the journal is not persistent after the README's block: $(journalctl --disk-usage 2>&1)" || return
  local usage0; usage0=$(journalctl --disk-usage 2>&1 | grep -oE '[0-9.]+[KMG]' | head -1)
  systemctl stop $U || why "stop failed" || return
  python3 -c '
import os, sys
base, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = f"{base}/d{i // 1000:02d}"
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05d}", "w") as f:
        f.write(f"file {i}\n")' /srv/inbox/photos/bulk $BULK || why "could not make the bulk tree" || return
  cur=$(mark $U); local t0 t1; t0=$(date +%s.%N)
  systemctl start $U || why "start failed: $(unit_tail $U)" || return
  # Polled every 2 s, with no journal read until the files are there: reading a growing journal
  # five times a second (wait_eval) takes the guest's CPU from the catch-up under TCG.
  local end=$(( $(date +%s) + 600 ))
  until [ "$(find /srv/mirror/photos/bulk -type f 2>/dev/null | wc -l)" -ge $BULK ] \
      && since "$cur" $U | grep -F '"sync_finished"' | grep -qF '"reason": "startup"'; do
    [ "$(date +%s)" -lt $end ] || break
    sleep 2
  done
  since "$cur" $U | jsel event=sync_finished folder=photos reason=startup >/dev/null \
    || why "no sync_finished for the bulk catch-up within 600s: $(find /srv/mirror/photos/bulk -type f | wc -l) of $BULK files in the target; $(unit_tail $U)" || return
  t1=$(date +%s.%N)
  local kept; kept=$(since "$cur" $U | python3 -c '
import json, sys
n = 0
for line in sys.stdin:
    if line.startswith("{") and "\"file_mirrored\"" in line:
        r = json.loads(line)
        n += r["kind"] == "file" and r["path"].startswith("bulk/")
print(n)')
  local suppressed; suppressed=$(journalctl -b -u systemd-journald -o cat --no-pager | grep -F "Suppressed" | grep -F "$U" | tail -1)
  [ "$kept" = "$BULK" ] || why "$kept of $BULK file_mirrored lines in the journal; journald: ${suppressed:-no Suppressed line}" || return
  [ -z "$suppressed" ] || why "journald suppressed lines: $suppressed" || return
  DETAIL="$prios; $kept of $BULK file_mirrored lines kept, catch-up $(elapsed "$t0" "$t1")s; journal $usage0 → $(journalctl --disk-usage 2>&1 | grep -oE '[0-9.]+[KMG]' | head -1); $(since "$cur" $U | jsel event=sync_finished folder=photos | cut -c1-200)"
  # The bulk tree out of the way of the later checks, while the service is stopped.
  systemctl stop $U && rm -rf /srv/inbox/photos/bulk /srv/mirror/photos/bulk && systemctl start $U \
    || why "could not remove the bulk tree: $(unit_tail $U)" || return
}

# ---- 8. watchdog: a stopped main loop is killed and restarted -----------------------------------
# A runtime drop-in shortens WatchdogSec to WD for the whole run (TCG is slow: leave slack). It
# is written before the README's daemon-reload in check 2: changed later, systemd would apply
# the shorter limit at once to a daemon still pinging at half the old one. So every check runs
# with a daemon that has to keep pinging every WD/2 seconds, under load too.
WD=10
watchdog_dropin() {
  mkdir -p /run/systemd/system/$U.service.d
  printf '[Service]\nWatchdogSec=%ss\n' $WD > /run/systemd/system/$U.service.d/watchdog.conf
}
check_watchdog() {
  [ "$(prop $U WatchdogUSec)" = "${WD}s" ] || why "WatchdogUSec=$(prop $U WatchdogUSec)" || return
  [ "$(systemctl is-active $U)" = active ] || why "not active: $(unit_tail $U)" || return
  local pid n0 cur up; pid=$(prop $U MainPID); n0=$(prop $U NRestarts)
  main_pid_ok "$pid" || return
  # Positive control: healthy, the daemon's pings keep it alive well past WatchdogSec.
  up=$(awk -v e="$(prop $U ActiveEnterTimestampMonotonic)" '{printf "%d", $1 - e / 1e6}' /proc/uptime)
  [ "$up" -ge $((WD + 5)) ] || sleep $((WD + 5 - up))  # sleep-ok: the watchdog must NOT fire while healthy
  [ "$(prop $U MainPID)" = "$pid" ] && [ "$(prop $U NRestarts)" = "$n0" ] && [ "$(systemctl is-active $U)" = active ] \
    || why "killed although healthy: $(unit_tail $U 6)" || return
  up=$(awk -v e="$(prop $U ActiveEnterTimestampMonotonic)" '{printf "%d", $1 - e / 1e6}' /proc/uptime)
  cur=$(mark $U)
  local t0; t0=$(date +%s.%N)
  kill -STOP "$pid"
  wait_eval $((WD * 4)) 'since "$cur" $U | grep -q "Watchdog timeout"' \
    || { kill -CONT "$pid"; why "no watchdog timeout $((WD * 4))s after SIGSTOP: $(unit_tail $U)"; return; }
  local t_wd after
  t_wd=$(journalctl -b -u $U -o short-unix --no-pager --after-cursor="$cur" | grep 'Watchdog timeout' | head -1 | cut -d' ' -f1)
  after=$(elapsed "$t0" "$t_wd")
  awk -v a="$after" -v w=$WD 'BEGIN{exit !(a <= w + 8)}' || why "watchdog fired ${after}s after SIGSTOP (WatchdogSec=${WD}s + 8s slack)" || return
  wait_eval 60 '[ "$(systemctl is-active $U)" = active ] && [ "$(prop $U NRestarts)" -gt '"$n0"' ]' \
    || why "not restarted after the watchdog kill: $(unit_tail $U)" || return
  since "$cur" $U | grep -q "Failed with result 'watchdog'" || why "no Failed with result 'watchdog'" || return
  ! kill -0 "$pid" 2>/dev/null || why "the stopped process $pid is still there" || return
  [ "$(prop $U MainPID)" != "$pid" ] || why "same MainPID" || return
  DETAIL="healthy for ${up}s with WatchdogSec=${WD}s, then SIGSTOP: Watchdog timeout after ${after}s, restarted as pid $(prop $U MainPID)"
}

# ---- 9. foldermirror@docs beside foldermirror ------------------------------------------------
check_instance() {
  install -d -m 0755 /srv/inbox/docs
  printf 'folders:\n  - name: docs\n    source: /srv/inbox/docs\n    target: /srv/mirror/docs\n' > /etc/foldermirror/docs.yaml
  # README: "foldermirror@.service.d applies to every instance"
  mkdir -p /etc/systemd/system/foldermirror@.service.d
  cp /etc/systemd/system/foldermirror.service.d/targets.conf /etc/systemd/system/foldermirror@.service.d/
  systemctl daemon-reload
  systemctl start foldermirror@docs || why "start failed: $(unit_tail foldermirror@docs)" || return
  [ "$(systemctl is-active foldermirror@docs)" = active ] && [ "$(systemctl is-active $U)" = active ] \
    || why "not both active" || return
  [ "$(prop foldermirror@docs MainPID)" != "$(prop $U MainPID)" ] || why "same MainPID" || return
  prop foldermirror@docs ExecStart | grep -q -- '--config /etc/foldermirror/docs.yaml' || why "ExecStart lacks docs.yaml" || return
  wait_eval 30 '[[ "$(prop foldermirror@docs StatusText)" == "watching 1 folder, "* ]]' \
    || why "StatusText=$(prop foldermirror@docs StatusText)" || return
  echo "a document" > /srv/inbox/docs/d.txt
  echo "a photo" > /srv/inbox/photos/p2.txt
  wait_until 30 same /srv/inbox/docs/d.txt /srv/mirror/docs/d.txt || why "docs/d.txt not mirrored" || return
  wait_until 30 same /srv/inbox/photos/p2.txt /srv/mirror/photos/p2.txt || why "photos/p2.txt not mirrored" || return
  wait_eval 15 'has_event foldermirror@docs event=file_mirrored folder=docs path=d.txt' || why "no file_mirrored in foldermirror@docs's journal" || return
  ! has_event $U event=file_mirrored folder=docs || why "docs logged by the main unit" || return
  DETAIL="pids $(prop $U MainPID) and $(prop foldermirror@docs MainPID); status \"$(prop foldermirror@docs StatusText)\""
}

# ---- 10. stop: within TimeoutStopSec, exit 0, no temp files ----------------------------------
check_stop() {
  local pid cur t0 t1 took tss
  tss=$(prop $U TimeoutStopUSec)
  # Work pending and in flight when the stop comes: a burst of small files, then a big one.
  for i in $(seq 1 200); do echo "$i" > /srv/inbox/documents/small-$i.txt; done
  head -c 24M /dev/urandom > /srv/inbox/photos/big.bin
  pid=$(prop $U MainPID); cur=$(mark $U)
  t0=$(date +%s.%N)
  systemctl stop $U || why "systemctl stop failed" || return
  t1=$(date +%s.%N); took=$(elapsed "$t0" "$t1")
  awk -v a="$took" 'BEGIN{exit !(a < 30)}' || why "stop took ${took}s (TimeoutStopSec=$tss)" || return
  [ "$(prop $U Result)" = success ] && [ "$(prop $U ExecMainStatus)" = 0 ] && [ "$(prop $U ExecMainCode)" = 1 ] \
    || why "Result=$(prop $U Result) ExecMainCode=$(prop $U ExecMainCode) ExecMainStatus=$(prop $U ExecMainStatus)" || return
  since "$cur" $U | jsel event=daemon_stopped >/dev/null || why "no daemon_stopped line: $(unit_tail $U)" || return
  ! since "$cur" $U | grep -qE 'SIGKILL|Killing process' || why "systemd had to kill leftovers: $(since "$cur" $U | grep -E 'SIGKILL|Killing' | head -2)" || return
  systemctl stop foldermirror@docs || why "stopping foldermirror@docs failed" || return
  [ "$(prop foldermirror@docs Result)" = success ] || why "foldermirror@docs Result=$(prop foldermirror@docs Result)" || return
  [ -z "$(temp_files)" ] || why "temp files left: $(temp_files | head -3)" || return
  ! pgrep -u foldermirror >/dev/null || why "processes left: $(pgrep -a -u foldermirror | head -3)" || return
  local res; res=$(all_json $U) || why "$res" || return   # the whole run so far, kills included
  DETAIL="stopped in ${took}s (TimeoutStopSec=$tss); $(since "$cur" $U | jsel event=daemon_stopped | cut -c1-220); $res"
}

# ---- 7. broken config at start: exit 78 once, no restart -------------------------------------
check_broken_start() {
  local cur; cur=$(mark $U)
  printf 'folders:\n  - name: photos\n    source: /srv/inbox/photos\n    target: [unclosed\n' > "$WORK/bad-start.yaml"
  edit_config "$WORK/bad-start.yaml"
  ! systemctl start $U 2>/dev/null || why "systemctl start succeeded with a broken config" || return
  wait_eval 15 '[ "$(prop $U ActiveState)" = failed ]' || why "ActiveState=$(prop $U ActiveState)" || return
  sleep 8  # sleep-ok: RestartSec=5s plus slack; a restart would show up in NRestarts and the journal
  [ "$(prop $U ActiveState)" = failed ] && [ "$(prop $U NRestarts)" = 0 ] \
    || why "ActiveState=$(prop $U ActiveState) NRestarts=$(prop $U NRestarts)" || return
  [ "$(prop $U Result)" = exit-code ] && [ "$(prop $U ExecMainStatus)" = 78 ] \
    || why "Result=$(prop $U Result) ExecMainStatus=$(prop $U ExecMainStatus)" || return
  local exits; exits=$(since "$cur" $U | grep -c 'status=78/CONFIG')
  [ "$exits" = 1 ] || why "$exits exits with status 78 in the journal" || return
  ! since "$cur" $U | grep -q 'Scheduled restart job' || why "a restart was scheduled" || return
  local msg; msg=$(since "$cur" $U | grep -m1 'foldermirror: error:')
  grep -qF "$CFG:" <<<"$msg" || why "the error does not name $CFG:LINE: '$msg'" || return
  DETAIL="$msg"
}

# ---- 11.-13. a remote target over ssh: sshd on the guest's loopback, remote user mirror ---------
# The README's remote blocks set it up (the key, known_hosts, the remote user, the drop-in); the
# "remote host" is this guest, so the host key's fingerprint can be compared out of band for real.
RSRC=/srv/inbox/offsite
RDST=/home/mirror/copy
DROP=/etc/systemd/system/$U.service.d/remote-targets.conf
remote_config() {   # the local folder photos beside the remote one, offsite
  cat > "$1" <<YAML
ssh:
  identity_file: /etc/foldermirror/id_ed25519
  known_hosts: /etc/foldermirror/known_hosts
  retry_min: 1s
  retry_max: 4s
folders:
  - name: photos
    source: /srv/inbox/photos
    target: /srv/mirror/photos
  - name: offsite
    source: $RSRC
    target: ssh://mirror@127.0.0.1$RDST
    delete: true
YAML
}
# folder_field NAME KEY[.KEY]: one field of the folder in `foldermirror status --json`
folder_field() {
  "$BIN" status --json 2>/dev/null | python3 -c '
import json, sys
f = next(f for f in json.load(sys.stdin)["folders"] if f["name"] == sys.argv[1])
for k in sys.argv[2].split("."):
    f = f[k] if f is not None else None
print(f)' "$1" "$2"
}
in_step() { diff -r "$RSRC" "$RDST" >/dev/null 2>&1; }
field() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(" ".join(str(r.get(k)) for k in sys.argv[2:]))' "$@"; }
exposure() { systemd-analyze security --no-pager "$1" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'; }

check_remote_without_drop_in() {
  systemctl start ssh || why "systemctl start ssh failed" || return
  [ "$(systemctl is-active ssh)" = active ] || why "ssh.service is $(systemctl is-active ssh)" || return
  run_readme "Give the service a key" "HOST=backup.example.com=>HOST=127.0.0.1" || return
  # The README's out-of-band comparison; the host is this machine, so its own key file is at hand.
  local got want
  got=$(ssh-keygen -lf /tmp/host.keys | awk '{print $2}')
  want=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | awk '{print $2}')
  [ -n "$got" ] && [ "$got" = "$want" ] || why "keyscan fingerprint '$got' is not the host's '$want'" || return
  [ "$(stat -c '%U %a' /etc/foldermirror/id_ed25519)" = "foldermirror 600" ] \
    || why "private key is $(stat -c '%U %a' /etc/foldermirror/id_ed25519)" || return
  run_readme "On the remote host" 'KEY=$(cat id_ed25519.pub)=>KEY=$(cat /etc/foldermirror/id_ed25519.pub)' || return
  [ "$(getent passwd mirror | cut -d: -f7)" = /bin/sh ] || why "mirror's shell: $(getent passwd mirror)" || return
  grep -q '^restrict ssh-ed25519 ' /home/mirror/.ssh/authorized_keys || why "authorized_keys lacks the restricted key" || return
  install -d -m 0755 "$RSRC"
  echo "there before the start" > "$RSRC/before.txt"
  remote_config "$WORK/remote.yaml"
  edit_config "$WORK/remote.yaml"
  # Outside the sandbox, as the service's user: check logs in and proves the remote side.
  runuser -u foldermirror -- "$BIN" check --config "$CFG" > "$WORK/check-remote.log" 2>&1 \
    || why "check as foldermirror failed: $(tail -3 "$WORK/check-remote.log" | tr '\n' ' ')" || return
  local verdict; verdict=$(grep '^folder offsite:' "$WORK/check-remote.log")
  grep -q 'remote rsync 3\.' <<<"$verdict" || why "check did not prove the remote side: $verdict" || return
  # The units alone (no drop-in): the service runs, its remote folder is remote_down, and the
  # line's fix names the drop-in.
  [ ! -e "$DROP" ] || why "$DROP already there" || return
  local cur; cur=$(mark $U)
  systemctl restart $U || why "restart failed: $(unit_tail $U)" || return
  wait_eval 60 'since "$cur" $U | jsel event=remote_down >/dev/null' \
    || why "no remote_down without the drop-in: $(unit_tail $U)" || return
  local down; down=$(since "$cur" $U | jsel event=remote_down | head -1)
  grep -qF 'systemd/remote-targets.conf' <<<"$down" || why "its fix does not name the drop-in: $down" || return
  [ "$(systemctl is-active $U)" = active ] || why "not active: $(unit_tail $U)" || return
  wait_eval 30 '[ "$(folder_field offsite state)" = remote_down ]' \
    || why "status shows offsite as $(folder_field offsite state)" || return
  [ ! -e "$RDST" ] || why "$RDST made without the network" || return
  DETAIL="$verdict; without the drop-in: remote_down $(field "$down" error); fix: $(field "$down" fix)"
}

check_remote() {
  run_readme "Remote targets" || return   # the drop-in, for both units
  [ -f "$DROP" ] && [ -f /etc/systemd/system/foldermirror@.service.d/remote-targets.conf ] \
    || why "the drop-in was not installed" || return
  local out; out=$(systemd-analyze verify /etc/systemd/system/$U.service /etc/systemd/system/foldermirror@.service 2>&1)
  [ $? = 0 ] && [ -z "$out" ] || why "systemd-analyze verify with the drop-in printed: $out" || return
  local cur t0 t1; cur=$(mark $U); t0=$(date +%s.%N)
  run_readme "Then name the target" || return   # check, daemon-reload, restart, status
  [ "$(prop $U PrivateNetwork)" = no ] && [[ "$(prop $U RestrictAddressFamilies)" == *AF_INET6* ]] \
    && [ -z "$(prop $U IPAddressDeny)" ] \
    || why "sandbox: PrivateNetwork=$(prop $U PrivateNetwork) RestrictAddressFamilies=$(prop $U RestrictAddressFamilies) IPAddressDeny=$(prop $U IPAddressDeny)" || return
  local sec; sec=$(exposure $U)
  awk -v e="$sec" 'BEGIN{exit !(e != "" && e <= 2.0)}' || why "exposure with the drop-in is '$sec' (README: 2.0 or less)" || return
  wait_eval 60 'since "$cur" $U | jsel event=remote_up >/dev/null' || why "no remote_up: $(unit_tail $U 6)" || return
  local up; up=$(since "$cur" $U | jsel event=remote_up | head -1)
  wait_until 60 in_step || why "the start-up catch-up did not land: $(diff -r "$RSRC" "$RDST" 2>&1 | head -3 | tr '\n' ' ')" || return
  # Live: new files, a folder, a bigger file; then a rename and a deletion (delete: true).
  mkdir -p "$RSRC/sub"
  for i in 1 2 3 4 5; do echo "file $i" > "$RSRC/sub/f$i.txt"; done
  head -c 1M /dev/urandom > "$RSRC/big.bin"; chmod 640 "$RSRC/big.bin"; chgrp foldermirror "$RSRC/big.bin"
  wait_until 60 in_step || why "not mirrored within 60s: $(diff -r "$RSRC" "$RDST" 2>&1 | head -3 | tr '\n' ' ')" || return
  mv "$RSRC/sub/f1.txt" "$RSRC/renamed.txt"; rm "$RSRC/before.txt"
  wait_until 60 in_step || why "rename/deletion not mirrored within 60s: $(diff -r "$RSRC" "$RDST" 2>&1 | head -3 | tr '\n' ' ')" || return
  t1=$(date +%s.%N)
  same "$RSRC/big.bin" "$RDST/big.bin" || why "big.bin: mode or mtime differ" || return
  [ "$(stat -c %U "$RDST/big.bin")" = mirror ] || why "the remote copy is not mirror's" || return
  [ -z "$(find "$RDST" -name '.*')" ] || why "temp files left: $(find "$RDST" -name '.*' | head -3)" || return
  wait_eval 30 '[ "$(folder_field offsite state)" = in_sync ] && [ "$(folder_field offsite link.state)" = up ]' \
    || why "status: offsite $(folder_field offsite state), link $(folder_field offsite link.state)" || return
  "$BIN" status > "$WORK/status-remote.txt" 2>&1
  grep -qE '^offsite +in sync ' "$WORK/status-remote.txt" && grep -qF 'offsite: host mirror@127.0.0.1 up' "$WORK/status-remote.txt" \
    || why "foldermirror status: $(tr '\n' ' ' < "$WORK/status-remote.txt")" || return
  # The ssh master: the main process's child (through setpriv), in the unit's cgroup.
  local main mpid; main=$(prop $U MainPID); mpid=$(pgrep -P "$main" -f '^ssh -N -M' | head -1)
  [ -n "$mpid" ] || why "no ssh master among the children of $main: $(pgrep -a -P "$main" | tr '\n' ' ')" || return
  grep -q "/system.slice/$U.service" "/proc/$mpid/cgroup" || why "the master is not in the unit's cgroup: $(cat "/proc/$mpid/cgroup")" || return
  ! since "$cur" $U | jsel event=remote_down >/dev/null || why "remote_down with the drop-in: $(since "$cur" $U | jsel event=remote_down | head -1)" || return
  ! since "$cur" $U | jsel level=error >/dev/null || why "errors: $(since "$cur" $U | jsel level=error | head -2)" || return
  DETAIL="exposure $sec (systemd-analyze security of the loaded unit); remote_up rtt $(field "$up" rtt_ms) ms; restart to in step $(elapsed "$t0" "$t1")s; $(grep '^offsite' "$WORK/status-remote.txt" | tr -s ' ')"
}

# The drop-in's comment: keep IPAddressDeny=any and allow the targets' addresses only. With the
# right address the link comes up; with another one it is down, and the fix says where to look.
# The service is stopped while the list changes: daemon-reload applies it to a running unit at
# once, and the FIN of its open ssh connection, dropped then, would leave the session behind on
# the remote side (seen here: an `sshd: mirror@notty` that outlived the service).
allow_list() {   # allow_list ADDRESS: stop, the drop-in with its IPAddressDeny= line so replaced, start
  systemctl stop $U || return
  sed "s/^IPAddressDeny=\$/IPAddressDeny=any\nIPAddressAllow=$1/" "$CHECKOUT/systemd/remote-targets.conf" > "$DROP"
  grep -qx "IPAddressAllow=$1" "$DROP" && systemctl daemon-reload && systemctl start $U
}
check_remote_allow_list() {
  local cur; cur=$(mark $U)
  allow_list 127.0.0.1 || why "could not restart with IPAddressAllow=127.0.0.1: $(unit_tail $U)" || return
  [ -n "$(prop $U IPAddressDeny)" ] && [[ "$(prop $U IPAddressAllow)" == *127.0.0.1* ]] \
    || why "IPAddressDeny=$(prop $U IPAddressDeny) IPAddressAllow=$(prop $U IPAddressAllow)" || return
  wait_eval 60 'since "$cur" $U | jsel event=remote_up >/dev/null' || why "no remote_up with IPAddressAllow=127.0.0.1: $(unit_tail $U 6)" || return
  echo "through the allow list" > "$RSRC/allowed.txt"
  wait_until 60 in_step || why "not mirrored with IPAddressAllow=127.0.0.1" || return
  local sec; sec=$(exposure $U)
  cur=$(mark $U)
  allow_list 192.0.2.10 || why "could not restart with IPAddressAllow=192.0.2.10: $(unit_tail $U)" || return
  wait_eval 60 'since "$cur" $U | jsel event=remote_down >/dev/null' || why "no remote_down with IPAddressAllow=192.0.2.10: $(unit_tail $U 6)" || return
  # IPAddressDeny= drops the packets (loopback's too): the connection times out, as to a host
  # that is off, after connect_timeout (10s); the fix names the allow list among the causes.
  local down; down=$(since "$cur" $U | jsel event=remote_down | head -1)
  grep -qF 'Connection timed out' <<<"$down" && grep -qF 'IPAddressAllow' <<<"$down" \
    || why "not a timeout whose fix names the allow list: $down" || return
  # Stop, then back to the drop-in as shipped: no ssh left behind, here or on the remote side.
  systemctl stop $U || why "stop failed" || return
  [ "$(prop $U Result)" = success ] || why "Result=$(prop $U Result)" || return
  install -m 0644 "$CHECKOUT/systemd/remote-targets.conf" "$DROP" && systemctl daemon-reload
  wait_eval 10 '! pgrep -u foldermirror >/dev/null && ! pgrep -u mirror >/dev/null' \
    || why "left running: $(pgrep -a -u foldermirror; pgrep -a -u mirror)" || return
  DETAIL="IPAddressAllow=127.0.0.1: mirrored, exposure $sec; IPAddressAllow=192.0.2.10: remote_down $(field "$down" error)"
}

# The guest image keeps its journal in memory and raises journald's rate limit (sdvm's own
# journald drop-in). A Debian 12 host as installed has neither, so journald's defaults are put
# back first: the units' LogRateLimit*= and the README's journal advice are then what check 14
# tests, not the image's settings.
journald_as_debian() {
  printf '[Journal]\nStorage=auto\nRateLimitIntervalSec=30s\nRateLimitBurst=10000\n' \
    > /etc/systemd/journald.conf.d/zz-debian-defaults.conf && systemctl restart systemd-journald
}

log_step "foldermirror e2e: $(systemctl --version | head -1), $(python3 --version)"
journald_as_debian || log_step "could not restore journald's defaults"
run_check 01-install-as-readme-and-verify check_install || exit 1
watchdog_dropin
run_check 02-notify-ready-and-status check_start
run_check 03-mirror-and-journal-json check_mirror
run_check 04-reload-add-folder-and-broken-yaml check_reload
run_check 05-sandbox-targets-and-readwritepaths check_sandbox
run_check 06-kill9-restart-and-catch-up check_kill9
run_check 14-journal-priorities-and-rate-limit check_journal
run_check 09-instance-docs-beside-main check_instance
run_check 08-watchdog-kill-and-restart check_watchdog
run_check 10-stop-clean-no-temp-files check_stop
run_check 07-broken-config-exit-78-no-restart check_broken_start
run_check 11-remote-target-without-drop-in-fails-clearly check_remote_without_drop_in \
  && run_check 12-remote-target-over-ssh-with-drop-in check_remote \
  && run_check 13-remote-target-ip-allow-list check_remote_allow_list
journal $U > "$SDVM_OUT/foldermirror-journal.txt"
journal foldermirror@docs > "$SDVM_OUT/foldermirror-docs-journal.txt"
journalctl -b -u ssh -o cat --no-pager > "$SDVM_OUT/sshd-journal.txt"
cp "$WORK"/*.log "$SDVM_OUT/" 2>/dev/null
exit 0
