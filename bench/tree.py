#!/usr/bin/env python3
"""Checkpoint and restore of a tree of NPROC processes sharing SIZE MiB, beside the floors
bench-floor measures for SIZE MiB and a one-process component of the same memory, in the same run.

Usage (as root): bench/tree.py BUILD_DIR [SIZE_MIB [NPROC]]      (part of `make bench`)
Environment: ROUNDS (default 3), OUT (default docs/performance-trees.md).

Three components, each checkpointed (`--stop`) and restored ROUNDS times after a warm-up round:
- one process with SIZE MiB (the reference: what the memory alone costs ferry);
- NPROC processes sharing SIZE MiB through one MAP_SHARED anonymous mapping;
- NPROC processes sharing SIZE MiB copy-on-write (written by the root before it forks, read by
  every child).
Shared pages must cost once: the image size, and the times, are to be compared with the first.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def die(msg):
    print(f"bench-tree: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) not in (2, 3, 4):
        die("usage: bench/tree.py BUILD_DIR [SIZE_MIB [NPROC]]")
    if os.geteuid() != 0:
        die("run as root (ferry needs ptrace and namespaces)")
    build = os.path.abspath(sys.argv[1])
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    nproc = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    rounds = int(os.environ.get("ROUNDS", "3"))
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.environ.get("OUT", os.path.join(top, "docs", "performance-trees.md"))
    ferry = os.path.join(build, "ferry")
    hog = os.path.join(build, "bench", "bench-treehog")
    work = tempfile.mkdtemp(prefix="ferry-bench-tree-", dir="/dev/shm")
    env = dict(os.environ, FERRY_STATE_DIR=os.path.join(work, "state"))

    def fr(*args):
        r = subprocess.run([ferry, *args], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            die(f"ferry {' '.join(args)}: {r.stderr.strip()[-400:]}")
        return r.stdout

    def wait_ready(name):
        for _ in range(600):
            if "READY" in fr("logs", name):
                return
            time.sleep(0.1)
        die(f"{name} did not get ready")

    cases = [("one process", "shared", 1), (f"{nproc} processes, MAP_SHARED", "shared", nproc),
             (f"{nproc} processes, copy-on-write", "cow", nproc)]
    results = []
    try:
        fl = subprocess.run([os.path.join(build, "bench", "bench-floor"), "-r", "1", "-d", work,
                             str(size)], capture_output=True, text=True, timeout=600)
        floor = dict(kv.split("=") for kv in fl.stdout.split("\n")[-2].split()[1:]
                     if "=" in kv) if fl.returncode == 0 else {}
        for label, mode, n in cases:
            name = f"t{len(results)}"
            fr("run", "--name", name, "--", hog, str(size), mode, str(n))
            wait_ready(name)
            rows = []
            # checkpoints that let it run on (its memory as the program made it), the first a
            # warm-up; then one that ends it, its restore, and a checkpoint of the restored one
            for i in range(rounds + 1):
                img = os.path.join(work, f"img-{name}-{i}")
                c = json.loads(fr("checkpoint", name, "--dir", img, "--json"))
                image = sum(os.path.getsize(os.path.join(img, x)) for x in os.listdir(img))
                if i > 0:
                    rows.append((c, image))
                shutil.rmtree(img)
            img = os.path.join(work, f"img-{name}-stop")
            fr("checkpoint", name, "--dir", img, "--stop", "--json")
            rs = [json.loads(fr("restore", "--dir", img, "--name", name, "--json"))]
            after = os.path.join(work, f"img-{name}-after")
            fr("checkpoint", name, "--dir", after, "--json")
            again = sum(os.path.getsize(os.path.join(after, x)) for x in os.listdir(after))
            shutil.rmtree(after)
            for _ in range(rounds - 1):  # more restores of the same image
                fr("kill", name)
                rs.append(json.loads(fr("restore", "--dir", img, "--name", name, "--json")))
            shutil.rmtree(img)
            rows = (rows, rs, again)
            fr("kill", name)
            results.append((label, rows))
    finally:
        for i in range(len(cases)):
            subprocess.run([ferry, "kill", f"t{i}"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    def med(xs):
        return sorted(xs)[len(xs) // 2]

    lines = []
    for label, (rows, rs, again) in results:
        fz = [float(c["freeze_ms"]) for c, _ in rows]
        img = [i / 2**20 for _, i in rows]
        shared = med([c.get("pages_shared", 0) for c, _ in rows]) * 4096 / 2**20
        rt = [float(r["total_ms"]) for r in rs]
        lines.append(f"| {label} | {med(fz):.0f} ({min(fz):.0f}-{max(fz):.0f}) | "
                     f"{med(img):.0f} | {shared:.0f} | {med(rt):.0f} ({min(rt):.0f}-"
                     f"{max(rt):.0f}) | {again / 2**20:.0f} |")
    ref = (f"memcpy {floor.get('memcpy_gbs', '?')} GB/s, process_vm_readv "
           f"{floor.get('vm_readv_gbs', '?')} GB/s, save floor {floor.get('save_ms', '?')} ms, "
           f"load floor {floor.get('load_ms', '?')} ms for {size} MiB")
    uname = os.uname()
    table = "\n".join(lines)
    text = f"""# Performance: process trees

Generated by `bench/tree.py` (do not edit by hand; rerun it). Plain memory is in
[performance.md](performance.md), services in [performance-services.md](performance-services.md).

- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
- Machine: {uname.sysname} {uname.release} {uname.machine}, {os.cpu_count()} CPUs
- References from the same run (bench-floor, {size} MiB): {ref}

## {nproc} processes sharing {size} MiB

`bench-treehog` under ferry, state and images on tmpfs. {rounds} full checkpoints that let it
run on, after a warm-up (frozen time, image size, and the memory a child still shares
copy-on-write with its parent, which the image names instead of copying); then
`checkpoint --stop`, {rounds} restores of that image, and the size of a checkpoint of the
restored component. Median (min-max) in ms. The first row is one process holding the same
memory: what the memory alone costs.

| component | checkpoint, frozen | image MiB | stored once (MiB) | restore, total | image after restore, MiB |
|---|---|---|---|---|---|
{table}

A MAP_SHARED object is one object: captured once, made once by the restore and mapped by every
process. Copy-on-write pages are stored once, and the restore keeps them shared: the init's
helper loads the mappings its children have at the same place before it forks them, and each
child then loads only what differs from the init's (so an image of the restored tree is as
small as the first, last column). Pages a child shares with its own child but not with the
init are loaded into each of them.
"""
    with open(out, "w") as fo:
        fo.write(text)
    print(text)


if __name__ == "__main__":
    main()
