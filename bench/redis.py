#!/usr/bin/env python3
"""Checkpoint and restore of redis-server holding SIZE MiB of keys, with a client connected
over TCP throughout, beside the floors bench-floor measures for the same size in the same run.

Usage (as root): bench/redis.py BUILD_DIR [SIZE_MIB]      (`make bench-redis`)
Environment: ROUNDS (default 3), OUT (default docs/performance-services.md).

redis-server runs as a ferry component (state and images on /dev/shm); SIZE MiB of 4 KiB random
values are written through one client connection; then ROUNDS times: `ferry checkpoint --stop
--json`, `ferry restore --json`, and 1000 random keys read back through the same connection
(TCP_REPAIR and the network lock keep it) must equal what was written.
"""
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def die(msg):
    print(f"bench-redis: {msg}", file=sys.stderr)
    sys.exit(1)


def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def reply(f):
    line = f.readline()
    if line.startswith(b"$") and line != b"$-1\r\n":
        return f.read(int(line[1:]) + 2)[:-2]
    return line.rstrip(b"\r\n")


def main():
    if len(sys.argv) not in (2, 3):
        die("usage: bench/redis.py BUILD_DIR [SIZE_MIB]")
    if os.geteuid() != 0:
        die("run as root (ferry needs ptrace, namespaces and TCP_REPAIR)")
    build = os.path.abspath(sys.argv[1])
    size = int(sys.argv[2]) if len(sys.argv) == 3 else 1024
    rounds = int(os.environ.get("ROUNDS", "3"))
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.environ.get("OUT", os.path.join(top, "docs", "performance-services.md"))
    ferry = os.path.join(build, "ferry")
    srv = shutil.which("redis-server")
    if not srv:
        die("redis-server is not installed (make check installs it)")
    work = tempfile.mkdtemp(prefix="ferry-bench-redis-", dir="/dev/shm")
    env = dict(os.environ, FERRY_STATE_DIR=os.path.join(work, "state"))

    def fr(*args):
        r = subprocess.run([ferry, *args], env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            die(f"ferry {' '.join(args)}: {r.stderr.strip()[-400:]}")
        return r.stdout

    conn = None
    try:
        fl = subprocess.run([os.path.join(build, "bench", "bench-floor"), "-r", "1", "-d", work,
                             str(size)], capture_output=True, text=True, timeout=600)
        floor = dict(kv.split("=") for kv in fl.stdout.split("\n")[-2].split()[1:]
                     if "=" in kv) if fl.returncode == 0 else {}
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        fr("run", "--name", "r", "--", srv, "--port", str(port), "--bind", "127.0.0.1",
           "--save", "", "--appendonly", "no", "--dir", work)
        for _ in range(100):
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                time.sleep(0.1)
        if not conn:
            die("redis-server did not listen")
        f = conn.makefile("rb")
        nkeys = size * 256  # 4 KiB values
        digest = {}
        t0 = time.monotonic()
        for base in range(0, nkeys, 1000):
            batch = []
            for k in range(base, min(base + 1000, nkeys)):
                v = os.urandom(4096)
                digest[k] = hashlib.blake2b(v, digest_size=8).digest()
                batch.append(resp(b"SET", b"key:%d" % k, v))
            conn.sendall(b"".join(batch))
            for _ in batch:
                if reply(f) != b"+OK":
                    die("SET failed")
        fill_s = time.monotonic() - t0
        conn.sendall(resp(b"INFO", b"memory"))
        info = reply(f).decode(errors="replace")
        used = next((int(l.split(":")[1]) for l in info.splitlines()
                     if l.startswith("used_memory_rss:")), 0)
        rows = []
        for i in range(rounds):
            img = os.path.join(work, f"img{i}")
            c = json.loads(fr("checkpoint", "r", "--dir", img, "--stop", "--json"))
            r = json.loads(fr("restore", "--dir", img, "--name", "r", "--json"))
            image = sum(os.path.getsize(os.path.join(img, x)) for x in os.listdir(img))
            for k in random.sample(range(nkeys), 1000):
                conn.sendall(resp(b"GET", b"key:%d" % k))
                if hashlib.blake2b(reply(f), digest_size=8).digest() != digest[k]:
                    die(f"round {i}: key:{k} differs after the restore")
            rows.append((c, r, image))
            shutil.rmtree(img)
        fr("kill", "r")
    finally:
        if conn:
            conn.close()
        subprocess.run([ferry, "kill", "r"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    def med(xs):
        return sorted(xs)[len(xs) // 2]

    ck_freeze = [float(c["freeze_ms"]) for c, _, _ in rows]
    ck_total = [float(c["total_ms"]) for c, _, _ in rows]
    rs_total = [float(r["total_ms"]) for _, r, _ in rows]
    images = [img / 2**20 for _, _, img in rows]
    ref = (f"memcpy {floor.get('memcpy_gbs', '?')} GB/s, process_vm_readv "
           f"{floor.get('vm_readv_gbs', '?')} GB/s, save floor {floor.get('save_ms', '?')} ms, "
           f"load floor {floor.get('load_ms', '?')} ms for {size} MiB")
    uname = os.uname()
    text = f"""# Performance: services

Generated by `bench/redis.py` (do not edit by hand; rerun it). Checkpoint and restore of
plain memory are in [performance.md](performance.md), migration in
[performance-migration.md](performance-migration.md).

- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
- Machine: {uname.sysname} {uname.release} {uname.machine}, {os.cpu_count()} CPUs
- References from the same run (bench-floor, {size} MiB): {ref}

## redis-server holding {size} MiB of keys

redis-server runs as a ferry component, state and images on tmpfs. One client writes
{nkeys} keys of 4 KiB random values ({fill_s:.1f} s; redis's RSS then {used / 2**20:.0f} MiB) and
stays connected. {rounds} rounds of `ferry checkpoint r --stop` and `ferry restore`; after each,
1000 random keys read back through the same connection equal what was written.

| | median | min | max |
|---|---|---|---|
| checkpoint: frozen ms | {med(ck_freeze):.1f} | {min(ck_freeze):.1f} | {max(ck_freeze):.1f} |
| checkpoint: total ms | {med(ck_total):.1f} | {min(ck_total):.1f} | {max(ck_total):.1f} |
| restore: total ms | {med(rs_total):.1f} | {min(rs_total):.1f} | {max(rs_total):.1f} |
| image MiB | {med(images):.0f} | {min(images):.0f} | {max(images):.0f} |

Process trees (16 processes sharing 256 MiB) are in [performance-trees.md](performance-trees.md).
"""
    with open(out, "w") as fo:
        fo.write(text)
    print(text)


if __name__ == "__main__":
    main()
