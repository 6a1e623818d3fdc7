#!/usr/bin/env bash
# Live migration benchmark: two ferryd nodes on this machine, components moved between them over
# loopback, ferry's figures printed beside references measured in the same run.
#
# Usage: bench/migrate.sh BUILD_DIR      (as root; `make bench` runs it after bench/incr.sh)
# Environment:
#   SIZE          MiB of the large component (default 1024; the targets are judged on 1024)
#   RATES         MB/s (10^6 bytes of 4 KiB pages a second) it dirties (default "0 50 200")
#   REPEATS       counted migrations per configuration, after a warm-up one (default 3)
#   MODES         modes measured (default "precopy postcopy stop-and-copy"); when postcopy is
#                 not among them it is tried once per component (recorded as refused if ferry
#                 refuses it)
#   MAX_DOWNTIME  --max-downtime of the pre-copy migrations, ms (default 20, ferry's default)
#   SETTLE        seconds the component runs at its destination before the next migration
#                 (default 2)
#   OUT           the generated report (default docs/performance-migration.md)
#   KEEP_RESULTS  a directory to copy the raw results into (JSON, logs), for a closer look
#
# Two nodes, A and B, each a ferryd with its own state directory on /dev/shm, listen on free
# loopback ports and share a cluster key made for the run. For each component (demo-counter, a
# few MiB: the fixed costs; then bench-dirtier in pace mode, SIZE MiB dirtied at each of RATES)
# and each mode: a warm-up migration and REPEATS counted ones of the same component, back and
# forth (A -> B, B -> A, A -> B, ...), SETTLE seconds apart. After every migration both nodes
# are asked (ferry ps --json) where the component runs: exactly one running copy, at the
# destination (at the source if the migration failed), the source's process gone, and new
# output from it at its node; anything else aborts the bench. A migration that fails is
# recorded with ferry's stderr and both ferryd logs, and the rest of that configuration is
# skipped. Finally bench-dirtier checks every word of its memory (PASS/FAIL) and demo-counter's
# own checksum line is read. bench/migrate_report.py prints the tables and rewrites OUT.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 BUILD_DIR" >&2
	exit 2
fi
[ -d "$1" ] || { echo "bench: no build directory '$1'" >&2; exit 2; }
BUILD=$(cd "$1" && pwd)
TOP=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-1024}
RATES=${RATES:-"0 50 200"}
REPEATS=${REPEATS:-3}
MODES=${MODES:-"precopy postcopy stop-and-copy"}
MAX_DOWNTIME=${MAX_DOWNTIME:-20}
SETTLE=${SETTLE:-2}
OUT=${OUT:-$TOP/docs/performance-migration.md}
READY_TIMEOUT=120 # s; the very first touch of 1 GiB on a fresh VM takes several seconds
PACE_PERIOD_MS=1000

if [ "$(id -u)" != 0 ]; then
	echo "bench: run as root (ferry needs ptrace, namespaces, cgroups and set_tid)" >&2
	exit 1
fi
for b in "$BUILD/ferry" "$BUILD/ferryd" "$BUILD/demo-counter" "$BUILD/bench/bench-floor" \
	"$BUILD/bench/bench-memhog" "$BUILD/bench/bench-dirtier"; do
	[ -x "$b" ] || { echo "bench: $b not built (make build)" >&2; exit 1; }
done
for n in $SIZE $REPEATS $MAX_DOWNTIME $SETTLE; do
	[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: '$n' is not a positive number" >&2; exit 2; }
done
for n in $RATES; do
	[[ "$n" =~ ^[0-9]+$ ]] || { echo "bench: rate '$n' is not a number" >&2; exit 2; }
done
for m in $MODES; do
	case "$m" in
	precopy | postcopy | stop-and-copy) ;;
	*) echo "bench: mode '$m': MODES takes precopy, postcopy and stop-and-copy" >&2; exit 2 ;;
	esac
done

