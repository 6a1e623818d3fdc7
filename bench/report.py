#!/usr/bin/env python3
"""Turn the results bench/run.sh collected into a table on stdout and docs/performance.md.

Results directory, per size S (MiB) and round R (0 = warm-up, not counted):
  floor-S.txt          bench-floor output; its `floor key=value ...` line is read
  ckpt-S-R.json        `ferry checkpoint --json`
  restore-S-R.json     `ferry restore --json`
  du-S-R.txt           bytes of the image directory (du -sb), a cross-check of bytes_written
  verify-S.txt         bench-memhog's PASS/FAIL line for the restored memory
  error-S.txt          the stage that failed and why, if one did
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys

MIB = 1024 * 1024
PENDING = "pending: checkpoint/restore not landed yet"

# Targets from the project's issue (1 GiB), and CRIU's figures on the same kind of machine.
TARGET_CKPT = 1.2  # checkpoint total / save floor
TARGET_RESTORE = 1.0  # eager restore total / load floor
NOISY = 1.25  # a median above this times its minimum: the rounds were disturbed
CRIU_NOTE = (
    "CRIU 4.2 on this kind of machine, 1 GiB of touched anonymous memory, image on tmpfs, three "
    "warm rounds beside the same floors: dump 566-691 ms (1.7-2.1x the save floor, which took "
    "~335 ms that day), restore about 650 ms (about 1.0x the load floor). A small shell loop: "
    "dump 64 ms, restore 41 ms. CRIU pre-dump and --track-mem do not work here (no soft-dirty)."
)


def read_floor(path):
    """The key=value pairs of the `floor` line, values as floats where they parse."""
    with open(path) as f:
        for line in f:
            if line.startswith("floor "):
                out = {}
                for kv in line.split()[1:]:
                    k, _, v = kv.partition("=")
                    try:
                        out[k] = float(v)
                    except ValueError:
                        out[k] = v
                return out
    return None


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class Size:
    """Everything measured for one size."""

    def __init__(self, res, mib, rounds, floors_only):
        self.mib = mib
        self.floor = read_floor(os.path.join(res, f"floor-{mib}.txt"))
        rounds_of = lambda read, name: [read(os.path.join(res, name.format(mib=mib, r=r)))
                                        for r in range(rounds + 1)]
        # round 0 is the warm-up
        self.warm_ckpt, *self.ckpt = rounds_of(read_json, "ckpt-{mib}-{r}.json")
        self.warm_rest, *self.rest = rounds_of(read_json, "restore-{mib}-{r}.json")
        self.du = rounds_of(read_text, "du-{mib}-{r}.txt")[1:]
        self.verify = read_text(os.path.join(res, f"verify-{mib}.txt"))
        self.error = read_text(os.path.join(res, f"error-{mib}.txt"))
        self.floors_only = floors_only
        self.complete = (not floors_only and all(self.ckpt) and all(self.rest))

    def status(self):
        """Why there are no ferry figures, or None if there are."""
        if self.floors_only:
            return PENDING
        if self.error:
            return "failed: " + self.error.split(":")[0]
        if not self.complete:
            return "failed: missing results"
        return None

    def ckpt_stat(self, key, fn=statistics.median):
        return fn(float(c[key]) for c in self.ckpt)

    def rest_stat(self, key, fn=statistics.median):
        return fn(float(r[key]) for r in self.rest)

    def fl(self, key):
        return self.floor.get(key) if self.floor else None


def ms_cell(median, minimum):
    return f"{median:.1f} ({minimum:.1f})"


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


def ratio_cell(med, floor_med, minimum, floor_min):
    """Ratio of the medians, with the ratio of the minimums (the steadier one when busy)."""
    return f"{ratio(med, floor_med)} ({ratio(minimum, floor_min)})"


def floor_cell(s, key):
    if s.fl(key + "_ms") is None:
        return "-"
    return ms_cell(s.fl(key + "_ms"), s.fl(key + "_min_ms"))


def main_rows(sizes):
    """Rows of the main table: ferry's figures beside the floors."""
    rows = []
    for s in sizes:
        row = [f"{s.mib} MiB"]
        why = s.status()
        if why:
            row += [why] + ["-"] * 5
        else:
            ck, rs = s.ckpt_stat("total_ms"), s.rest_stat("total_ms")
            row += [
                ms_cell(s.ckpt_stat("freeze_ms"), s.ckpt_stat("freeze_ms", min)),
                ms_cell(ck, s.ckpt_stat("total_ms", min)),
                ratio_cell(ck, s.fl("save_ms"), s.ckpt_stat("total_ms", min), s.fl("save_min_ms")),
                ms_cell(rs, s.rest_stat("total_ms", min)),
                ratio_cell(rs, s.fl("load_ms"), s.rest_stat("total_ms", min), s.fl("load_min_ms")),
                f"{s.ckpt_stat('bytes_written') / MIB:.1f}",
            ]
        row += [floor_cell(s, "save"), floor_cell(s, "load")]
        rows.append(row)
    return rows


