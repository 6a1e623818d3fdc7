"""Migration tests: ferryd nodes on one machine (loopback, and two network namespaces joined
by a veth pair the test creates), components moved between them while they compute.

Imported by run.py, whose helpers (Fail, run_cmd, safe_kill, ...) it uses through __main__.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import time

import __main__ as h

MIGRATE_TIMEOUT = 150
ROUNDS = 1500  # of feature-mig_compute: a few seconds of computing on these machines
_reference = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_result(ctx, rounds):
    """RESULT of an uninterrupted run, outside ferry."""
    if rounds not in _reference:
        d = os.path.join(ctx.root, "reference")
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "go"), "w").close()
        prog = ctx.feature("mig_compute")[0]
        rc, out, err = h.run_cmd([prog, d, str(rounds)], timeout=max(ctx.left() - 30, 30))
        m = [line for line in out.splitlines() if line.startswith("RESULT ")]
        if rc != 0 or not m:
            raise h.Fail(f"reference run of mig_compute failed ({rc})", h.tail(out + err))
        _reference[rounds] = m[0]
    return _reference[rounds]


class Node:
    """One ferryd with its own state directory, started and ended by the test."""

    def __init__(self, ctx, name, key, host="127.0.0.1", netns=None, wrap=None, args=()):
        self.ctx, self.name, self.key, self.netns, self.wrap = ctx, name, key, netns, wrap
        self.args = list(args)  # more ferryd arguments (--service, --config)
        self.state = os.path.join(ctx.root, f"node-{name}")
        self.port = free_port()
        self.addr = f"{host}:{self.port}"
        self.proc = None
        self.logf = os.path.join(ctx.root, f"ferryd-{name}.log")
        self.env = dict(os.environ, FERRY_STATE_DIR=self.state)
        ctx.on_cleanup.append(self.cleanup)

    def start(self, **hooks):
        env = dict(self.env)
        env.pop("FERRY_TEST_MIGRATE_KILL", None)
        env.pop("FERRY_TEST_MIGRATE_CUT", None)
        env.update(hooks)
        argv = [os.path.join(os.path.dirname(self.ctx.ferry_bin), "ferryd"), "--node", self.name,
                "--listen", self.addr, "--key", self.key, "--state-dir", self.state, *self.args]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        if self.wrap:
            argv = self.wrap(argv)
        with open(self.logf, "a") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env)
        sock = os.path.join(self.state, "ferryd.sock")
        end = time.monotonic() + 10
        while not os.path.exists(sock) or "listening" not in h._read(self.logf).split(
                "stopped")[-1]:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise h.Fail(f"ferryd {self.name} did not start", h.tail(h._read(self.logf)))
            time.sleep(0.02)
        return self

    def sigkill(self):
        if self.proc and self.proc.poll() is None:
            h.safe_kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait_dead(self):
        """For a node killed by its own test hook."""
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise h.Fail(f"ferryd {self.name} did not die at its test hook")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            h.safe_kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sigkill()

    def ferry(self, *args, ok=True, timeout=60):
        rc, out, err = h.run_cmd([self.ctx.ferry_bin, *args], env=self.env, cwd=self.ctx.scratch,
                                 timeout=min(timeout, max(self.ctx.left(), 1)))
        self.ctx.last_cmd, self.ctx.last_err = f"[{self.name}] ferry {' '.join(args)}", err
        if rc is None:
            raise h.Fail(f"[{self.name}] `ferry {' '.join(args)}` did not finish in time",
                         h.tail(err))
        if ok and rc != 0:
            raise h.Fail(f"[{self.name}] `ferry {' '.join(args)}` exited {rc}: {h.tail(err, 3)}",
                         self.logs())
        return rc, out, err

    def ps(self):
        if not os.path.isdir(self.state):
            return []
        return json.loads(self.ferry("ps", "--json")[1])

    def running(self, name):
        return [c for c in self.ps() if c.get("name") == name and c.get("state") == "running"]

    def logs(self):
        return f"ferryd {self.name}:\n{h.tail(h._read(self.logf), 10)}" if os.path.exists(
            self.logf) else ""

    def cleanup(self):
        try:
            for c in self.ps():
                h.run_cmd([self.ctx.ferry_bin, "kill", c["name"]], env=self.env, timeout=15)
        except (h.Fail, ValueError, OSError):
            pass
        self.stop()


def make_key(ctx, name="cluster.key"):
    path = os.path.join(ctx.root, name)
    rc, _, err = h.run_cmd([os.path.join(os.path.dirname(ctx.ferry_bin), "ferryd"),
                            "--gen-key", path])
    if rc != 0:
        raise h.Fail(f"ferryd --gen-key failed: {err}")
    return path


def migrate(ctx, src, name, dst, *extra, ok=True):
    rc, out, err = src.ferry("migrate", name, "--to", dst.addr, "--json", *extra, ok=False,
                             timeout=120)
    if ok and rc != 0:
        raise h.Fail(f"migrate {name} {src.name} -> {dst.name} exited {rc}: {h.tail(err, 4)}",
                     src.logs() + "\n" + dst.logs())
    if rc != 0:
        return rc, None, err
    try:
        j = json.loads(out)
    except ValueError:
        raise h.Fail(f"migrate --json printed no JSON: {out[:200]!r}")
    if not j.get("confirmed") or j.get("destination") != dst.name:
        raise h.Fail(f"migrate {src.name} -> {dst.name}: not confirmed: {j}")
    return rc, j, err


def describe_pids(pids):
    out = []
    for p in pids:
        try:
            st = h._read(f"/proc/{p}/stat").rsplit(")", 1)[1].split()
            cg = h._read(f"/proc/{p}/cgroup").strip().splitlines()[-1]
            out.append(f"pid {p} state {st[0]} ppid {st[1]} ({h._comm(int(st[1]))}) {cg}")
        except (OSError, IndexError, ValueError):
            out.append(f"pid {p} gone")
    return "\n".join(out)


def copies_of(prog):
    """Processes (any state but zombie) running the executable prog: running, frozen or held."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{d}/exe") != prog:
                continue
            state = h._read(f"/proc/{d}/stat").rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(d))
    return found


