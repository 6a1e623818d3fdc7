#!/usr/bin/env bash
# Incremental checkpoint benchmark: what an incremental checkpoint of a known dirty fraction costs
# beside a full one of the same component, and what continuous checkpoints cost a program that
# writes memory. Every figure is printed beside references measured in the same run.
#
# Usage: bench/incr.sh BUILD_DIR      (as root; `make bench` runs it after bench/run.sh)
# Environment:
#   SIZES         component sizes in MiB (default 1024; the targets are judged on 1024)
#   ROUNDS        rounds after a warm-up, per fraction and for the full baseline (default 5)
#   FRACTIONS     dirty fractions of the step rounds, in permille (default "1 10 100")
#   RATE_SETS     working sets of the continuous-mode runs, in permille (default "1 10 100")
#   RATE_SECONDS  seconds of throughput samples per window (default 5)
#   RATE_CYCLES   continuous runs per working set, each followed by a window alone (default 3)
#   EVERY_MS      period of the continuous checkpoints in ms (default 100), KEEP (default 8)
#   OUT           the generated report (default docs/performance-incremental.md)
#   KEEP_RESULTS  a directory to copy the raw results into (JSON, samples), for a closer look
#
# For each size:
#   1. bench-floor: memcpy and process_vm_readv bandwidth, save and load floors (references).
#   2. bench-dirtier in step mode runs as a ferry component: a warm-up full checkpoint (it starts
#      dirty tracking), ROUNDS full checkpoints (the baseline), then for each fraction a warm-up
#      and ROUNDS rounds of "the component rewrites that fraction of its pages -> ferry
#      checkpoint --parent <previous image>", one chain from the last full checkpoint on.
#      Then ferry kill, ferry restore from the end of the chain, and the restored component
#      checks every word of its memory (PASS/FAIL).
#   3. For each working set: bench-dirtier in rate mode (a new component) writes one word per
#      page over that share of its pages, as fast as it can, and prints pages/s every second:
#      RATE_SECONDS alone; a full checkpoint into DIR; then RATE_CYCLES times `ferry checkpoint
#      --dir DIR --every EVERY_MS --keep KEEP` (incremental from the first one on) for about
#      RATE_SECONDS followed by RATE_SECONDS alone; ferry stats --json; a restore from DIR and
#      PASS/FAIL.
# bench/incr_report.py prints the tables and rewrites OUT.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 BUILD_DIR" >&2
	exit 2
fi
[ -d "$1" ] || { echo "bench: no build directory '$1'" >&2; exit 2; }
BUILD=$(cd "$1" && pwd)
TOP=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${SIZES:-1024}
ROUNDS=${ROUNDS:-5}
FRACTIONS=${FRACTIONS:-"1 10 100"}
RATE_SETS=${RATE_SETS:-"1 10 100"}
RATE_SECONDS=${RATE_SECONDS:-5}
RATE_CYCLES=${RATE_CYCLES:-3}
EVERY_MS=${EVERY_MS:-100}
KEEP=${KEEP:-8}
OUT=${OUT:-$TOP/docs/performance-incremental.md}
READY_TIMEOUT=120 # s; the very first touch of 1 GiB on a fresh VM takes several seconds
STEP_POLL_MS=1    # how often the step-mode component looks for its next step file

if [ "$(id -u)" != 0 ]; then
	echo "bench: run as root (ferry needs ptrace, namespaces and set_tid)" >&2
	exit 1
fi
for b in "$BUILD/ferry" "$BUILD/bench/bench-floor" "$BUILD/bench/bench-memhog" \
	"$BUILD/bench/bench-dirtier"; do
	[ -x "$b" ] || { echo "bench: $b not built (ninja -C $BUILD)" >&2; exit 1; }