MAIN_HEAD = ["size", "freeze ms", "checkpoint ms", "x save floor", "restore ms", "x load floor",
             "image MiB", "save floor ms", "load floor ms"]
REF_HEAD = ["size", "memcpy GB/s", "process_vm_readv GB/s", "fresh-memory touch ms",
            "save floor GB/s", "load floor GB/s"]
DETAIL_HEAD = ["size", "write ms", "pages written", "restore verify ms", "restore pages ms",
               "pages loaded", "image du MiB", "restored memory"]


def ref_rows(sizes):
    rows = []
    for s in sizes:
        g = lambda k: f"{s.fl(k):.2f}" if s.fl(k) is not None else "-"
        rows.append([f"{s.mib} MiB", g("memcpy_gbs"), g("vm_readv_gbs"), floor_cell(s, "touch"),
                     g("save_gbs"), g("load_gbs")])
    return rows


def detail_rows(sizes):
    rows = []
    for s in sizes:
        if s.status():
            continue
        du = [float(d) for d in s.du if d]
        rows.append([
            f"{s.mib} MiB",
            f"{s.ckpt_stat('write_ms'):.1f}",
            f"{s.ckpt_stat('pages_written'):.0f}",
            f"{s.rest_stat('verify_ms'):.1f}",
            f"{s.rest_stat('pages_ms'):.1f}",
            f"{s.rest_stat('pages_loaded'):.0f}",
            f"{statistics.median(du) / MIB:.1f}" if du else "-",
            "PASS" if (s.verify or "").startswith("PASS") else (s.verify or "not checked"),
        ])
    return rows


def round_lines(sizes):
    """Every round's checkpoint and restore time, so the spread is visible."""
    out = []
    for s in sizes:
        if s.status():
            continue
        for what, runs, warm in (("checkpoint", s.ckpt, s.warm_ckpt),
                                 ("restore", s.rest, s.warm_rest)):
            vals = ", ".join(f"{float(r['total_ms']):.1f}" for r in runs)
            w = f" (warm-up {float(warm['total_ms']):.1f})" if warm else ""
            out.append(f"- {s.mib} MiB {what} ms by round: {vals}{w}")
    return out


def text_table(head, rows):
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip()
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in rows])


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def verdicts(sizes):
    """The issue's targets, judged on the 1 GiB row."""
    s = next((s for s in sizes if s.mib == 1024), None)
    if s is None:
        return ["1 GiB was not measured in this run."]
    why = s.status()
    out = []
    for what, key, floor, target in (("checkpoint", "total_ms", "save_ms", TARGET_CKPT),
                                     ("eager restore", "total_ms", "load_ms", TARGET_RESTORE)):
        head = f"- {what} within {target:.1f}x the {floor[:4]} floor: "
        if why:
            out.append(head + why)
            continue
        stat = s.ckpt_stat if what == "checkpoint" else s.rest_stat
        val, val_min = stat(key), stat(key, min)
        f_med, f_min = s.fl(floor), s.fl(floor.replace("_ms", "_min_ms"))
        r = val / f_med
        line = (head + f"{'met' if r <= target else 'not met'} ({r:.2f}x: median {val:.1f} ms "
                f"against {f_med:.1f} ms; minimums {val_min / f_min:.2f}x)")
        # A median far above its minimum means other work disturbed the rounds.
        noisy = [n for n, med, lo in ((f"the {floor[:4]} floor", f_med, f_min),
                                      (what, val, val_min)) if med > NOISY * lo]
        if noisy:
            line += (f"; unreliable: the median of {' and of '.join(noisy)} is more than "
                     f"{NOISY:.2f}x the minimum, rerun (ROUNDS=5 steadies it)")
        out.append(line)
    return out


def machine():
    model = "?"
    mem = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            kb = next(int(l.split()[1]) for l in f if l.startswith("MemTotal"))
            mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    thp = read_text("/sys/kernel/mm/transparent_hugepage/enabled") or "?"
    return (f"Linux {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs "
            f"({model}), {mem} RAM, transparent huge pages: {thp}")