def one_copy(ctx, nodes, name, prog, where=None, limit=30):
    """Wait until exactly one copy of the component exists, on one node; return that node."""
    last = {}

    def probe():
        procs = copies_of(prog)
        on = [(n, c) for n in nodes for c in n.running(name)]
        last.update(procs=procs, on=[(n.name, c.get("pid")) for n, c in on])
        if len(procs) == 1 and len(on) == 1 and on[0][1].get("pid") == procs[0]:
            return on[0][0]
        return None
    try:
        node = ctx.wait_for("exactly one copy", probe, limit)
    except h.Fail:
        raise h.Fail(f"not exactly one copy of {name}: processes {last.get('procs')}, "
                     f"running per node {last.get('on')}",
                     describe_pids(last.get("procs", [])) + "\n" +
                     "\n".join(n.logs() for n in nodes))
    if where is not None and node is not where:
        raise h.Fail(f"{name} runs on {node.name}, expected on {where.name}")
    return node


def finish(ctx, node, name, rounds=ROUNDS):
    """Let the component end its work; its result must equal the uninterrupted run's."""
    want = reference_result(ctx, rounds)
    ctx.go()

    def probe():
        log = node.ferry("logs", name)[1]
        return log if "RESULT" in log else None
    log = ctx.wait_for(f"RESULT of {name} on {node.name}", probe, 60)
    got = [line for line in log.splitlines() if line.startswith("RESULT")]
    if got != [want]:
        raise h.Fail(f"result after migrations {got} != uninterrupted {want}", h.tail(log, 6))


def start_compute(ctx, node, name="c", rounds=ROUNDS):
    prog = ctx.feature("mig_compute")
    node.ferry("run", "--name", name, "--", *prog, str(rounds))

    def ready():
        return "READY" in node.ferry("logs", name)[1]
    ctx.wait_for(f"{name} READY", ready, 20)
    return prog[0]


# ---- tests ----------------------------------------------------------------------------------


def there_and_back(ctx):
    """Three nodes on loopback: a 4-thread component computing over 32 MiB moves ten times
    (pre-copy), and its result equals an uninterrupted run's; its log moved along."""
    key = make_key(ctx)
    nodes = [Node(ctx, n, key).start() for n in ("A", "B", "C")]
    reference_result(ctx, ROUNDS)
    prog = start_compute(ctx, nodes[0])
    at = nodes[0]
    for i in range(10):
        to = nodes[(nodes.index(at) + 1 + (i % 2)) % 3]
        _, j, _ = migrate(ctx, at, "c", to)
        if j["rounds"] < 2:
            raise h.Fail(f"pre-copy took {j['rounds']} rounds; expected a live one and more")
        at = one_copy(ctx, nodes, "c", prog, where=to, limit=10)
        if at.ps() and not os.path.isdir(at.state):
            raise h.Fail("no state dir")
    log = at.ferry("logs", "c")[1]
    if not log.startswith("READY\n"):
        raise h.Fail("the log did not move with the component", h.tail(log, 4))
    finish(ctx, at, "c")


