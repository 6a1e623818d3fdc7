#!/usr/bin/env python3
"""Turn the results bench/migrate.sh collected into tables on stdout and docs/performance-migration.md.

Results directory; TAG is `small` (demo-counter) or `SIZE-RATE` (bench-dirtier dirtying RATE MB/s),
MODE precopy or stop-and-copy, I the migration (0 = warm-up, 1..REPEATS counted):
  source.txt             the ferry binaries and source tree the run used
  run.txt                the date and /proc/loadavg as the run ended
  floor.txt              bench-floor output; its `floor key=value ...` line is read
  channel.txt            test-channel's informational throughput lines (`# ... N MB/s ...`)
  mig-TAG-MODE-I.json    `ferry migrate --json`; mig-TAG-MODE-I.dir its direction (A>B)
  error-TAG-MODE.txt     a failed migration: ferry's stderr and both ferryd logs
  postcopy-TAG.{rc,stderr,json}  the post-copy request: exit status, what ferry said
  pace-TAG.txt           bench-dirtier's `PACE seq= t0= t1= pages= mbps=` lines (the rate kept)
  verify-TAG.txt         PASS/FAIL of bench-dirtier's memory; demo-counter's last tick line
  rss-small.txt          demo-counter's VmRSS (KiB) at the end
  abort.txt              why the run was aborted, if it was
"""
import argparse
import datetime
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import machine, md_table, read_json, read_text, text_table  # noqa: E402

MIB = 1024 * 1024

# The targets and the figures it compares with.
TARGET_PRECOPY_MS = 20.0
TARGET_PRECOPY_RATE = 50  # MB/s
TARGET_POSTCOPY_MS = 5.0
QEMU_MS = 300.0
LXD_S = (4.0, 5.0)


def read_floor(path):
    line = next((l for l in (read_text(path) or "").splitlines() if l.startswith("floor ")), None)
    if not line:
        return {}
    out = {}
    for kv in line.split()[1:]:
        k, _, v = kv.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def mmm(vals, fmt="{:.1f}"):
    """median (min, max)"""
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return (f"{fmt.format(statistics.median(vals))} "
            f"({fmt.format(min(vals))}, {fmt.format(max(vals))})")


class Config:
    """The migrations of one component in one mode: a warm-up and REPEATS counted ones."""

    def __init__(self, res, tag, mode, repeats):
        self.tag, self.mode = tag, mode
        self.runs, self.dirs = [], []
        for i in range(repeats + 1):
            self.runs.append(read_json(os.path.join(res, f"mig-{tag}-{mode}-{i}.json")))
            self.dirs.append(read_text(os.path.join(res, f"mig-{tag}-{mode}-{i}.dir")) or "?")
        self.warm = self.runs[0]
        self.counted = [r for r in self.runs[1:] if r]
        self.error = read_text(os.path.join(res, f"error-{tag}-{mode}.txt"))

    def vals(self, key, scale=1.0):
        return [float(r[key]) / scale for r in self.counted if r.get(key) is not None]

    def med(self, key, scale=1.0):
        v = self.vals(key, scale)
        return statistics.median(v) if v else None

    def rest(self):
        """downtime - restore at the destination, per migration"""
        return [float(r["downtime_ms"]) - float(r["restore_ms"]) for r in self.counted]

    def restore_share(self):
        return [float(r["restore_ms"]) / float(r["downtime_ms"]) for r in self.counted
                if float(r.get("downtime_ms") or 0) > 0]


class Component:
    def __init__(self, a, tag, label, rate):
        res = a.results
        self.tag, self.label, self.rate = tag, label, rate
        self.modes = {m: Config(res, tag, m, a.repeats) for m in a.modes}
        self.post_rc = read_text(os.path.join(res, f"postcopy-{tag}.rc"))
        self.post_err = read_text(os.path.join(res, f"postcopy-{tag}.stderr")) or ""
        self.post_json = read_json(os.path.join(res, f"postcopy-{tag}.json"))
        self.verify = read_text(os.path.join(res, f"verify-{tag}.txt"))
        self.pace = []
        for line in (read_text(os.path.join(res, f"pace-{tag}.txt")) or "").splitlines():
            m = re.search(r"seq=(\d+) .* mbps=([\d.]+)", line)
            if m and int(m.group(1)) >= 2:
                self.pace.append(float(m.group(2)))

    def post_refused(self):
        return self.post_rc is not None and self.post_rc != "0"

    def post_why(self):
        lines = [l for l in self.post_err.splitlines() if l.startswith("ferry:")]
        return lines[-1] if lines else (self.post_err.splitlines() or ["?"])[-1]

    def verdict(self):
        v = self.verify or "not checked"
        if v.startswith("PASS"):
            return "PASS"
        if "checksum ok" in v:
            return "checksum ok"
        return v