# What this script started, ended by it alone: the two ferryd by pid, components through ferry.
FERRYD_PIDS=""
STARTED=""  # component names
WORK=""
GODIR=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local n node p
	for n in $STARTED; do
		for node in a b; do
			FERRY_STATE_DIR=$WORK/$node "$FERRY" kill "$n" >/dev/null 2>&1 || true
		done
	done
	for p in $FERRYD_PIDS; do
		kill "$p" 2>/dev/null || true
	done
	for p in $FERRYD_PIDS; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf ${WORK:+"$WORK"} ${GODIR:+"$GODIR"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Everything on tmpfs (/tmp is a slow disk here): node state, the links the nodes exchange.
WORK=$(mktemp -d /dev/shm/ferry-bench-mig.XXXXXX)
# the files the components look for to check their memory: where their mounts surely see them
GODIR=$(mktemp -d /tmp/ferry-bench-mig-go.XXXXXX)
RES=$WORK/results
mkdir "$RES"

# The run uses copies of the programs taken now: a rebuild in the same tree during the run
# cannot mix two versions of ferry in one set of figures, nor pull a binary from under a node.
mkdir "$WORK/bin"
cp "$BUILD/ferry" "$BUILD/ferryd" "$BUILD/demo-counter" "$BUILD/bench/bench-floor" \
	"$BUILD/bench/bench-memhog" "$BUILD/bench/bench-dirtier" "$WORK/bin/"
[ ! -x "$BUILD/tests/test-channel" ] || cp "$BUILD/tests/test-channel" "$WORK/bin/"
FERRY=$WORK/bin/ferry
FERRYD=$WORK/bin/ferryd
COUNTER=$WORK/bin/demo-counter
FLOOR=$WORK/bin/bench-floor
HOG=$WORK/bin/bench-memhog
DIRTIER=$WORK/bin/bench-dirtier
SRC=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["directories"]["source"])' \
	"$BUILD/meson-info/meson-info.json" 2>/dev/null) || SRC=""
{
	echo "$("$FERRY" --version 2>/dev/null || echo 'ferry ?') (sha256 $(sha256sum "$FERRY" | cut -c1-12), ferryd $(sha256sum "$FERRYD" | cut -c1-12))"
	if [ -n "$SRC" ] && git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
		dirty=$(git -C "$SRC" status --porcelain -- src include meson.build | awk '{print $2}' | tr '\n' ' ')
		if [ -n "$dirty" ]; then
			dirty="uncommitted changes in ${dirty% }"
		else
			dirty="no uncommitted changes in src, include, meson.build"
		fi
		echo "built from $SRC at commit $(git -C "$SRC" rev-parse --short HEAD), $dirty"
	fi
} >"$RES/source.txt"

LOADAVG_START=$(cat /proc/loadavg)
if awk -v n="$(nproc)" '{ exit !($1 > n / 2) }' /proc/loadavg; then
	echo "bench: load average ${LOADAVG_START%% *} on $(nproc) CPUs: other work will disturb the figures" >&2
fi

die() {
	echo "bench: $*" >&2
	echo "$*" >>"$RES/abort.txt"
	[ -z "${KEEP_RESULTS:-}" ] || { mkdir -p "$KEEP_RESULTS"; cp -r "$RES"/. "$KEEP_RESULTS"/; }
	exit 1
}