def modes(ctx):
    """stop-and-copy there, pre-copy back, post-copy there: the result is still the
    uninterrupted run's."""
    key = make_key(ctx)
    a, b = Node(ctx, "A", key).start(), Node(ctx, "B", key).start()
    prog = start_compute(ctx, a)
    _, j, _ = migrate(ctx, a, "c", b, "--mode", "stop-and-copy")
    if j["bytes_precopy"] > 1 << 20 or j["rounds"] != 0:
        raise h.Fail(f"stop-and-copy sent {j['bytes_precopy']} bytes in {j['rounds']} rounds "
                     "before the freeze")
    one_copy(ctx, [a, b], "c", prog, where=b)
    _, j, _ = migrate(ctx, b, "c", a, "--mode", "precopy", "--max-downtime", "50")
    if j["bytes_precopy"] < 16 << 20:
        raise h.Fail(f"pre-copy sent only {j['bytes_precopy']} bytes while it ran")
    one_copy(ctx, [a, b], "c", prog, where=a)
    _, j, _ = migrate(ctx, a, "c", b, "--mode", "postcopy")
    if j["bytes_postcopy"] < 16 << 20 or j["bytes_downtime"] > 4 << 20 or j.get("post_error"):
        raise h.Fail(f"post-copy sent {j['bytes_downtime']} bytes frozen and "
                     f"{j['bytes_postcopy']} after: {j}")
    one_copy(ctx, [a, b], "c", prog, where=b)
    finish(ctx, b, "c")


def postcopy_source_lost(ctx):
    """Post-copy cannot survive losing the source after the hand-over (documented): the
    destination's copy, missing pages that will never come, is ended, not left hanging, and
    the source node, back, ends its frozen copy: none runs."""
    key = make_key(ctx)
    a = Node(ctx, "A", key).start(FERRY_TEST_MIGRATE_KILL="src-postcopy")
    b = Node(ctx, "B", key).start()
    prog = start_compute(ctx, a)
    a.ferry("migrate", "c", "--to", b.addr, "--mode", "postcopy", ok=False, timeout=120)
    a.wait_dead()
    a.start()

    def none_left():
        procs = copies_of(prog)
        on = [n.name for n in (a, b) for _ in n.running("c")]
        return not procs and not on
    ctx.wait_for("no copy left after the source was lost in post-copy", none_left, 30)


def postcopy_sparse(ctx):
    """Post-copy defers whole anonymous mappings without scanning them in the freeze: a 1 GiB
    mapping of which python3 wrote one page in 256 arrives intact, its empty pages are neither
    sent (MSG_ZERO) nor allocated at the destination (the filler leaves them unfilled)."""
    py = h.need("python3")
    key = make_key(ctx)
    a, b = Node(ctx, "A", key).start(), Node(ctx, "B", key).start()
    go = os.path.join(ctx.root, "sparse-go")
    code = ("import mmap, os, sys, time\n"
            "m = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
            "for i in range(0, 1 << 30, 1 << 20):\n    m[i] = (i >> 20) % 251 + 1\n"
            "print('READY', flush=True)\n"
            "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\n"
            "bad = sum(m[i] != (i >> 20) % 251 + 1 for i in range(0, 1 << 30, 1 << 20))\n"
            "rss = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')]\n"
            "print('CHECK', bad, rss[0], flush=True)\n"
            "while True:\n    time.sleep(1)\n")
    a.ferry("run", "--name", "s", "--", py, "-c", code, go)
    ctx.wait_for("s READY", lambda: "READY" in a.ferry("logs", "s")[1], 30)
    _, j, _ = migrate(ctx, a, "s", b, "--mode", "postcopy")
    if j.get("post_error") or j["bytes_postcopy"] > 64 << 20:
        raise h.Fail(f"post-copy of a sparse GiB sent {j['bytes_postcopy']} bytes: {j}")
    lazy = os.path.join(b.state, "s", "lazy")
    ctx.wait_for("the destination's filler to end", lambda: not os.path.exists(lazy), 30)
    open(go, "w").close()
    log = ctx.wait_for("CHECK", lambda: (lambda t: t if "CHECK" in t else None)(
        b.ferry("logs", "s")[1]), 30)
    bad, rss = [line.split()[1:] for line in log.splitlines() if line.startswith("CHECK")][0]
    if bad != "0" or int(rss) > 256 << 10:
        raise h.Fail(f"after post-copy: {bad} pages wrong, VmRSS {rss} kB (empty pages "
                     "must stay unallocated)", h.tail(log, 3))