HEAD = ["component", "mode", "downtime ms", "restore ms", "total ms", "setup ms",
        "MiB pre-copy", "MiB in downtime", "MiB total", "rounds", "dirty MiB/s (ferry)", "n"]


def rows(comps):
    out = []
    for c in comps:
        for mode, k in c.modes.items():
            if not k.counted:
                why = "failed (see failures)" if k.error else "not measured"
                out.append([c.label, mode, why] + ["-"] * (len(HEAD) - 3))
                continue
            out.append([
                c.label, mode,
                mmm(k.vals("downtime_ms"), "{:.1f}"),
                mmm(k.vals("restore_ms"), "{:.1f}"),
                mmm(k.vals("total_ms"), "{:.0f}"),
                mmm(k.vals("setup_ms"), "{:.1f}"),
                mmm(k.vals("bytes_precopy", MIB), "{:.1f}"),
                mmm(k.vals("bytes_downtime", MIB), "{:.1f}"),
                mmm(k.vals("bytes_total", MIB), "{:.1f}"),
                mmm(k.vals("rounds"), "{:.0f}"),
                mmm(k.vals("dirty_rate", MIB), "{:.1f}") if mode == "precopy" else "-",
                f"{len(k.counted)}" + ("" if all(r.get("confirmed") for r in k.counted)
                                       else " (unconfirmed)"),
            ])
        if "postcopy" in c.modes and c.modes["postcopy"].counted:
            pass  # measured like the other modes, above
        elif c.post_refused():
            out.append([c.label, "postcopy", "not implemented"] + ["-"] * (len(HEAD) - 3))
        elif c.post_json:
            j = c.post_json
            out.append([c.label, "postcopy (1 run)", f"{j['downtime_ms']:.1f}",
                        f"{j['restore_ms']:.1f}", f"{j['total_ms']:.0f}", f"{j['setup_ms']:.1f}",
                        f"{j['bytes_precopy'] / MIB:.1f}", f"{j['bytes_downtime'] / MIB:.1f}",
                        f"{j['bytes_total'] / MIB:.1f}", j["rounds"], "-", "1"])
        else:
            out.append([c.label, "postcopy", "not tried"] + ["-"] * (len(HEAD) - 3))
    return out


SPLIT_HEAD = ["component", "mode", "downtime ms", "restore at destination ms", "restore share",
              "rest of the downtime ms", "MiB in downtime"]


def split_rows(comps):
    out = []
    for c in comps:
        for mode, k in c.modes.items():
            if not k.counted:
                continue
            share = k.restore_share()
            out.append([c.label, mode, mmm(k.vals("downtime_ms")), mmm(k.vals("restore_ms")),
                        f"{statistics.median(share) * 100:.0f}%" if share else "-",
                        mmm(k.rest()), mmm(k.vals("bytes_downtime", MIB))])
    return out


def run_lines(comps):
    out = []
    for c in comps:
        for mode, k in c.modes.items():
            parts = []
            for i, (r, d) in enumerate(zip(k.runs, k.dirs)):
                if not r:
                    continue
                parts.append(f"{'warm-up' if i == 0 else f'#{i}'} {d} "
                             f"{float(r['downtime_ms']):.1f}/{float(r['total_ms']):.0f}")
            if parts:
                out.append(f"- {c.label}, {mode}: downtime/total ms: " + ", ".join(parts))
    return out


def channel(res):
    """(no compression MB/s, zstd payload MB/s, zstd wire MB/s) from test-channel's lines."""
    plain = zstd = zwire = None
    for line in (read_text(os.path.join(res, "channel.txt")) or "").splitlines():
        m = re.search(r"([\d.]+) MB/s of payload, ([\d.]+) MB/s on the wire", line)
        if not m:
            continue
        if "no compression" in line:
            plain = float(m.group(1))
        elif "zstd" in line:
            zstd, zwire = float(m.group(1)), float(m.group(2))
    return plain, zstd, zwire


def fmt_ms(v):
    return f"{v:.1f} ms" if v is not None else "-"