METHOD = """\
Absolute times on these shared VMs mislead; ratios to floors measured in the same run do not.
Faulting in fresh memory costs far more than copying it, so the floors are the two things a
checkpoint and a restore cannot avoid doing, done by the simplest possible program:

- **save floor**: a process writes its own touched memory into a new file on tmpfs
  (`/dev/shm`) with `write()` in 64 MiB chunks, timed from `open(O_CREAT|O_EXCL)` to `close()`;
- **load floor**: a new process reads that file into fresh anonymous memory
  (`mmap(MAP_PRIVATE|MAP_ANONYMOUS)`, then `read()` in 64 MiB chunks), timed from `open()` to the
  last `read()`.

`bench/bench-floor` measures both, plus three references: `memcpy` between two warm buffers,
`process_vm_readv` of a child's touched memory into a warm buffer (64 MiB per call), and a
`memset` over fresh anonymous memory (the cost of faulting pages in). Every figure gets a
warm-up round first and then ROUNDS rounds; cells show the median with the minimum in
parentheses.

The component is `bench/bench-memhog N`: it fills N MiB of private anonymous memory with a
pattern in which every 8-byte word differs (no zero pages, no two equal pages, so nothing can be
skipped or deduplicated), prints READY and sleeps in 100 ms steps. `bench/run.sh` starts it with
`ferry run`, and after a warm-up round runs ROUNDS rounds of `ferry checkpoint NAME --dir IMG
--json` (image on tmpfs, a new directory each round) -> `ferry kill` -> `ferry restore --json`;
rounds after the first therefore checkpoint a restored component. Freeze and checkpoint times
are ferry's own `freeze_ms` and `total_ms`, restore is `total_ms` of the restore (eager: every
page in place before the component runs), the image size is `bytes_written`. At the end the
restored component checks every word of its memory and prints PASS or FAIL.

Before anything is timed, `run.sh` touches 4x the largest size once (`bench-memhog N
--touch-only`): memory this VM has never touched costs 2-3 s/GiB the first time. The floor
program reuses its own pages round after round while checkpoint/restore rounds go through new
ones, so without this step ferry's rounds swing by 3-6x (seen: 395 to 2097 ms for the same
1 GiB checkpoint) and the comparison is unfair to it.

How the times are made: a checkpoint copies the frozen component's pages with
`process_vm_readv` into 1 MiB buffers and checksums them (XXH3) on one CPU while a second
thread writes them into the page file; a restore has the new process `pread` the page file
straight into its own fresh mappings while ferry verifies every checksum on the other CPU,
through a read-only mapping of the page file, before the component may run. A variant where
the frozen component `pwrite`s its own memory into the image (one copy, like the save floor)
measured slower (387-405 ms against 355-368 ms for 1 GiB, alternating in one run): its
checksums must then be taken from the written file, which adds back the copy it saved.

Reproduce (as root): `make bench`, or `./bench/run.sh BUILD_DIR`. `SIZES` and `ROUNDS` in the
environment change the sizes (MiB) and the number of rounds."""


def markdown(sizes, rounds, floors_only, loadavg):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        "# Performance",
        "",
        "Generated by `bench/run.sh` (do not edit by hand; rerun it). Also measured:",
        "[migration](performance-migration.md), [services: redis-server](performance-services.md),",
        "[process trees](performance-trees.md), [sessions to node services](performance-sessions.md).",
        "",
        f"- Date: {now}",
        f"- Machine: {machine()}",
        f"- Rounds: {rounds} after a warm-up; median (minimum) in every time cell",
        f"- Load average (1, 5, 15 min) at start and end of the run: {loadavg}",
        "",
        "## Method",
        "",
        METHOD,
        "",
        "## Checkpoint and restore beside the floors",
        "",
        md_table(MAIN_HEAD, main_rows(sizes)),
        "",
        "Checkpoint is divided by the save floor, restore by the load floor: the ratio of the",
        "medians, and in parentheses the ratio of the minimums, which other load on the machine",
        "disturbs less.",
        "At small sizes fixed costs (ptrace, namespaces, process creation) weigh more than",
        "memory, so the 1 GiB row is the one the targets are judged on.",
    ]
    details = detail_rows(sizes)
    if details:
        md += ["", "Where the time goes (medians):", "", md_table(DETAIL_HEAD, details), ""]
        md += round_lines(sizes)
    errors = [f"- {s.mib} MiB: {s.error}" for s in sizes if s.error]
    if errors:
        md += ["", "Failures in this run:", ""] + errors
    md += [
        "",
        "## References from the same run",
        "",
        md_table(REF_HEAD, ref_rows(sizes)),
        "",
        "## Targets (1 GiB)",
        "",
        f"From the project's issue: checkpoint within {TARGET_CKPT:.1f}x the save floor, eager "
        f"restore within {TARGET_RESTORE:.1f}x the load floor. In this run:",
        "",
    ] + verdicts(sizes) + [
        "",
        "## For scale: CRIU",
        "",
        CRIU_NOTE,
        "Those milliseconds come from another day; compare ratios, not times.",
        "",
    ]
    return "\n".join(md)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--floors-only", action="store_true")
    ap.add_argument("--loadavg-start", default="?", help="/proc/loadavg when the run began")
    ap.add_argument("sizes", nargs="+", type=int)
    a = ap.parse_args()

    sizes = [Size(a.results, mib, a.rounds, a.floors_only) for mib in a.sizes]
    print(text_table(MAIN_HEAD, main_rows(sizes)))
    if detail_rows(sizes):
        print()
        print(text_table(DETAIL_HEAD, detail_rows(sizes)))
    print()
    print("references (same run):")
    print(text_table(REF_HEAD, ref_rows(sizes)))
    print()
    print("\n".join(verdicts(sizes)))

    with open(a.out, "w") as f:
        end = " ".join((read_text("/proc/loadavg") or "? ? ?").split()[:3])
        start = " ".join(a.loadavg_start.split()[:3])
        f.write(markdown(sizes, a.rounds, a.floors_only, f"{start} / {end}"))
    print(f"\nwrote {a.out}")
    failed = [s for s in sizes if s.error or (s.verify and not s.verify.startswith("PASS"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