def wrong_key(ctx):
    """A node with another key is refused before anything is sent; the component runs on."""
    a = Node(ctx, "A", make_key(ctx)).start()
    x = Node(ctx, "X", make_key(ctx, "other.key")).start()
    prog = start_compute(ctx, a)
    rc, _, err = migrate(ctx, a, "c", x, ok=False)
    if rc != 1 or "authentication" not in err:
        raise h.Fail(f"migration to a node with another key: exit {rc}, {err!r}")
    one_copy(ctx, [a, x], "c", prog, where=a)
    if os.path.isdir(os.path.join(x.state, "migrations")) and any(
            f.startswith("in-") for f in os.listdir(os.path.join(x.state, "migrations"))):
        raise h.Fail("the refused node kept something of the stream")
    finish(ctx, a, "c")


def files_differ(ctx):
    """A file the component has open differs at the destination (its own mount namespace):
    refused with the list; with --carry-files the file goes along."""
    py = h.need("python3")
    data_dir = os.path.join(ctx.root, "data")
    os.makedirs(data_dir)
    data = os.path.join(data_dir, "calibration.txt")
    with open(data, "w") as f:
        f.write("source calibration 42\n")
    key = make_key(ctx)
    a = Node(ctx, "A", key).start()

    def own_mounts(argv):
        script = ('mount -t tmpfs tmpfs "$0" && echo "destination calibration 7" > '
                  '"$0/calibration.txt" && exec "$@"')
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, data_dir,
                *argv]
    b = Node(ctx, "B", key, wrap=own_mounts).start()
    code = (f"import time\nf = open({data!r})\nprint('READY', f.read().strip(), flush=True)\n"
            "while True:\n    time.sleep(0.1)\n")
    a.ferry("run", "--name", "p", "--", py, "-c", code)
    ctx.wait_for("p READY", lambda: "READY" in a.ferry("logs", "p")[1], 20)
    rc, _, err = migrate(ctx, a, "p", b, ok=False)
    if rc != 1 or data not in err or "--carry-files" not in err:
        raise h.Fail(f"differing file: exit {rc}, {err!r}")
    if not a.running("p") or b.running("p"):
        raise h.Fail("after a refused migration the component must run on at the source only")
    migrate(ctx, a, "p", b, "--carry-files")
    if not b.running("p") or a.running("p"):
        raise h.Fail("after --carry-files the component must run at the destination only")
    rc, out, err = h.run_cmd(["nsenter", "-t", str(b.proc.pid), "-m", "cat", data])
    if out != "source calibration 42\n":
        raise h.Fail(f"the carried file reads {out!r} at the destination ({err.strip()})")


def log_moves(ctx):
    """python3 prints a numbered line every millisecond while it moves in each mode: the file
    check leaves its growing log alone (the log moves by itself), and the log at the end holds
    every line once, in order, none lost or repeated across the moves."""
    py = h.need("python3")
    key = make_key(ctx)
    a, b = Node(ctx, "A", key).start(), Node(ctx, "B", key).start()
    code = ("import time\ni = 0\nwhile True:\n    print(i, flush=True)\n    i += 1\n"
            "    time.sleep(0.001)\n")
    a.ferry("run", "--name", "p", "--", py, "-c", code)
    ctx.wait_for("p printing", lambda: len(a.ferry("logs", "p")[1]) > 100, 20)
    at, other = a, b
    for mode in ("stop-and-copy", "postcopy", "precopy", "postcopy", "stop-and-copy"):
        migrate(ctx, at, "p", other, "--mode", mode)
        at, other = other, at
        if not at.running("p") or other.running("p"):
            raise h.Fail(f"after {mode}: p must run on {at.name} only")
        time.sleep(0.2)
    log = at.ferry("logs", "p")[1]
    lines = log.splitlines()
    if len(lines) < 500 or lines[-1] == "":
        raise h.Fail(f"only {len(lines)} lines in the moved log", h.tail(log, 4))
    for n, line in enumerate(lines[:-1]):  # the last may be cut mid-write
        if line != str(n):
            raise h.Fail(f"log line {n} reads {line!r} after five moves",
                         "\n".join(lines[max(n - 3, 0):n + 3]))