# ---- the two nodes ----
"$FERRYD" --gen-key "$WORK/key" >/dev/null
declare -A PORT=()
declare -A NODE=([a]=A [b]=B)
declare -A OTHER=([a]=b [b]=a)
# start_node NODE: ferryd on a free loopback port (one the kernel picks for a bound socket,
# closed just before; if something else takes it meanwhile, another one)
start_node() {
	local node=$1 pid
	for _ in 1 2 3 4 5; do
		PORT[$node]=$(python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
		"$FERRYD" --node "${NODE[$node]}" --listen "127.0.0.1:${PORT[$node]}" --key "$WORK/key" \
			--state-dir "$WORK/$node" 2>"$WORK/ferryd-$node.log" &
		pid=$!
		for _ in $(seq 100); do
			[ -S "$WORK/$node/ferryd.sock" ] && grep -q listening "$WORK/ferryd-$node.log" && break
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.05
		done
		if kill -0 "$pid" 2>/dev/null && [ -S "$WORK/$node/ferryd.sock" ]; then
			FERRYD_PIDS="$FERRYD_PIDS $pid"
			return 0
		fi
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid"
			wait "$pid" 2>/dev/null || true
		else
			wait "$pid" 2>/dev/null || true
		fi
		grep -q 'in use' "$WORK/ferryd-$node.log" || break
	done
	die "ferryd ${NODE[$node]} did not start: $(cat "$WORK/ferryd-$node.log")"
}
start_node a
start_node b
PORT_A=${PORT[a]}
PORT_B=${PORT[b]}
echo "bench: nodes A (127.0.0.1:$PORT_A) and B (127.0.0.1:$PORT_B), state in $WORK"

on() { # NODE CMD...: run ferry against that node's state
	local node=$1
	shift
	FERRY_STATE_DIR=$WORK/$node "$FERRY" "$@"
}

# where NAME: "a PID", "b PID" if it runs on exactly one node (state running, process alive);
# else prints what both nodes say and returns 1.
where() {
	local name=$1 node out found="" count=0 desc=""
	for node in a b; do
		out=$(on "$node" ps --json 2>&1) || { desc="$desc ${NODE[$node]}: ps failed: $out;"; count=99; continue; }
		local pids
		pids=$(python3 -c '
import json, sys
for c in json.loads(sys.argv[1]):
    if c.get("name") == sys.argv[2]:
        print(c.get("state"), c.get("pid"))' "$out" "$name") || pids="unparsable"
		desc="$desc ${NODE[$node]}: [${pids//$'\n'/, }];"
		while read -r state pid; do
			[ -n "${state:-}" ] || continue
			if [ "$state" = running ] && kill -0 "$pid" 2>/dev/null; then
				count=$((count + 1))
				found="$node $pid"
			elif [ "$state" = running ]; then
				count=99 # listed as running, but no such process
			fi
		done <<<"$pids"
	done
	if [ "$count" = 1 ]; then
		echo "$found"
		return 0
	fi
	echo "$name:$desc"
	return 1
}

# gone PID: the process has ended (or is a zombie) within 5 s
gone() {
	local st
	for _ in $(seq 100); do
		st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
		[ "$st" = Z ] && return 0
		sleep 0.05
	done
	return 1
}

# count_log NODE NAME REGEX: lines of NAME's log matching REGEX
count_log() {
	local n
	n=$(on "$1" logs "$2" 2>/dev/null | grep -cE "$3") || true
	echo "${n:-0}"
}

# wait_more NODE NAME REGEX N TIMEOUT_S: until NAME's log has more than N lines matching REGEX
wait_more() {
	local deadline=$((SECONDS + $5))
	while [ "$SECONDS" -lt "$deadline" ]; do
		[ "$(count_log "$1" "$2" "$3")" -gt "$4" ] && return 0
		sleep 0.1
	done
	return 1
}

# wait_log NODE NAME REGEX TIMEOUT_S: print the first line of NAME's log matching REGEX
wait_log() {
	local deadline=$((SECONDS + $4)) line
	while [ "$SECONDS" -lt "$deadline" ]; do
		line=$(on "$1" logs "$2" 2>/dev/null | grep -E -m1 "$3") || true
		if [ -n "$line" ]; then
			echo "$line"
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# field FILE KEY: a value from a --json answer (for the progress lines only)
field() {
	python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2], "?"); print(f"{v:.1f}" if isinstance(v, float) else v)' "$1" "$2"
}

# capture FILE WHAT STDERR OFFA OFFB: a failure with ferry's stderr and what both ferryd logged
# since the migration started
capture() {
	local f=$1 node
	{
		echo "$2"
		echo "--- ferry stderr:"
		cat "$3"
		for node in a b; do
			echo "--- ferryd ${NODE[$node]} log since the migration started:"
			local off=$4
			[ "$node" = b ] && off=$5
			tail -c +"$((off + 1))" "$WORK/ferryd-$node.log"
		done
		echo "--- ps: $(where "$NAME_NOW" || true)"
	} >"$f"
	echo "bench: $2 (details in the report)" >&2
	sed 's/^/    /' "$f" >&2
}

LOC=""      # node the current component runs on
LOC_PID=""  # its pid there
NAME_NOW="" # the current component
ALIVE_RE="" # a line the component prints regularly

# migrate TAG MODE I: move the current component to the other node; 1 if the migration failed
# (the component still runs at the source); aborts on anything but exactly one copy.
migrate() {
	local tag=$1 mode=$2 i=$3 from=$LOC to=${OTHER[$LOC]} rc=0 out seen
	local json=$RES/mig-$tag-$mode-$i.json errf=$WORK/migrate.stderr
	local offa offb old_pid=$LOC_PID
	offa=$(stat -c %s "$WORK/ferryd-a.log")
	offb=$(stat -c %s "$WORK/ferryd-b.log")
	on "$from" migrate "$NAME_NOW" --to "127.0.0.1:${PORT[$to]}" --mode "$mode" \
		--max-downtime "$MAX_DOWNTIME" --json >"$json" 2>"$errf" || rc=$?
	echo "${NODE[$from]}>${NODE[$to]}" >"$RES/mig-$tag-$mode-$i.dir"
	if [ "$rc" != 0 ]; then
		rm -f "$json"
		capture "$RES/error-$tag-$mode.txt" \
			"$tag $mode migration $i ${NODE[$from]} -> ${NODE[$to]} failed (exit $rc)" \
			"$errf" "$offa" "$offb"
		out=$(where "$NAME_NOW") || die "after a failed migration of $NAME_NOW: not exactly one running copy: $out"
		[ "${out%% *}" = "$from" ] || die "after a failed migration of $NAME_NOW: it runs at ${NODE[${out%% *}]}, not at the source"
		return 1
	fi
	out=$(where "$NAME_NOW") || die "after migrating $NAME_NOW ($tag $mode $i) ${NODE[$from]} -> ${NODE[$to]}: not exactly one running copy: $out"
	[ "${out%% *}" = "$to" ] ||
		die "after migrating $NAME_NOW ($tag $mode $i) ${NODE[$from]} -> ${NODE[$to]}: it runs at ${NODE[${out%% *}]}"
	gone "$old_pid" || die "after migrating $NAME_NOW ($tag $mode $i): the source's process $old_pid still runs at ${NODE[$from]}"
	LOC=$to
	LOC_PID=${out#* }
	# it runs there: output it printed after the migration, then SETTLE seconds before anything
	seen=$(count_log "$to" "$NAME_NOW" "$ALIVE_RE")
	wait_more "$to" "$NAME_NOW" "$ALIVE_RE" "$seen" 15 ||
		die "after migrating $NAME_NOW ($tag $mode $i): no new output from it at ${NODE[$to]} within 15 s"
	printf '  %-14s %-13s %-7s %s  downtime %7s ms  restore %7s ms  total %8s ms  setup %5s ms  rounds %s  %s MiB  dirty %s B/s\n' \
		"$tag" "$mode" "$([ "$i" = 0 ] && echo warm-up || echo "#$i")" "${NODE[$from]}>${NODE[$to]}" \
		"$(field "$json" downtime_ms)" "$(field "$json" restore_ms)" "$(field "$json" total_ms)" \
		"$(field "$json" setup_ms)" "$(field "$json" rounds)" \
		"$(python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["bytes_total"] / 2**20))' "$json")" \
		"$(field "$json" dirty_rate)"
	sleep "$SETTLE"
	return 0
}

# postcopy TAG: ask for a post-copy migration once; refused (not implemented) is recorded as such
postcopy() {
	local tag=$1 from=$LOC to=${OTHER[$LOC]} rc=0 out
	on "$from" migrate "$NAME_NOW" --to "127.0.0.1:${PORT[$to]}" --mode postcopy --json \
		>"$RES/postcopy-$tag.json" 2>"$RES/postcopy-$tag.stderr" || rc=$?
	echo "$rc" >"$RES/postcopy-$tag.rc"
	out=$(where "$NAME_NOW") || die "after the post-copy request for $NAME_NOW: not exactly one running copy: $out"
	if [ "$rc" = 0 ]; then
		[ "${out%% *}" = "$to" ] || die "post-copy of $NAME_NOW succeeded but it runs at ${NODE[${out%% *}]}"
		LOC=$to
		LOC_PID=${out#* }
		echo "  $tag postcopy: migrated (downtime $(field "$RES/postcopy-$tag.json" downtime_ms) ms)"
		sleep "$SETTLE"
	else
		[ "${out%% *}" = "$from" ] || die "refused post-copy of $NAME_NOW, but it runs at ${NODE[${out%% *}]}"
		echo "  $tag postcopy: refused: $(tail -n 1 "$RES/postcopy-$tag.stderr")"
	fi
}

# start TAG NAME REGEX CMD...: run a component on A, wait until its log matches REGEX
start() {
	local tag=$1 name=$2 re=$3 out
	shift 3
	STARTED="$STARTED $name"
	on a run --name "$name" -- "$@" >/dev/null 2>"$WORK/run.stderr" ||
		die "$tag: ferry run failed: $(cat "$WORK/run.stderr")"
	wait_log a "$name" "$re" "$READY_TIMEOUT" >/dev/null ||
		die "$tag: no '$re' from $name within $READY_TIMEOUT s: $(on a logs "$name" 2>&1 | tail -n 3)"
	out=$(where "$name") || die "$tag: after ferry run: $out"
	NAME_NOW=$name
	LOC=a
	LOC_PID=${out#* }
}

# measure TAG: every mode on the current component, then the post-copy request
measure() {
	local tag=$1 mode i
	for mode in $MODES; do
		for i in $(seq 0 "$REPEATS"); do
			migrate "$tag" "$mode" "$i" || break
		done
	done
	case " $MODES " in *" postcopy "*) ;; *) postcopy "$tag" ;; esac
}

# ---- references ----
# Memory this VM never touched costs 2-3 s/GiB the first time (machine-facts.md): touch enough
# once (the component, the links at the source and at the destination, the restored copy).
echo "bench: touching $((SIZE * 5)) MiB once so that no figure pays the VM's first touch"
"$HOG" "$((SIZE * 5))" --touch-only >/dev/null
echo "== references"
"$FLOOR" -r 3 "$SIZE" | tee "$RES/floor.txt"
if [ -x "$WORK/bin/test-channel" ]; then
	# the unit test's informational throughput lines: the channel alone over a socketpair
	"$WORK/bin/test-channel" >"$WORK/channel.out" 2>&1 || echo "bench: test-channel failed (its throughput lines are used anyway)" >&2
	grep -E '^# .*MB/s' "$WORK/channel.out" | tee "$RES/channel.txt" || true
fi

# ---- the small component: fixed costs ----
echo "== demo-counter"
start small mig-small 'checksum ok' "$COUNTER"
ALIVE_RE='^tick [0-9]+:'
measure small
on "$LOC" logs mig-small | grep -E '^tick' | tail -n 1 >"$RES/verify-small.txt" || true
grep -q 'checksum ok' "$RES/verify-small.txt" ||
	echo "bench: demo-counter after its migrations: $(cat "$RES/verify-small.txt")" >&2
echo "  demo-counter after its migrations: $(cat "$RES/verify-small.txt")"
awk '/^VmRSS/ {print $2}' "/proc/$LOC_PID/status" >"$RES/rss-small.txt" 2>/dev/null || true
on "$LOC" kill mig-small >/dev/null 2>&1 || true

# ---- SIZE MiB dirtied at each rate ----
for rate in $RATES; do
	tag=$SIZE-$rate
	name=mig-$SIZE-$rate
	echo "== $SIZE MiB dirtied at $rate MB/s"
	go=$GODIR/go-$tag
	start "$tag" "$name" '^PACE seq=2 ' "$DIRTIER" -m pace "$SIZE" "$rate" "$PACE_PERIOD_MS" "$go"
	ALIVE_RE='^PACE seq='
	measure "$tag"
	on "$LOC" logs "$name" | grep '^PACE seq=' >"$RES/pace-$tag.txt" || true
	touch "$go"
	if line=$(wait_log "$LOC" "$name" '^(PASS|FAIL)' 120); then
		echo "$line" >"$RES/verify-$tag.txt"
	else
		echo "no PASS/FAIL from bench-dirtier within 120 s" >"$RES/verify-$tag.txt"
	fi
	echo "  memory after the migrations: $(cat "$RES/verify-$tag.txt")"
	on "$LOC" kill "$name" >/dev/null 2>&1 || true
done

echo
{
	date -u '+%Y-%m-%d %H:%M UTC'
	cat /proc/loadavg
} >"$RES/run.txt"
rc=0
python3 "$TOP/bench/migrate_report.py" --results "$RES" --out "$OUT" --size "$SIZE" \
	--rates "$RATES" --modes "$MODES" --repeats "$REPEATS" --max-downtime "$MAX_DOWNTIME" \
	--settle "$SETTLE" --loadavg-start "$LOADAVG_START" || rc=$?
if [ -n "${KEEP_RESULTS:-}" ]; then
	mkdir -p "$KEEP_RESULTS"
	cp -r "$RES"/. "$KEEP_RESULTS"/
	echo "raw results copied into $KEEP_RESULTS"
fi
exit "$rc"