done
for n in $SIZES $FRACTIONS $RATE_SETS $ROUNDS $RATE_SECONDS $RATE_CYCLES $EVERY_MS $KEEP; do
	[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: '$n' is not a positive number" >&2; exit 2; }
done

# Every component this script started is ended through ferry, never with a raw signal; the
# continuous checkpointer ends by itself (--count) or when its component is gone.
STARTED=""
EVERY_PID=""
WORK=""
IMGROOT=""
MOUNTED=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local n
	for n in $STARTED; do
		"$FERRY" kill "$n" >/dev/null 2>&1 || true
	done
	if [ -n "$EVERY_PID" ] && [ "$EVERY_PID" -gt 0 ]; then
		wait "$EVERY_PID" 2>/dev/null || true
	fi
	[ -z "$MOUNTED" ] || umount "$MOUNTED" 2>/dev/null || true
	rm -rf ${IMGROOT:+"$IMGROOT"} ${WORK:+"$WORK"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

WORK=$(mktemp -d /tmp/ferry-bench-incr.XXXXXX)
RES=$WORK/results
mkdir "$RES"
export FERRY_STATE_DIR=$WORK/state

# The run uses copies of the programs taken now: a rebuild in the same tree during the run (other
# work) cannot mix two versions of ferry in one set of figures.
mkdir "$WORK/bin"
cp "$BUILD/ferry" "$BUILD/bench/bench-floor" "$BUILD/bench/bench-memhog" \
	"$BUILD/bench/bench-dirtier" "$WORK/bin/"
FERRY=$WORK/bin/ferry
FLOOR=$WORK/bin/bench-floor
HOG=$WORK/bin/bench-memhog
DIRTIER=$WORK/bin/bench-dirtier
# what was measured: the binary, and the state of the tree BUILD was configured from
SRC=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["directories"]["source"])' \
	"$BUILD/meson-info/meson-info.json" 2>/dev/null) || SRC=""
{
	echo "$("$FERRY" --version 2>/dev/null || echo 'ferry ?') (sha256 $(sha256sum "$FERRY" | cut -c1-12))"
	if [ -n "$SRC" ] && git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
		dirty=$(git -C "$SRC" status --porcelain -- src include meson.build | awk '{print $2}' | tr '\n' ' ')
		echo "built from $SRC at commit $(git -C "$SRC" rev-parse --short HEAD), ${dirty:+uncommitted changes in ${dirty% }}${dirty:-no uncommitted changes in src, include, meson.build}"
	fi
} >"$RES/source.txt"

LOADAVG_START=$(cat /proc/loadavg)
if awk -v n="$(nproc)" '{ exit !($1 > n / 2) }' /proc/loadavg; then
	echo "bench: load average ${LOADAVG_START%% *} on $(nproc) CPUs: other work will disturb the figures" >&2
fi

max_mib=$(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -n 1)
# Images on tmpfs: /dev/shm, or a tmpfs of our own if /dev/shm cannot hold them (the component's
# full image twice, the chain's files, the continuous images: 4x the largest size is ample).
need_kib=$((max_mib * 4 * 1024))
if [ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')" -ge "$need_kib" ] 2>/dev/null; then
	IMGROOT=$(mktemp -d /dev/shm/ferry-bench-incr-img.XXXXXX)
else
	IMGROOT=$WORK/img
	mkdir "$IMGROOT"
	mount -t tmpfs -o "size=$((need_kib + 262144))k,mode=0700" ferry-bench-incr "$IMGROOT"
	MOUNTED=$IMGROOT
fi
echo "bench: images in $IMGROOT ($(df -h --output=fstype,size "$IMGROOT" | tail -n 1 | xargs))"

# Memory this VM never touched costs 2-3 s/GiB the first time (machine-facts.md): touch enough
# once (component, images, restored copy) so that no figure pays it.
echo "bench: touching $((max_mib * 4)) MiB once so that no figure pays the VM's first touch"
"$HOG" "$((max_mib * 4))" --touch-only >/dev/null

# note SIZE WHAT: record a failed stage (the first one is what the report shows).
note() {
	echo "$2" >>"$RES/error-$1.txt"
	echo "bench: $1 MiB: $2" >&2
}

# try SIZE STAGE OUTFILE CMD...: run CMD, stdout into OUTFILE; on failure record why, return 1.
try() {
	local size=$1 stage=$2 out=$3 rc=0 why
	shift 3
	"$@" >"$out" 2>"$WORK/stderr" || rc=$?
	[ "$rc" = 0 ] && return 0
	why=$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')
	note "$size" "$stage: ${why:-exit status $rc}"
	return 1
}

# wait_log NAME REGEX TIMEOUT_S: print the first line of NAME's log matching REGEX.
wait_log() {
	local deadline=$((SECONDS + $3)) log line
	while [ "$SECONDS" -lt "$deadline" ]; do
		log=$("$FERRY" logs "$1" 2>/dev/null) || true
		line=$(grep -E -m1 "$2" <<<"$log") || true
		if [ -n "$line" ]; then
			echo "$line"
			return 0
		fi
		sleep 0.05
	done
	return 1
}

# field FILE KEY: a value from a --json answer (for the progress lines only).
field() {
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], "?"))' "$1" "$2"
}