# Where the component must run after a node dies (kill) or the link breaks (cut) at a point
# of the protocol: before the decision at the source, or after it at the destination.
KILL_POINTS = (("src-offer", "A"), ("src-precopy", "A"), ("src-frozen", "A"),
               ("src-prepared", "A"), ("src-ready", "A"), ("src-decided", "B"),
               ("src-go", "B"), ("dst-link", "A"), ("dst-prepare", "A"))
CUT_POINTS = (("src-precopy", "A"), ("src-prepared", "A"), ("src-ready", "B"),
              ("dst-ready", None))


def kill_point(ctx, point, where, cut):
    key = make_key(ctx)
    a, b = Node(ctx, "A", key), Node(ctx, "B", key)
    hook = {"FERRY_TEST_MIGRATE_CUT" if cut else "FERRY_TEST_MIGRATE_KILL": point}
    victim = a if point.startswith("src-") else b
    (a.start(**hook) if victim is a else a.start())
    (b.start(**hook) if victim is b else b.start())
    prog = start_compute(ctx, a)
    # it may fail or succeed unconfirmed: what counts is where the component runs after
    a.ferry("migrate", "c", "--to", b.addr, ok=False, timeout=120)
    if not cut:
        victim.wait_dead()
        victim.start()  # the node comes back (without the hook) and settles what it left
    else:
        victim.stop()
        victim.start()
    node = one_copy(ctx, [a, b], "c", prog, where={"A": a, "B": b, None: None}[where])
    finish(ctx, node, "c")


def random_kills(ctx):
    """Either daemon killed at a random moment of a migration, six times over; each time
    exactly one copy survives, and the result is still the uninterrupted run's."""
    key = make_key(ctx)
    a, b = Node(ctx, "A", key).start(), Node(ctx, "B", key).start()
    reference_result(ctx, ROUNDS * 2)
    prog = start_compute(ctx, a, rounds=ROUNDS * 2)
    at, other = a, b
    rng = random.Random(os.getpid())
    for _ in range(6):
        p = subprocess.Popen([ctx.ferry_bin, "migrate", "c", "--to", other.addr], env=at.env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, 0.4))
        victim = rng.choice((at, other))
        victim.sigkill()
        p.wait(timeout=60)
        victim.start()
        at = one_copy(ctx, [a, b], "c", prog)
        other = b if at is a else a
    finish(ctx, at, "c", rounds=ROUNDS * 2)


def veth(ctx):
    """Two nodes in network namespaces joined by a veth pair: there and back over it."""
    if not h.shutil.which("ip"):
        raise h.Fail("no `ip` (iproute2) to create network namespaces")
    tag = f"{os.getpid() % 10000}{random.randrange(100, 999)}"
    ns = (f"ferry{tag}a", f"ferry{tag}b")
    dev = (f"fv{tag}a", f"fv{tag}b")
    net = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"

    def ip(*args):
        rc, _, err = h.run_cmd(["ip", *args])
        if rc != 0:
            raise h.Fail(f"ip {' '.join(args)}: {err.strip()}")

    def remove():
        for n in ns:
            h.run_cmd(["ip", "netns", "del", n])
    ctx.on_cleanup.append(remove)  # runs after the nodes' cleanups (registered later)
    for n in ns:
        ip("netns", "add", n)
    ip("link", "add", dev[0], "netns", ns[0], "type", "veth", "peer", "name", dev[1], "netns",
       ns[1])
    for i, n in enumerate(ns):
        ip("-n", n, "addr", "add", f"{net}.{i + 1}/24", "dev", dev[i])
        ip("-n", n, "link", "set", dev[i], "up")
        ip("-n", n, "link", "set", "lo", "up")
    key = make_key(ctx)
    a = Node(ctx, "A", key, host=f"{net}.1", netns=ns[0]).start()
    b = Node(ctx, "B", key, host=f"{net}.2", netns=ns[1]).start()
    ctx.on_cleanup.remove(remove)
    ctx.on_cleanup.append(remove)
    prog = start_compute(ctx, a)
    migrate(ctx, a, "c", b)
    one_copy(ctx, [a, b], "c", prog, where=b)
    migrate(ctx, b, "c", a, "--compress")
    one_copy(ctx, [a, b], "c", prog, where=a)
    finish(ctx, a, "c")


