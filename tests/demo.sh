#!/usr/bin/env bash
# demo.sh BUILD_DIR: run a sample component, checkpoint it, kill it, restore it, watch it go on.
# What `make demo` runs. Needs root (ferry uses ptrace and new PID/mount namespaces).
set -euo pipefail

BUILD=${1:-build}
FERRY="$BUILD/ferry"
COUNTER="$(realpath "$BUILD/demo-counter")"

if [ "$(id -u)" != 0 ]; then
	echo "demo.sh: ferry needs root (ptrace, namespaces); run 'sudo make demo'" >&2
	exit 1
fi
for f in "$FERRY" "$COUNTER"; do
	[ -x "$f" ] || { echo "demo.sh: $f is missing; build first (make build)" >&2; exit 1; }
done

# Private state and image directories, so the demo never touches other components.
export FERRY_STATE_DIR="$(mktemp -d /tmp/ferry-demo-state.XXXXXX)"
IMG="$(mktemp -d /tmp/ferry-demo-image.XXXXXX)"
cleanup() {
	"$FERRY" kill demo 2>/dev/null || true
	rm -rf "$FERRY_STATE_DIR" "$IMG"
}
trap cleanup EXIT

BOLD='' PLAIN=''
if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; fi
step() {
	printf '\n%s==== %s%s\n' "$BOLD" "$1" "$PLAIN"
	shift
	for line in "$@"; do echo "     $line"; done
}
run() {
	echo "\$ ferry $*"
	"$FERRY" "$@"
}

step "1. Start a component" \
	"demo-counter: 4 threads each advance a counter; every 200 ms the main thread prints" \
	"the counters and checks them against a checksum over a heap buffer."
run run --name demo -- "$COUNTER"
run ps

step "2. Let it work for a moment, then look at its output"
sleep 1.5
run logs demo | tail -5

step "3. Checkpoint it" \
	"ferry freezes every thread, saves registers, memory, fds and signal state into $IMG/base" \
	"and lets the component run on. From now on the kernel tracks which pages it writes."
run checkpoint demo --dir "$IMG/base"

step "3b. Checkpoint it again, incrementally" \
	"Only the pages written since the first checkpoint are copied; the rest is read" \
	"through the first image (its page file is hard-linked, not copied)."
sleep 0.5
run checkpoint demo --dir "$IMG/incr" --parent "$IMG/base"
run stats demo
LAST=$("$FERRY" logs demo | grep '^tick' | tail -1 || true)

step "4. Kill the original" \
	"The component is gone: its processes, threads and memory no longer exist." \
	"Only the image on disk remembers it."
run kill demo
run ps

step "5. Look inside the image" \
	"Its chain of page files, threads with their registers, the memory map and where each" \
	"mapping's pages come from, the fds and what they mean:"
echo "\$ ferry inspect $IMG/incr | head -44"
"$FERRY" inspect "$IMG/incr" | head -44 || true

step "6. Restore it" \
	"A new component is built from the image, with the same pids, addresses, fds and" \
	"registers, and resumes where the checkpoint caught it."
run restore --dir "$IMG/incr"
run ps

step "7. Watch it continue" \
	"The last tick before the checkpoint was:" \
	"  ${LAST:-(none)}" \
	"The restored component picks up its tick numbers and counters from there:"
sleep 1.5
run logs demo | tail -8

step "8. Clean up"
run kill demo
echo
echo "Demo done: checkpoint, kill, restore, and the program never noticed."
