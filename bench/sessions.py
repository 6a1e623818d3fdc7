#!/usr/bin/env python3
"""A session to a node service, direct and through ferry, in the same run.

Usage (as root): bench/sessions.py BUILD_DIR      (part of `make bench`)
Environment: ROUNDS (default 5), OUT (default docs/performance-sessions.md).

One echo service (bench-sessecho serve) on a Unix socket, and one on a TCP port of loopback;
one client (bench-sessecho client) measuring round trips of 64-byte messages, streaming
throughput in 64 KiB writes and 64-byte messages per second on one session, for each:
- direct: the client runs outside ferry and connects to the socket itself (the reference);
- under ferry: a component connecting to /run/ferry/services/echo (or to the TCP service's
  port) on node A;
- after a migration: the same, measured once the component has been migrated to node B (its
  session re-created there, relayed while its delivered bytes were read, then put directly at
  its fd).
Each figure is the median of ROUNDS runs; the six cases alternate, round by round.
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
        tcp = f"tcp:127.0.0.1:{46800 + os.getpid() % 500}"
        for addr in (sock, tcp):
            srv = subprocess.Popen([echo, "serve", addr], stdout=subprocess.PIPE, text=True)
            procs.append(srv)
            if srv.stdout.readline().strip() != "READY":
                die(f"the echo service at {addr} did not start")
        key = os.path.join(work, "cluster.key")
        subprocess.run([ferryd, "--gen-key", key], check=True, capture_output=True)
        nodes = {}
        for i, name in enumerate(("A", "B")):
            state = os.path.join(work, f"state-{name}")
            port = 47300 + os.getpid() % 500 + i
            log = open(os.path.join(work, f"ferryd-{name}.log"), "w")
            p = subprocess.Popen([ferryd, "--node", name, "--listen", f"127.0.0.1:{port}",
                                  "--key", key, "--state-dir", state,
                                  "--service", f"echo=unix:{sock}", "--service", f"echot={tcp}"],
                                 stdout=log, stderr=log)
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

        # what a client connects to: outside ferry, and in a component
        at = {"unix": (sock, "/run/ferry/services/echo", "echo"), "tcp": (tcp, tcp, "echot")}

        def direct(k, t):
            r = subprocess.run([echo, "client", at[t][0]], capture_output=True, text=True,
                               timeout=300)
            return json.loads(r.stdout.splitlines()[-1])

        def under(k, t):
            go = os.path.join(work, f"go-u{t}{k}")
            open(go, "w").close()
            fr("A", "run", "--name", f"u{t}{k}", "--", echo, "client", at[t][1], go)
            res = result_of("A", f"u{t}{k}", None)
            fr("A", "kill", f"u{t}{k}")
            return res

        def moved(k, t):
            go = os.path.join(work, f"go-m{t}{k}")
            name = f"m{t}{k}"
            fr("A", "run", "--name", name, "--", echo, "client", at[t][1], go)
            for _ in range(100):
                if "CONNECTED" in fr("A", "logs", name):
                    break
                time.sleep(0.05)
            fr("A", "migrate", name, "--to", nodes["B"][1])
            caps = fr("B", "caps", name)
            if f"session to service {at[t][2]} ({t}" not in caps:
                die(f"{name}: no {t} echo session after the migration:\n{caps}")
            time.sleep(0.2)  # the swap: the pair's end replaced by the connection
            open(go, "w").close()
            res = result_of("B", name, None)
            fr("B", "kill", name)
            return res

        cases = [(t, label, fn) for t in ("unix", "tcp") for label, fn in
                 (("direct (reference)", direct), ("under ferry", under),
                  ("under ferry, after a migration", moved))]
        # the cases interleaved round by round, so that the machine's drift hits all alike
        runs = {(t, label): [] for t, label, _ in cases}
        for k in range(rounds):
            for t, label, fn in cases:
                runs[(t, label)].append(fn(k, t))
        rows = []
        for t, label, _ in cases:
            r = runs[(t, label)]
            med = {m: statistics.median(x[m] for x in r) for m in r[0]}
            rows.append((t, label, med))
            print(f"{t:4} {label:34} rtt {med['rtt_median_us']:7.2f} us (p99 "
                  f"{med['rtt_p99_us']:7.2f})  {med['throughput_mbs']:8.1f} MB/s  "
                  f"{med['messages_per_s']:10.0f} msg/s")
        ref = {t: med for t, label, med in rows if label.startswith("direct")}
        with open(out, "w") as f:
            f.write("# Sessions to node services: direct and through ferry\n\n"
                    f"Measured by `bench/sessions.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                    f"{os.cpu_count()} CPUs, kernel {os.uname().release}; median of {rounds} "
                    "runs each, the six cases alternating round by round. One echo service on a "
                    "Unix stream socket and one on a TCP port of loopback (TCP_NODELAY); one "
                    "client on one "
                    "session: 20000 round trips of 64-byte messages, 256 MiB streamed in 64 KiB "
                    "writes (echoed back), 16 MiB streamed in 64-byte messages. The direct "
                    "client, outside ferry, is the reference of the same run.\n\n"
                    "| service | session | round trip median (us) | p99 (us) | throughput (MB/s) | "
                    "64-byte messages/s | vs direct (msg/s) |\n|---|---|---|---|---|---|---|\n")
            for t, label, med in rows:
                f.write(f"| {t} | {label} | {med['rtt_median_us']:.2f} | "
                        f"{med['rtt_p99_us']:.2f} | "
                        f"{med['throughput_mbs']:.1f} | {med['messages_per_s']:.0f} | "
                        f"{100 * med['messages_per_s'] / ref[t]['messages_per_s']:.0f} % |\n")
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
