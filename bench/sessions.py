#!/usr/bin/env python3
"""A session to a node service, direct and through ferry, in the same run.

Usage (as root): bench/sessions.py BUILD_DIR      (part of `make bench`)
Environment: ROUNDS (default 5), OUT (default docs/performance-sessions.md).

One echo service (bench-sessecho serve) on a Unix socket; one client (bench-sessecho client)
measuring round trips of 64-byte messages, streaming throughput in 64 KiB writes and 64-byte
messages per second on one session:
- direct: the client runs outside ferry and connects to the socket itself (the reference);
- under ferry: a component connecting to /run/ferry/services/echo on node A;
- after a migration: the same, measured once the component has been migrated to node B (its
  session re-created there, relayed while its delivered bytes were read, then put directly at
  its fd).
Each figure is the median of ROUNDS runs; the three cases alternate, round by round.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def safe_kill(pid, sig):
    """The one way this script signals: only a process it started, never pid <= 0 (kill(-1)
    as root ends every process on the machine)."""
    if pid <= 0:
        raise ValueError(f"refusing to signal pid {pid}")
    os.kill(pid, sig)


def die(msg):
    print(f"bench-sessions: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        die("usage: bench/sessions.py BUILD_DIR")
    if os.geteuid() != 0:
        die("run as root (ferry needs ptrace and namespaces)")
    build = os.path.abspath(sys.argv[1])
    rounds = int(os.environ.get("ROUNDS", "5"))
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.environ.get("OUT", os.path.join(top, "docs", "performance-sessions.md"))
    ferry, ferryd = os.path.join(build, "ferry"), os.path.join(build, "ferryd")
    echo = os.path.join(build, "bench", "bench-sessecho")
    work = tempfile.mkdtemp(prefix="ferry-bench-sessions-", dir="/dev/shm")
    procs = []
    try:
        sock = os.path.join(work, "echo.sock")
        srv = subprocess.Popen([echo, "serve", sock], stdout=subprocess.PIPE, text=True)
        procs.append(srv)
        if srv.stdout.readline().strip() != "READY":
            die("the echo service did not start")
        key = os.path.join(work, "cluster.key")
        subprocess.run([ferryd, "--gen-key", key], check=True, capture_output=True)
        nodes = {}
        for i, name in enumerate(("A", "B")):
            state = os.path.join(work, f"state-{name}")
            port = 47300 + os.getpid() % 500 + i
            log = open(os.path.join(work, f"ferryd-{name}.log"), "w")
            p = subprocess.Popen([ferryd, "--node", name, "--listen", f"127.0.0.1:{port}",
                                  "--key", key, "--state-dir", state,
                                  "--service", f"echo=unix:{sock}"], stdout=log, stderr=log)
            procs.append(p)
            nodes[name] = (dict(os.environ, FERRY_STATE_DIR=state), f"127.0.0.1:{port}")
        for env, _ in nodes.values():
            sock_path = os.path.join(env["FERRY_STATE_DIR"], "ferryd.sock")
            for _ in range(100):
                if os.path.exists(sock_path):
                    break
                time.sleep(0.05)

        def fr(node, *args):
            r = subprocess.run([ferry, *args], env=nodes[node][0], capture_output=True,
                               text=True, timeout=300)
            if r.returncode != 0:
                die(f"ferry {' '.join(args)} on {node}: {r.stderr.strip()[-400:]}")
            return r.stdout

        def result_of(node, name, what):
            for _ in range(1200):
                text = fr(node, "logs", name)
                for line in text.splitlines():
                    if line.startswith("{"):
                        return json.loads(line)
                if what and what not in text:
                    pass
                time.sleep(0.1)
            die(f"{name}: no result on {node}")

        def direct(k):
            r = subprocess.run([echo, "client", sock], capture_output=True, text=True,
                               timeout=300)
            return json.loads(r.stdout.splitlines()[-1])

        def under(k):
            go = os.path.join(work, f"go-u{k}")
            open(go, "w").close()
            fr("A", "run", "--name", f"u{k}", "--", echo, "client", "/run/ferry/services/echo", go)
            res = result_of("A", f"u{k}", None)
            fr("A", "kill", f"u{k}")
            return res

        def moved(k):
            go = os.path.join(work, f"go-m{k}")
            name = f"m{k}"
            fr("A", "run", "--name", name, "--", echo, "client", "/run/ferry/services/echo", go)
            for _ in range(100):
                if "CONNECTED" in fr("A", "logs", name):
                    break
                time.sleep(0.05)
            fr("A", "migrate", name, "--to", nodes["B"][1])
            caps = fr("B", "caps", name)
            if "session to service echo" not in caps:
                die(f"{name}: no echo session after the migration:\n{caps}")
            time.sleep(0.2)  # the swap: the pair's end replaced by the connection
            open(go, "w").close()
            res = result_of("B", name, None)
            fr("B", "kill", name)
            return res

        cases = [("direct (reference)", direct), ("under ferry", under),
                 ("under ferry, after a migration", moved)]
        # the cases interleaved round by round, so that the machine's drift hits all alike
        runs = {label: [] for label, _ in cases}
        for k in range(rounds):
            for label, fn in cases:
                runs[label].append(fn(k))
        rows = []
        for label, _ in cases:
            med = {m: statistics.median(r[m] for r in runs[label]) for m in runs[label][0]}
            rows.append((label, med))
            print(f"{label:34} rtt {med['rtt_median_us']:7.2f} us (p99 {med['rtt_p99_us']:7.2f})"
                  f"  {med['throughput_mbs']:8.1f} MB/s  {med['messages_per_s']:10.0f} msg/s")
        ref = rows[0][1]
        with open(out, "w") as f:
            f.write("# Sessions to node services: direct and through ferry\n\n"
                    f"Measured by `bench/sessions.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                    f"{os.cpu_count()} CPUs, kernel {os.uname().release}; median of {rounds} "
                    "runs each, the three cases alternating round by round. One echo service on a Unix stream socket; one client on one "
                    "session: 20000 round trips of 64-byte messages, 256 MiB streamed in 64 KiB "
                    "writes (echoed back), 16 MiB streamed in 64-byte messages. The direct "
                    "client, outside ferry, is the reference of the same run.\n\n"
                    "| session | round trip median (us) | p99 (us) | throughput (MB/s) | "
                    "64-byte messages/s | vs direct (msg/s) |\n|---|---|---|---|---|---|\n")
            for label, med in rows:
                f.write(f"| {label} | {med['rtt_median_us']:.2f} | {med['rtt_p99_us']:.2f} | "
                        f"{med['throughput_mbs']:.1f} | {med['messages_per_s']:.0f} | "
                        f"{100 * med['messages_per_s'] / ref['messages_per_s']:.0f} % |\n")
            f.write("\nNo system call of an established session is intercepted: the component's fd "
                    "is a connection to the service itself (after a migration, once the bytes "
                    "delivered first are read, the monitor puts the connection at the fd: "
                    "docs/sessions.md). Differences are the machine's noise.\n")
        print(f"written to {out}")
    finally:
        for p in procs:
            if p.poll() is None:
                safe_kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    safe_kill(p.pid, signal.SIGKILL)
                    p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