def verdicts(comps, a):
    big = {c.rate: c for c in comps if c.rate is not None}
    out = []
    size = f"{a.size} MiB" if a.size != 1024 else "1 GiB"

    # 1. pre-copy at 50 MB/s
    head = (f"- Pre-copy downtime at most {TARGET_PRECOPY_MS:g} ms for {size} dirtied at "
            f"{TARGET_PRECOPY_RATE} MB/s: ")
    c = big.get(TARGET_PRECOPY_RATE)
    k = c.modes.get("precopy") if c else None
    if not k or not k.counted:
        out.append(head + "not measured in this run.")
    else:
        d = k.vals("downtime_ms")
        med = statistics.median(d)
        met = med <= TARGET_PRECOPY_MS
        r = statistics.median(k.vals("restore_ms"))
        out.append(head + f"**{'met' if met else 'not met'}** (median {med:.1f} ms, "
                   f"min {min(d):.1f}, max {max(d):.1f}; of the median, restore at the "
                   f"destination {r:.1f} ms)"
                   + ("" if (min(d) <= TARGET_PRECOPY_MS) == met else
                      "; the runs lie on both sides of the target"))
    # 2. post-copy
    head = f"- Post-copy downtime at most {TARGET_POSTCOPY_MS:g} ms: "
    post = [statistics.median(c.modes["postcopy"].vals("downtime_ms")) for c in comps
            if "postcopy" in c.modes and c.modes["postcopy"].counted]
    if post:
        met = all(x <= TARGET_POSTCOPY_MS for x in post)
        rest = [statistics.median(c.modes["postcopy"].vals("restore_ms")) for c in comps
                if "postcopy" in c.modes and c.modes["postcopy"].counted]
        out.append(head + ("met" if met else "**not met**") + ": medians "
                   + ", ".join(f"{x:.1f}" for x in post) + " ms, of which the destination's "
                   "lazy restore " + ", ".join(f"{x:.1f}" for x in rest) + " ms")
    elif any(c.post_json for c in comps):
        d = [float(c.post_json["downtime_ms"]) for c in comps if c.post_json]
        out.append(head + f"measured once per component: {', '.join(f'{x:.1f}' for x in d)} ms")
    else:
        why = next((c.post_why() for c in comps if c.post_refused()), "not tried")
        out.append(head + f"**not met**: post-copy is not implemented (ferry refuses it: "
                   f"`{why}`)")
    # 3. QEMU's default limit
    parts = []
    for rate, c in sorted(big.items()):
        for mode, k in c.modes.items():
            if k.counted:
                med = statistics.median(k.vals("downtime_ms"))
                parts.append(f"{mode} at {rate} MB/s {med:.0f} ms "
                             f"({'within' if med <= QEMU_MS else 'over'})")
    out.append(f"- QEMU's default downtime limit ({QEMU_MS:.0f} ms; a limit it aims at, not a "
               f"measurement): " + ("; ".join(parts) if parts else "nothing measured") + ".")
    # 4. LXD with CRIU
    parts = []
    for rate, c in sorted(big.items()):
        k = c.modes.get("stop-and-copy")
        if k and k.counted:
            med = statistics.median(k.vals("downtime_ms"))
            parts.append(f"{rate} MB/s {med / 1000:.2f} s")
    if parts:
        out.append(f"- LXD migrating with CRIU: {LXD_S[0]:g}-{LXD_S[1]:g} s of downtime (the "
                   f"issue's figure, not measured here). ferry's stop-and-copy, {size} "
                   f"(everything moves while frozen, as with a CRIU dump/restore): "
                   + ", ".join(parts) + "; pre-copy above.")
    return out


def dominates(comps):
    """What the downtime is made of, in words."""
    out = []
    for c in comps:
        for mode, k in c.modes.items():
            if not k.counted:
                continue
            d, r = statistics.median(k.vals("downtime_ms")), statistics.median(k.vals("restore_ms"))
            bd = statistics.median(k.vals("bytes_downtime", MIB))
            out.append(f"- {c.label}, {mode}: downtime {d:.1f} ms, of which restore at the "
                       f"destination {r:.1f} ms ({r / d * 100:.0f}%); the rest, {d - r:.1f} ms, "
                       f"is the freeze, the last link's checkpoint, sending {bd:.1f} MiB and the "
                       f"hand-over")
    return out


def references(floor, ch, a):
    plain, zstd, zwire = ch
    g = lambda k: f"{floor[k]:.2f}" if floor.get(k) is not None else "-"
    mm = lambda k: (f"{floor[k + '_ms']:.1f} ({floor[k + '_min_ms']:.1f})"
                    if floor.get(k + "_ms") is not None else "-")
    head = ["size", "memcpy GB/s", "process_vm_readv GB/s", "channel MB/s (no compression)",
            "channel MB/s (zstd, payload / wire)", "save floor ms", "load floor ms"]
    row = [f"{a.size} MiB", g("memcpy_gbs"), g("vm_readv_gbs"),
           f"{plain:.0f}" if plain else "-",
           f"{zstd:.0f} / {zwire:.0f}" if zstd else "-", mm("save"), mm("load")]
    return head, [row]