progress() { # LABEL JSON
	printf '  %-22s freeze %7s ms  total %8s ms  pages %7s  incremental %s%s\n' "$1" \
		"$(field "$2" freeze_ms)" "$(field "$2" total_ms)" "$(field "$2" pages_written)" \
		"$(field "$2" incremental)" \
		"$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1])).get("fallback"); print(f"  FALLBACK: {f}" if f else "")' "$2")"
}

# verify NAME GO OUT: ask the component to check its memory; its PASS/FAIL line into OUT.
verify() {
	local line
	touch "$2"
	if line=$(wait_log "$1" '^(PASS|FAIL)' 120); then
		echo "$line" >"$3"
	else
		echo "no PASS/FAIL from bench-dirtier within 120 s" >"$3"
	fi
}

bench_steps() {
	local size=$1 name=incr-$1 img=$IMGROOT/steps-$1 go=$WORK/go-$1 r k=0 p parent line
	mkdir -p "$img"
	STARTED="$STARTED $name"
	try "$size" "run" /dev/null "$FERRY" run --name "$name" -- \
		"$DIRTIER" -m step "$size" 10 "$STEP_POLL_MS" "$go" || return 0
	if ! wait_log "$name" '^READY' "$READY_TIMEOUT" >/dev/null; then
		note "$size" "run: no READY from bench-dirtier within ${READY_TIMEOUT} s"
		return 0
	fi
	# full checkpoints: round 0 starts dirty tracking; only the latest image is kept
	for r in $(seq 0 "$ROUNDS"); do
		try "$size" "full checkpoint (round $r)" "$RES/full-$size-$r.json" \
			"$FERRY" checkpoint "$name" --dir "$img/full-$r" --json || return 0
		[ "$r" = 0 ] || rm -rf "$img/full-$((r - 1))"
		progress "full $([ "$r" = 0 ] && echo warm-up || echo "round $r")" "$RES/full-$size-$r.json"
	done
	parent=$img/full-$ROUNDS
	for p in $FRACTIONS; do
		for r in $(seq 0 "$ROUNDS"); do
			k=$((k + 1))
			echo "$p" >"$go.tmp"
			mv "$go.tmp" "$go.step-$k"
			if ! line=$(wait_log "$name" "^WROTE $k " 60); then
				note "$size" "step $k: no WROTE from bench-dirtier within 60 s"
				return 0
			fi
			echo "$line" >"$RES/wrote-$size-$p-$r.txt"
			try "$size" "incremental checkpoint ($p permille, round $r)" \
				"$RES/incr-$size-$p-$r.json" \
				"$FERRY" checkpoint "$name" --dir "$img/inc-$k" --parent "$parent" --json ||
				return 0
			parent=$img/inc-$k
			progress "${p}permille $([ "$r" = 0 ] && echo warm-up || echo "round $r")" \
				"$RES/incr-$size-$p-$r.json"
		done
	done
	# the end of the chain must restore to exactly what was written
	try "$size" "kill before restore" /dev/null "$FERRY" kill "$name" || return 0
	try "$size" "restore from the end of the chain" "$RES/restore-$size.json" \
		"$FERRY" restore --dir "$parent" --name "$name" --json || return 0
	echo "  restore from the end of the chain ($k incremental images): $(field "$RES/restore-$size.json" total_ms) ms"
	verify "$name" "$go" "$RES/verify-$size.txt"
	echo "  restored memory: $(cat "$RES/verify-$size.txt")"
	try "$size" "kill" /dev/null "$FERRY" kill "$name" || true
	rm -rf "$img"
}

# The continuous checkpointer's lines, each prefixed with CLOCK_MONOTONIC in ms when it arrived
# (Python's monotonic clock is CLOCK_MONOTONIC, the clock of bench-dirtier's RATE lines).
STAMP='import sys, time
for line in sys.stdin:
    print("%.3f %s" % (time.monotonic() * 1e3, line.rstrip("\n")), flush=True)'