def tcp_stays(ctx):
    """A component with an established TCP connection to a peer on this host (the harness):
    the destination cannot take the connection over while the source still holds it, so each
    mode's migration fails at the destination's restore, and the component runs on at the
    source with the connection intact (every byte once, in order, then an echo exchange)."""
    key = make_key(ctx)
    a = Node(ctx, "A", key).start()
    b = Node(ctx, "B", key).start()
    scratch = ctx.scratch
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn = None
    try:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        ls.settimeout(10)
        with open(os.path.join(scratch, "port"), "w") as f:
            f.write(str(ls.getsockname()[1]))
        a.ferry("run", "--name", "c", "--", os.path.join(ctx.features, "feature-tcp_conn"),
                scratch)
        conn, _ = ls.accept()
        conn.sendall(bytes(i % 251 for i in range(64 * 1024)))
        ctx.wait_for("READY", lambda: "READY" in a.ferry("logs", "c")[1])
        for mode in ("precopy", "postcopy", "stop-and-copy"):
            rc, _, err = migrate(ctx, a, "c", b, "--mode", mode, ok=False)
            if rc == 0 or "taking the connection over" not in err:
                raise h.Fail(f"{mode}: exit {rc}, expected the connection to stay: "
                             f"{h.tail(err, 2)}", a.logs() + "\n" + b.logs())
            if not a.running("c") or b.running("c"):
                raise h.Fail(f"{mode}: the component is not (only) at the source")
        open(os.path.join(scratch, "go"), "w").close()
        conn.settimeout(10)
        got = bytearray()
        while len(got) < 512 * 1024:
            chunk = conn.recv(65536)
            if not chunk:
                raise h.Fail(f"EOF after {len(got)} bytes")
            got += chunk
        if bytes(got) != bytes(i % 253 for i in range(512 * 1024)):
            raise h.Fail("the program's bytes differ after the failed migrations")
        f = conn.makefile("rb")
        for i in range(50):
            conn.sendall(b"ping %d\n" % i)
            if f.readline() != b"ping %d\n" % i:
                raise h.Fail(f"echo {i} failed")
        conn.sendall(b"END\n")
        ctx.wait_for("PASS", lambda: "PASS" in a.ferry("logs", "c")[1])
    except (OSError, socket.timeout) as e:
        raise h.Fail(f"the peer's connection failed: {e}")
    finally:
        if conn:
            conn.close()
        ls.close()


def tree_moves(ctx):
    """A process tree (feature tree: five live processes, two zombies, pipes, shared memory
    and a shared file between them) moves A -> B (pre-copy), back (post-copy) and there
    again (stop-and-copy); then it checks itself where it ended: PASS."""
    key = make_key(ctx)
    a, b = Node(ctx, "A", key).start(), Node(ctx, "B", key).start()
    prog = ctx.feature("tree")
    a.ferry("run", "--name", "t", "--", *prog)
    ctx.wait_for("t READY", lambda: "READY" in a.ferry("logs", "t")[1], 20)
    at = a
    for mode in ("precopy", "postcopy", "stop-and-copy"):
        to = b if at is a else a
        migrate(ctx, at, "t", to, "--mode", mode)

        def moved(to=to):
            live = copies_of(prog[0])
            on = [n.name for n in (a, b) for _ in n.running("t")]
            return len(live) == 5 and on == [to.name]
        ctx.wait_for(f"the tree on {to.name} only, five live processes ({mode})", moved, 30)
        at = to
    ctx.go()
    log = ctx.wait_for("PASS or FAIL", lambda: (lambda t: t if re.search(
        r"^(PASS|FAIL)", t, re.M) else None)(at.ferry("logs", "t")[1]), 30)
    if "PASS" not in log.splitlines():
        raise h.Fail("the tree after three moves", h.tail(log, 3))


def tests():
    t = [("there-and-back", there_and_back), ("modes", modes),
         ("postcopy-source-lost", postcopy_source_lost), ("postcopy-sparse", postcopy_sparse), ("wrong-key", wrong_key),
         ("files", files_differ), ("log", log_moves), ("veth", veth), ("random-kills", random_kills),
         ("tcp-stays", tcp_stays), ("tree", tree_moves)]
    for point, where in KILL_POINTS:
        t.append((f"kill-{point}", lambda ctx, p=point, w=where: kill_point(ctx, p, w, False)))
    for point, where in CUT_POINTS:
        t.append((f"cut-{point}", lambda ctx, p=point, w=where: kill_point(ctx, p, w, True)))
    return [(name, fn, MIGRATE_TIMEOUT) for name, fn in t]