def stop_copy_floor(floor, ch, a):
    """What moving SIZE frozen costs at the reference speeds: the copy out, the channel, the load."""
    plain = ch[0]
    save, load = floor.get("save_ms"), floor.get("load_ms")
    if not plain or save is None or load is None:
        return None
    send = a.size * MIB / 1e6 / plain * 1e3
    return save, send, load


METHOD = """\
Two ferry nodes run on this machine: `ferryd --node A` and `ferryd --node B`, each with its own
state directory on `/dev/shm`, listening on free loopback ports, with one cluster key made for
the run. The migration stream is ferry's authenticated channel over TCP on loopback, without
compression; the links (images) the source takes and the copies the destination receives are on
tmpfs. Components are started on A with `ferry run` and moved with `ferry migrate NAME --to
127.0.0.1:PORT --mode MODE --max-downtime {max_downtime} --json`; every figure is ferry's own:
`downtime_ms` (the component is frozen at the source until it runs at the destination),
`restore_ms` (the destination's restore, inside the downtime), `total_ms` (the whole command),
`setup_ms` (connection, authentication, offer), bytes sent before the freeze, during it and in
all, and the pre-copy `rounds` (links sent while the component ran; 0 for stop-and-copy) with
the dirty rate ferry measured.

Components:
- **demo-counter** (a few MiB, four threads): its downtime is the fixed cost of a migration.
- **bench-dirtier -m pace {size} RATE**: maps {size} MiB of private anonymous memory with
  `MADV_NOHUGEPAGE`, fills every word (no zero page, no two equal pages), then writes one word
  per 4 KiB page, page after page through all of its memory, at RATE x 10^6 bytes of pages a
  second (1 ms steps; time it spends frozen is not made up afterwards); RATE 0 only sleeps.

For each component and mode: a warm-up migration and {repeats} counted ones of the same
component, back and forth (A -> B, B -> A, A -> B, ...), {settle} s apart; cells are the median
of the counted ones (minimum, maximum). After every migration both nodes are asked (`ferry ps
--json`) where the component runs: exactly one running copy, at the destination, the source's
process gone, and new output from it at the destination, or the bench aborts. Post-copy is
requested once per component. At the end bench-dirtier checks every word of its memory
(PASS/FAIL); demo-counter's last line carries its own checksum.

References from the same run, before the migrations: `bench-floor` (memcpy between warm
buffers, process_vm_readv of a child's memory, the save and load floors; see
[performance.md](performance.md)) and the channel's throughput from the unit test
`tests/test-channel` (256 MiB in 1 MiB messages through a socketpair, one process, both ends).
The machine has 2 vCPUs: source, destination, the component and ferry's threads share them.
Before anything is timed, 5x the size is touched once (memory this VM never touched costs
2-3 s/GiB the first time). The run uses copies of the programs taken at its start. Reproduce
(as root): `make bench`, or `./bench/migrate.sh BUILD_DIR`; SIZE, RATES, REPEATS, MODES,
MAX_DOWNTIME and SETTLE in the environment change the run.
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--rates", required=True)
    p.add_argument("--modes", required=True)
    p.add_argument("--repeats", type=int, required=True)
    p.add_argument("--max-downtime", type=int, required=True)
    p.add_argument("--settle", type=int, required=True)
    p.add_argument("--loadavg-start", default="?")
    a = p.parse_args()
    a.rates = [int(x) for x in a.rates.split()]
    a.modes = a.modes.split()
    res = a.results

    comps = [Component(a, "small", "demo-counter", None)]
    comps += [Component(a, f"{a.size}-{r}", f"{a.size} MiB at {r} MB/s", r) for r in a.rates]
    floor = read_floor(os.path.join(res, "floor.txt"))
    ch = channel(res)
    abort = read_text(os.path.join(res, "abort.txt"))

    print(text_table(HEAD, rows(comps)))
    print()
    print(text_table(SPLIT_HEAD, split_rows(comps)))
    print()
    rh, rr = references(floor, ch, a)
    print(text_table(rh, rr))
    print()
    for line in verdicts(comps, a):
        print(line)

    run = (read_text(os.path.join(res, "run.txt")) or "").splitlines()
    date = run[0] if run else datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    load_end = run[1] if len(run) > 1 else "?"
    la = lambda s: " ".join(s.split()[:3])
    src = (read_text(os.path.join(res, "source.txt")) or "?").replace("\n", "; ")

    md = ["# Performance: live migration", "",
          "Generated by `bench/migrate.sh` (do not edit by hand; rerun it). Checkpoint and "
          "restore figures are in [performance.md](performance.md), incremental checkpoints in "
          "[performance-incremental.md](performance-incremental.md).", "",
          f"- Date: {date}",
          f"- Machine: {machine()}",
          f"- Source: {src}",
          f"- Migrations: a warm-up and {a.repeats} counted per component and mode, back and "
          f"forth between two nodes on loopback, {a.settle} s apart; cells are median (minimum, "
          f"maximum); pre-copy with --max-downtime {a.max_downtime}",
          f"- Load average (1, 5, 15 min) at start and end of the run: "
          f"{la(a.loadavg_start)} / {la(load_end)}", ""]
    busy = [x for x in (a.loadavg_start, load_end) if x != "?" and
            float(x.split()[0]) > (os.cpu_count() or 1) / 2]
    if busy:
        md += [f"**Other work shared the machine during this run** (load average up to "
               f"{max(float(x.split()[0]) for x in busy):.1f} on {os.cpu_count()} CPUs): the "
               f"times are inflated and spread; compare them with the references measured "
               f"beside them, not with other days.", ""]
    if abort:
        md += ["**The run was aborted:** " + abort.replace("\n", " "), ""]
    md += ["## Method", "", METHOD.format(max_downtime=a.max_downtime, size=a.size,
                                          repeats=a.repeats, settle=a.settle).rstrip(), ""]
    md += ["## Migrations", "", md_table(HEAD, rows(comps)), "",
           "MiB are 2^20 bytes on the wire (the channel's framing included); the dirtier's "
           "rate is in 10^6 bytes of pages a second, ferry's measured dirty rate in MiB/s "
           "(pages it found written between two pre-copy rounds, x 4 KiB). n: counted "
           "migrations, all confirmed by the destination unless marked.", ""]
    md += run_lines(comps) + [""]
    checks = []
    for c in comps:
        pace = (f", rate it kept {statistics.median(c.pace):.1f} MB/s (median of its "
                f"1 s samples)" if c.pace else "")
        checks.append(f"- {c.label}: memory after all its migrations: {c.verdict()}{pace}")
    md += ["After the migrations:", ""] + checks + [""]

    md += ["## Where the downtime goes", "", md_table(SPLIT_HEAD, split_rows(comps)), "",
           "The downtime runs from the freeze at the source to the destination's answer that "
           "the component runs; `restore_ms` is the destination's restore inside it (the "
           "process rebuilt and every page in place before it may run). The rest is the "
           "freeze, the last link's checkpoint at the source, sending it, and the hand-over "
           "(the destination holds the restored process, the source freezes the cgroup, "
           "records the decision durably, ends its copy and says GO).", ""]
    md += dominates(comps) + [""]
    scf = stop_copy_floor(floor, ch, a)
    if scf:
        save, send, load = scf
        md += [f"For scale, moving {a.size} MiB while frozen cannot take less than the copy "
               f"out (save floor {save:.0f} ms), the channel ({a.size} MiB at the channel's "
               f"{ch[0]:.0f} MB/s: {send:.0f} ms) and the load into fresh memory (load floor "
               f"{load:.0f} ms) unless they overlap: {save + send + load:.0f} ms in a row, "
               f"{max(save, send, load):.0f} ms if fully pipelined.", ""]

    md += ["## References from the same run", "", md_table(rh, rr), ""]
    chl = read_text(os.path.join(res, "channel.txt"))
    if chl:
        md += ["test-channel said:", "", "```", chl, "```", ""]

    md += ["## Targets", "",
           "From the project's issue: pre-copy downtime at most 20 ms with 1 GiB dirtied at "
           "50 MB/s; post-copy downtime at most 5 ms; for comparison QEMU's default downtime "
           "limit (300 ms) and LXD with CRIU (4-5 s of downtime). In this run:", ""]
    md += verdicts(comps, a) + [""]

    fails = []
    for c in comps:
        for mode, k in c.modes.items():
            if k.error:
                fails.append(f"### {c.label}, {mode}\n\n```\n{k.error}\n```\n")
    if fails or abort:
        md += ["## Failures", ""] + fails
        if abort:
            md += [f"Aborted: {abort}", ""]

    with open(a.out, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    print(f"\nwrote {a.out}")
    return 1 if (fails or abort) else 0


if __name__ == "__main__":
    sys.exit(main())