bench_rate() {
	local size=$1 set=$2 name=incr-rate-$1-$2 img=$IMGROOT/every-$1-$2 go=$WORK/gorate-$1-$2
	local tag=$1-$2 count seen rc c
	STARTED="$STARTED $name"
	try "$size" "rate run ($set permille)" /dev/null "$FERRY" run --name "$name" -- \
		"$DIRTIER" -m rate "$size" "$set" 1000 "$go" || return 0
	if ! wait_log "$name" '^READY' "$READY_TIMEOUT" >/dev/null; then
		note "$size" "rate run ($set permille): no READY within ${READY_TIMEOUT} s"
		return 0
	fi
	# one sample to settle, then the alone window
	wait_log "$name" "^RATE seq=$((RATE_SECONDS + 1)) " $((RATE_SECONDS + 30)) >/dev/null ||
		{ note "$size" "rate ($set permille): no samples"; return 0; }
	# A full checkpoint first (it starts dirty tracking): the continuous run then goes on from
	# it, so that every checkpoint in the window is an incremental one.
	python3 -c 'import time; print("%.3f" % (time.monotonic() * 1e3))' >"$RES/rate-full-start-$tag.txt"
	try "$size" "full checkpoint before the continuous ones ($set permille)" \
		"$RES/rate-full-$tag.json" "$FERRY" checkpoint "$name" --dir "$img" --json || return 0
	# The dirty-tracking holder that first checkpoint started is a fork of ferry: until it
	# closes what it inherited, it holds the image's lock too, and a checkpoint started at once
	# fails with "busy". Wait until the lock is free (flock -n takes and drops it).
	for _ in $(seq 100); do
		flock -n "$img/.lock" true 2>/dev/null && break
		sleep 0.05
	done
	# RATE_CYCLES times: a continuous run of about RATE_SECONDS, then RATE_SECONDS alone (one
	# sample to settle first); alternating keeps a slow drift of the machine out of the ratio
	count=$(((RATE_SECONDS + 1) * 1000 / EVERY_MS))
	for c in $(seq "$RATE_CYCLES"); do
		(
			set -o pipefail
			"$FERRY" checkpoint "$name" --dir "$img" --every "${EVERY_MS}ms" --keep "$KEEP" \
				--count "$count" --json 2>"$WORK/every.stderr" | python3 -u -c "$STAMP"
		) >"$RES/every-$tag-$c.jsonl" &
		EVERY_PID=$!
		rc=0
		wait "$EVERY_PID" || rc=$?
		EVERY_PID=""
		if [ "$rc" != 0 ]; then
			note "$size" "continuous checkpoints ($set permille, cycle $c): $(tail -n 2 "$WORK/every.stderr" | tr '\n' ' ')"
			break
		fi
		seen=$("$FERRY" logs "$name" | grep -c '^RATE seq=') || true
		wait_log "$name" "^RATE seq=$((seen + RATE_SECONDS + 1)) " $((RATE_SECONDS + 30)) >/dev/null ||
			{ note "$size" "rate ($set permille): no samples after cycle $c"; break; }
	done
	try "$size" "stats ($set permille)" "$RES/stats-$tag.json" "$FERRY" stats "$name" --json || true
	"$FERRY" logs "$name" | grep '^RATE' >"$RES/rate-$tag.txt" || true
	echo "  $set permille working set: $(python3 "$TOP/bench/incr_report.py" --summary-rate "$RES" "$tag")"
	# the last continuous image restores to a consistent memory
	try "$size" "kill before restore ($set permille)" /dev/null "$FERRY" kill "$name" || return 0
	try "$size" "restore from the continuous image ($set permille)" "$RES/rate-restore-$tag.json" \
		"$FERRY" restore --dir "$img" --name "$name" --json || return 0
	verify "$name" "$go" "$RES/rate-verify-$tag.txt"
	echo "  restored from the continuous image: $(cat "$RES/rate-verify-$tag.txt")"
	try "$size" "kill" /dev/null "$FERRY" kill "$name" || true
	rm -rf "$img"
}

for size in $SIZES; do
	echo "== $size MiB"
	"$FLOOR" -r "$ROUNDS" "$size" | tee "$RES/floor-$size.txt"
	echo "-- incremental checkpoints of a known dirty fraction"
	bench_steps "$size"
	echo "-- continuous checkpoints every ${EVERY_MS} ms beside a program writing memory"
	for set in $RATE_SETS; do
		bench_rate "$size" "$set"
	done
done

echo
{
	date -u '+%Y-%m-%d %H:%M UTC'
	cat /proc/loadavg
} >"$RES/run.txt"
rc=0
# shellcheck disable=SC2086 # SIZES is a list of words
python3 "$TOP/bench/incr_report.py" --results "$RES" --out "$OUT" --rounds "$ROUNDS" \
	--fractions "$FRACTIONS" --rate-sets "$RATE_SETS" --rate-seconds "$RATE_SECONDS" \
	--rate-cycles "$RATE_CYCLES" --every-ms "$EVERY_MS" --keep "$KEEP" --loadavg-start "$LOADAVG_START" $SIZES || rc=$?
if [ -n "${KEEP_RESULTS:-}" ]; then
	mkdir -p "$KEEP_RESULTS"
	cp -r "$RES"/. "$KEEP_RESULTS"/
	echo "raw results copied into $KEEP_RESULTS"
fi
exit "$rc"
