#!/usr/bin/env bash
# Checkpoint/restore benchmark: ferry's figures printed beside floors measured in the same run.
#
# Usage: bench/run.sh BUILD_DIR [--floors-only]     (as root; `make bench` runs ./bench/run.sh build)
# Environment: SIZES (MiB, default "64 1024"), ROUNDS (default 3), OUT (default docs/performance.md)
#
# For each size: bench-floor measures the save and load floors and the references; then
# bench-memhog runs as a ferry component and goes through a warm-up and ROUNDS rounds of
# checkpoint (image on tmpfs) -> kill -> restore; finally it checks every word of its memory.
# bench/report.py prints the table and rewrites OUT. --floors-only skips ferry (rows "pending").
set -euo pipefail

usage() {
	echo "usage: $0 BUILD_DIR [--floors-only]" >&2
	exit 2
}
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	usage
fi
FLOORS_ONLY=0
case "${2:-}" in
"") ;;
--floors-only) FLOORS_ONLY=1 ;;
*) usage ;;
esac
[ -d "$1" ] || { echo "bench: no build directory '$1'" >&2; exit 2; }
BUILD=$(cd "$1" && pwd)
TOP=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${SIZES:-"64 1024"}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-$TOP/docs/performance.md}
FERRY=$BUILD/ferry
FLOOR=$BUILD/bench/bench-floor
HOG=$BUILD/bench/bench-memhog
READY_TIMEOUT=120 # s; the very first touch of 1 GiB on a fresh VM takes several seconds

if [ "$(id -u)" != 0 ]; then
	echo "bench: run as root (ferry needs ptrace, namespaces and set_tid)" >&2
	exit 1
fi
for b in "$FLOOR" "$HOG"; do
	[ -x "$b" ] || { echo "bench: $b not built (ninja -C $BUILD)" >&2; exit 1; }
done
if [ "$FLOORS_ONLY" = 0 ] && [ ! -x "$FERRY" ]; then
	echo "bench: $FERRY not built (ninja -C $BUILD)" >&2
	exit 1
fi

# Every component this script started is ended through ferry, never with a raw signal.
STARTED=""
WORK=""
IMGROOT=""
cleanup() {
	local n
	for n in $STARTED; do
		"$FERRY" kill "$n" >/dev/null 2>&1 || true
	done
	rm -rf ${WORK:+"$WORK"} ${IMGROOT:+"$IMGROOT"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
IMGROOT=$(mktemp -d /dev/shm/ferry-bench-img.XXXXXX)
RES=$WORK/results
mkdir "$RES"
export FERRY_STATE_DIR=$WORK/state
LOADAVG_START=$(cat /proc/loadavg)
if awk -v n="$(nproc)" '{ exit !($1 > n / 2) }' /proc/loadavg; then
	echo "bench: load average ${LOADAVG_START%% *} on $(nproc) CPUs: other work will disturb the figures" >&2
fi

# Memory this VM never touched costs 2-3 s/GiB the first time (machine-facts.md): the floors
# reuse their own pages, while checkpoint/restore rounds churn through new ones. Touch enough
# memory once (component, image, restored copy: 4x the largest size) so both see warm pages.
prewarm_mib=$(( $(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -n 1) * 4 ))
echo "bench: touching ${prewarm_mib} MiB once so that no figure pays the VM's first touch"
"$HOG" "$prewarm_mib" --touch-only >/dev/null

# try SIZE STAGE OUTFILE CMD...: run CMD, stdout into OUTFILE; on failure record why, return 1.
try() {
	local size=$1 stage=$2 out=$3 rc=0 why
	shift 3
	"$@" >"$out" 2>"$WORK/stderr" || rc=$?
	[ "$rc" = 0 ] && return 0
	why=$(tail -n 3 "$WORK/stderr" | tr '\n' ' ')
	echo "$stage: ${why:-exit status $rc}" >"$RES/error-$size.txt"
	echo "bench: $size MiB: $stage failed (exit $rc): $why" >&2
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
		sleep 0.1
	done
	return 1
}

# field FILE KEY: a number from a --json answer (for the progress lines only).
field() {
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], "?"))' "$1" "$2"
}

bench_ferry() {
	local size=$1 name=bench-$1 img=$IMGROOT/$1 go=$WORK/go-$1 r line
	STARTED="$STARTED $name"
	try "$size" "run" /dev/null "$FERRY" run --name "$name" -- "$HOG" "$size" "$go" || return 0
	if ! wait_log "$name" '^READY' "$READY_TIMEOUT" >/dev/null; then
		echo "run: no READY from bench-memhog within ${READY_TIMEOUT} s" >"$RES/error-$size.txt"
		return 0
	fi
	for r in $(seq 0 "$ROUNDS"); do
		# a new image each round, as the save floor writes a new file
		rm -rf "$img"
		try "$size" "checkpoint (round $r)" "$RES/ckpt-$size-$r.json" \
			"$FERRY" checkpoint "$name" --dir "$img" --json || return 0
		du -sb "$img" | cut -f1 >"$RES/du-$size-$r.txt"
		try "$size" "kill (round $r)" /dev/null "$FERRY" kill "$name" || return 0
		try "$size" "restore (round $r)" "$RES/restore-$size-$r.json" \
			"$FERRY" restore --dir "$img" --name "$name" --json || return 0
		printf '  %s MiB %s: freeze %s ms, checkpoint %s ms, restore %s ms\n' "$size" \
			"$([ "$r" = 0 ] && echo warm-up || echo "round $r")" \
			"$(field "$RES/ckpt-$size-$r.json" freeze_ms)" \
			"$(field "$RES/ckpt-$size-$r.json" total_ms)" \
			"$(field "$RES/restore-$size-$r.json" total_ms)"
	done
	# the restored memory must be exactly what was written
	touch "$go"
	if line=$(wait_log "$name" '^(PASS|FAIL)' 60); then
		echo "$line" >"$RES/verify-$size.txt"
	else
		echo "no PASS/FAIL from bench-memhog within 60 s" >"$RES/verify-$size.txt"
	fi
	echo "  $size MiB restored memory: $(cat "$RES/verify-$size.txt")"
	try "$size" "kill" /dev/null "$FERRY" kill "$name" || true
	rm -rf "$img"
}

for size in $SIZES; do
	echo "== $size MiB"
	"$FLOOR" -r "$ROUNDS" "$size" | tee "$RES/floor-$size.txt"
	[ "$FLOORS_ONLY" = 1 ] || bench_ferry "$size"
done

args=(--results "$RES" --out "$OUT" --rounds "$ROUNDS" --loadavg-start "$LOADAVG_START")
[ "$FLOORS_ONLY" = 1 ] && args+=(--floors-only)
echo
# shellcheck disable=SC2086 # SIZES is a list of words
python3 "$TOP/bench/report.py" "${args[@]}" $SIZES
