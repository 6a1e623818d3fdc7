#!/usr/bin/env python3
"""ferry's test harness: unit tests, then feature programs, foreign programs and refusals
checkpointed and restored through the ferry CLI of every --build directory.

Prints `PASS name` or `FAIL name: reason` per test and ends with `N passed, N failed`.
Exit status 1 if any test failed.
"""

import argparse
import difflib
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

import migrate_tests
import services_tests
import sessions_tests

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_TIMEOUT = 30  # seconds per test
FOREIGN_TIMEOUT = 60  # foreign programs run twice (reference and checkpointed)
INCREMENTAL_TIMEOUT = 60  # chains of checkpoints of components that write much memory
POLL = 0.05

# Feature programs that change files in their scratch directory: a checkpoint that lets them
# run on would let them write past the image, so their "restore" variant stops them.
WRITES_FILES = {"append_file"}
# Feature programs used by the refusal tests only.
REFUSAL_ONLY = {"unsupported_fd", "inotify_queued", "tcp_conn", "unix_inflight", "seccomp_filter"}
# Feature programs used by the incremental tests only (their protocol has steps and more lines).
INCREMENTAL_ONLY = {"incr_pattern", "incr_reuse"}
# Feature programs used by the migration tests only (tests/migrate_tests.py).
MIGRATE_ONLY = {"mig_compute"}
# /proc/PID/status fields that must be equal before checkpoint and after restore.
STATUS_FIELDS = ("Threads", "SigBlk", "SigIgn", "SigCgt", "ShdPnd", "Umask")

VERBOSE = False


def safe_kill(pid, sig):
    """The only way this harness sends a signal: never to pid <= 0 (kill(-1) ends the machine)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError(f"safe_kill: refusing to signal pid {pid!r}")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def say(msg):
    if VERBOSE:
        print(f"  .. {msg}", flush=True)


class Fail(Exception):
    """A test failure: a one-line reason and optional detail lines."""

    def __init__(self, reason, details=""):
        super().__init__(reason)
        self.reason = reason
        self.details = details


def tail(text, n=12):
    lines = text.rstrip("\n").split("\n") if text.strip() else []
    return "\n".join(lines[-n:])


def _read(path):
    with open(path, errors="replace") as f:
        return f.read()


def run_cmd(argv, env=None, cwd=None, timeout=20, watch=()):
    """Run argv to completion with output in files (a detached monitor may inherit them, so
    pipes could stay open forever). Returns (rc, stdout, stderr); rc None on timeout, and then
    stderr ends with where its threads (and those of the pids in watch) were stuck."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                             cwd=cwd)
        try:
            rc = p.wait(timeout=max(timeout, 0.5))
        except subprocess.TimeoutExpired:
            stuck = where_stuck(p.pid)
            stuck += "".join(f"\n[harness] pid {w}: {where_stuck(w)}" for w in watch
                             if os.path.exists(f"/proc/{w}"))
            safe_kill(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
            err.write(f"\n[harness] killed after {timeout:.0f} s; its threads: {stuck}\n")
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read()


def where_stuck(pid, depth=0):
    """State, system call and wait channel of each thread of pid (and of its children), for a
    timeout report."""
    found = []
    try:
        for t in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            base = f"/proc/{pid}/task/{t}"
            state = _read(f"{base}/stat").rsplit(")", 1)[1].split()[0]
            found.append(f"{t} {state} syscall {_read(base + '/syscall').split()[0]} "
                         f"wchan {_read(base + '/wchan')}")
    except (OSError, IndexError):
        pass
    text = "; ".join(found) or "gone"
    if depth < 2:
        for child in children(pid):
            text += f"; child {child} ({_comm(child)}): {where_stuck(child, depth + 1)}"
    return text


def _comm(pid):
    try:
        return _read(f"/proc/{pid}/comm").strip()
    except OSError:
        return "?"


def children(pid):
    found = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(_read(f"/proc/{d}/stat").rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return found


# ---------------------------------------------------------------------------------------------
# /proc snapshots


def proc_snapshot(pid):
    """What must not change across checkpoint/restore: memory map, fds, signal state, threads."""
    base = f"/proc/{pid}"
    snap = {}
    try:
        maps = []
        for line in _read(f"{base}/maps").splitlines():
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) > 5 else ""
            maps.append(f"{parts[0]} {parts[1]} {parts[2]} {path}")  # addr perms offset path
        snap["maps"] = maps
        fds = []
        for fd in sorted(os.listdir(f"{base}/fd"), key=int):
            target = re.sub(r"^(socket|pipe):\[\d+\]$", r"\1:[*]", os.readlink(f"{base}/fd/{fd}"))
            # an O_TMPFILE file is named after its inode, which no restore keeps
            target = re.sub(r"/#\d+ \(deleted\)$", "/#* (deleted)", target)
            flags = re.search(r"^flags:\s*(\S+)", _read(f"{base}/fdinfo/{fd}"), re.M)
            fds.append(f"{fd} -> {target} flags {flags.group(1) if flags else '?'}")
        snap["fds"] = fds
        status = dict(re.findall(r"^(\w+):\s*(.*)$", _read(f"{base}/status"), re.M))
        # a signal pending that the process catches and does not block is being delivered
        # at this instant (a ticking timer's): not state a restore keeps
        try:
            transient = int(status["SigCgt"], 16) & ~int(status["SigBlk"], 16)
            status["ShdPnd"] = f"{int(status['ShdPnd'], 16) & ~transient:016x}"
        except (KeyError, ValueError):
            pass
        snap["status"] = [f"{k}: {status.get(k)}" for k in STATUS_FIELDS]
        snap["links"] = [f"exe -> {os.readlink(base + '/exe')}",
                         f"cwd -> {os.readlink(base + '/cwd')}"]
        tasks = []
        for t in os.listdir(f"{base}/task"):
            st = dict(re.findall(r"^(\w+):\s*(.*)$", _read(f"{base}/task/{t}/status"), re.M))
            nstid = st.get("NSpid", "?").split()[-1]
            tasks.append((int(nstid) if nstid.isdigit() else -1, st.get("SigBlk")))
        snap["threads"] = [f"tid {t} SigBlk {b}" for t, b in sorted(tasks)]
    except (OSError, ValueError, IndexError) as e:
        raise Fail(f"cannot read /proc/{pid}: {e}")
    return snap


def compare_snapshots(before, after, when):
    changed = [k for k in before if before[k] != after.get(k)]
    diffs = []
    for key in changed:
        d = list(difflib.unified_diff(before[key], after.get(key, []), "before", when,
                                      lineterm="", n=0))
        diffs.append(f"[{key}]\n" + "\n".join(d[2:22]))  # skip the ---/+++ header
    if changed:
        raise Fail(f"/proc differs {when} ({', '.join(changed)})", "\n".join(diffs))


def stray_processes(marker):
    """Processes (other than us) whose command line or cwd names marker."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = _read(f"/proc/{d}/cmdline").replace("\0", " ").strip()
            cwd = os.readlink(f"/proc/{d}/cwd")
        except OSError:
            continue
        if cmd and (marker in cmd or cwd == marker or cwd.startswith(marker + "/")):
            found.append((int(d), cmd))
    return found


# ---------------------------------------------------------------------------------------------
# One test's world: a state dir, a scratch dir, the components it started.


class Ctx:
    def __init__(self, tmp, ferry, features, timeout):
        self.root = tempfile.mkdtemp(prefix="t-", dir=tmp)
        self.state = os.path.join(self.root, "state")
        self.scratch = os.path.join(self.root, "scratch")
        os.makedirs(self.scratch)
        self.ferry_bin = ferry
        self.features = features
        self.env = dict(os.environ, FERRY_STATE_DIR=self.state)
        self.names = []
        self.pids = {}  # host pids seen in `ferry ps`, for reports
        self.deadline = time.monotonic() + timeout
        self.last_cmd = ""
        self.last_err = ""
        self.on_cleanup = []  # callables run first by cleanup (nodes, namespaces)

    def left(self):
        return self.deadline - time.monotonic()

    def ferry(self, *args, ok=True, cwd=None):
        """Run `ferry ARGS`; with ok, a non-zero exit is a failure. Returns (rc, out, err)."""
        if self.left() <= 0:
            raise Fail(f"test timed out before `ferry {' '.join(args)}`")
        say("ferry " + " ".join(args))
        rc, out, err = run_cmd([self.ferry_bin, *args], env=self.env, cwd=cwd or self.scratch,
                               timeout=min(20, self.left()), watch=list(self.pids))
        self.last_cmd, self.last_err = "ferry " + " ".join(args), err
        if rc is None:
            raise Fail(f"`ferry {' '.join(args)}` did not finish in time")
        if ok and rc != 0:
            raise Fail(f"`ferry {' '.join(args)}` exited {rc}: {tail(err, 1)}")
        return rc, out, err

    def start(self, name, argv, cwd=None):
        self.names.append(name)
        self.ferry("run", "--name", name, "--", *argv, cwd=cwd)

    def feature(self, prog):
        return [os.path.join(self.features, f"feature-{prog}"), self.scratch]

    def forget(self, name):
        """`ferry kill NAME`, where a component already ended (checkpoint --stop) may also
        have been forgotten already."""
        rc, _, err = self.ferry("kill", name, ok=False)
        if rc != 0 and self.component(name) is not None:
            raise Fail(f"`ferry kill {name}` exited {rc}: {tail(err, 1)}")

    def ps(self):
        _, out, _ = self.ferry("ps", "--json")
        try:
            return json.loads(out)
        except ValueError as e:
            raise Fail(f"`ferry ps --json` is not JSON ({e}): {out[:200]!r}")

    def component(self, name):
        return next((c for c in self.ps() if c.get("name") == name), None)

    def pid(self, name):
        c = self.component(name)
        if (not c or c.get("state") == "exited" or not isinstance(c.get("pid"), int)
                or c["pid"] <= 0):
            raise Fail(f"no running component {name} in `ferry ps`: {c}")
        self.pids[c["pid"]] = name
        return c["pid"]

    def log(self, name):
        return self.ferry("logs", name)[1]

    def wait_for(self, what, probe, limit=None):
        """Poll probe() until it returns something true; fail after the test's time or limit."""
        end = self.deadline if limit is None else min(self.deadline, time.monotonic() + limit)
        while True:
            r = probe()
            if r:
                return r
            if time.monotonic() > end:
                raise Fail(f"timed out waiting for {what}")
            time.sleep(POLL)

    def wait_line(self, name, pattern):
        rx = re.compile(pattern, re.M)

        def probe():
            log = self.log(name)
            return log if rx.search(log) else None
        return self.wait_for(f"{pattern!r} in the log of {name}", probe)

    def wait_exited(self, name):
        def probe():
            c = self.component(name)
            if c is None:
                raise Fail(f"component {name} vanished from `ferry ps`")
            return c if c.get("state") == "exited" else None
        return self.wait_for(f"{name} to exit", probe)

    def go(self):
        open(os.path.join(self.scratch, "go"), "w").close()

    def details(self):
        parts = []
        for n in self.names:
            try:
                rc, out, _ = run_cmd([self.ferry_bin, "logs", n], env=self.env, timeout=5)
                if rc == 0:
                    parts.append(f"log of {n}:\n{tail(out, 8)}")
            except OSError:
                pass
        if self.last_err.strip():
            parts.append(f"stderr of `{self.last_cmd}`:\n{tail(self.last_err, 8)}")
        return "\n".join(parts)

    def cleanup(self):
        """ferry kill every component; then end (by pid) anything still naming our dirs."""
        problems = []
        for fn in self.on_cleanup:
            try:
                fn()
            except Exception as e:  # cleanup goes on; the strays check below reports
                say(f"cleanup: {e}")
        for n in dict.fromkeys(self.names):
            rc, _, err = run_cmd([self.ferry_bin, "kill", n], env=self.env, timeout=15)
            if rc != 0:  # often just "no component": it was killed or forgotten already
                say(f"cleanup: ferry kill {n}: {tail(err, 1)}")
        end = time.monotonic() + 3
        strays = stray_processes(self.root)
        while strays and time.monotonic() < end:
            time.sleep(0.1)
            strays = stray_processes(self.root)
        for pid, cmd in strays:
            problems.append(f"left running after ferry kill: pid {pid}: {cmd[:120]}")
            safe_kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


# ---------------------------------------------------------------------------------------------
# Feature programs


def expect_log(ctx, name, want):
    log = ctx.wait_line(name, r"^(PASS|FAIL.*)$")
    if log != want:
        fail = re.search(r"^FAIL.*$", log, re.M)
        raise Fail(fail.group(0) if fail else f"log is {log!r}, expected {want!r}")
    c = ctx.wait_exited(name)
    if c.get("exit_status") != 0:
        raise Fail(f"{name} exited with status {c.get('exit_status')}")


def no_sockets(d, names):
    """copytree's ignore: sockets (a restore binds them again) and the go file."""
    return [n for n in names if n == "go" or stat.S_ISSOCK(os.lstat(os.path.join(d, n)).st_mode)]


def copy_special(src, dst):
    """copytree's copy: a FIFO made again (opening it to copy would wait for a writer)."""
    if stat.S_ISFIFO(os.lstat(src).st_mode):
        os.mkfifo(dst, 0o600)
    else:
        shutil.copy2(src, dst)


def snapshot_dir(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=no_sockets, copy_function=copy_special)


def restore_dir(src, dst):
    shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=copy_special)


def feature_restore(ctx, prog, lazy=False):
    """run -> READY -> checkpoint -> kill -> restore -> go -> PASS; /proc equal across.
    lazy: `restore --lazy`, the pages of anonymous mappings come on first touch and from the
    background filler; a page not supplied reads as zeros: FAIL."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature(prog))
    ctx.wait_line("c", "^READY$")
    before = proc_snapshot(ctx.pid("c"))
    ctx.ferry("checkpoint", "c", "--dir", img, *(["--stop"] if prog in WRITES_FILES else []))
    ctx.forget("c")
    ctx.ferry("restore", "--dir", img, "--name", "c", *(["--lazy"] if lazy else []))
    # adjacent mappings of equal protection merged: two anonymous mappings the kernel kept
    # apart only because each got its own anon_vma (AddressSanitizer's allocator, depending on
    # where ASLR put them) are one after a restore maps them together; nothing else differs
    compare_snapshots(same_layout(before), same_layout(proc_snapshot(ctx.pid("c"))),
                      "after lazy restore" if lazy else "after restore")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def lazy_checkpoint_filling(ctx, memhog):
    """256 MiB restored lazily and checkpointed at once, with the image it came from as
    parent: the link is incremental (one userfaultfd supplies pages and tracks writes) and
    holds every page (the checkpoint waits for the filler), so a plain restore of it PASSes."""
    d = [os.path.join(ctx.root, f"d{i}") for i in range(2)]
    go = os.path.join(ctx.scratch, "go")
    ctx.start("c", [memhog, "256", go])
    log = ctx.wait_line("c", "^READY ")
    ctx.ferry("checkpoint", "c", "--dir", d[0])
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[0], "--name", "c", "--lazy")
    j = ckpt_json(ctx, "c", "--dir", d[1], "--parent", d[0])
    expect_incremental(j, d[0], "d1")
    if not isinstance(j.get("pages_written"), int) or j["pages_written"] > 1024:
        raise Fail(f"d1: {j.get('pages_written')} pages written, expected a few: {brief(j)}")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[1], "--name", "c")
    ctx.go()
    log = ctx.wait_line("c", r"^(PASS|FAIL)")
    if not re.search(r"^PASS ", log, re.M):
        raise Fail("the restored link is not the memory checkpointed", tail(log, 2))


LAZY_FEATURES = ("heap_stack", "threads8", "threads40", "mappings", "incr_threads")


def feature_twice(ctx, prog):
    """checkpoint --stop -> restore -> kill -> restore again from the same image -> PASS."""
    img = os.path.join(ctx.root, "img")
    saved = os.path.join(ctx.root, "scratch-at-checkpoint")
    ctx.start("c", ctx.feature(prog))
    ctx.wait_line("c", "^READY$")
    before = proc_snapshot(ctx.pid("c"))
    ctx.ferry("checkpoint", "c", "--dir", img, "--stop")
    c = ctx.component("c")
    if c and c.get("state") != "exited":
        raise Fail(f"after checkpoint --stop the component is {c.get('state')}")
    snapshot_dir(ctx.scratch, saved)  # files as they were at the checkpoint
    ctx.ferry("restore", "--dir", img)
    compare_snapshots(same_layout(before), same_layout(proc_snapshot(ctx.pid("c"))),
                      "after first restore")
    ctx.ferry("kill", "c")
    restore_dir(saved, ctx.scratch)
    ctx.ferry("restore", "--dir", img)
    compare_snapshots(same_layout(before), same_layout(proc_snapshot(ctx.pid("c"))),
                      "after second restore")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def feature_live(ctx, prog):
    """checkpoint without --stop leaves the program as it was: /proc equal, PASS after go."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature(prog))
    ctx.wait_line("c", "^READY$")
    pid = ctx.pid("c")
    before = proc_snapshot(pid)
    ctx.ferry("checkpoint", "c", "--dir", img)
    if ctx.pid("c") != pid:
        raise Fail(f"pid changed from {pid} to {ctx.pid('c')} by a checkpoint")
    compare_snapshots(before, proc_snapshot(pid), "after checkpoint")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


# ---------------------------------------------------------------------------------------------
# Programs nobody here wrote: run once uninterrupted, once checkpointed mid-way; same output.


def sqlite_script(path, steps=40, rows=20000):
    lines = ["CREATE TABLE t(step INTEGER, x INTEGER, y INTEGER);", "CREATE INDEX t_y ON t(y);"]
    for s in range(1, steps + 1):
        lines.append(f"BEGIN; INSERT INTO t SELECT {s}, x, (x * x * {s} + 7) % 1000003 FROM "
                     f"(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                     f"WHERE x < {rows}) SELECT x FROM c); COMMIT;")
        lines.append(f"SELECT 'step', {s}, count(*), sum(y) FROM t;")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def db_summary(ctx, sqlite, db):
    rc, out, err = run_cmd([sqlite, db, "PRAGMA integrity_check; SELECT count(*), sum(y), "
                            "sum(x * step) FROM t;"], timeout=max(ctx.left(), 1))
    if rc != 0:
        raise Fail(f"reading {db}: {tail(err, 1)}")
    return out


def foreign_test(ctx, argv, mid_pattern, setup=None, db=None):
    ref_dir = os.path.join(ctx.scratch, "ref")
    run_dir = os.path.join(ctx.scratch, "ckpt")
    img = os.path.join(ctx.root, "img")
    for d in (ref_dir, run_dir):
        os.makedirs(d)
        if setup:
            setup(d)
    ctx.start("ref", argv, cwd=ref_dir)
    c = ctx.wait_exited("ref")
    want = ctx.log("ref")
    if c.get("exit_status") != 0 or not re.search(mid_pattern, want, re.M):
        raise Fail(f"the uninterrupted run exited {c.get('exit_status')}", tail(want, 5))

    ctx.start("c", argv, cwd=run_dir)
    ctx.wait_line("c", mid_pattern)
    ctx.ferry("checkpoint", "c", "--dir", img, "--stop")
    ctx.forget("c")
    ctx.ferry("restore", "--dir", img, "--name", "c")
    c = ctx.wait_exited("c")
    got = ctx.log("c")
    if got != want:
        d = difflib.unified_diff(want.splitlines(), got.splitlines(), "uninterrupted",
                                 "restored", lineterm="", n=1)
        raise Fail("output differs from the uninterrupted run's",
                   "\n".join(list(d)[:20]))
    if c.get("exit_status") != 0:
        raise Fail(f"restored run exited with status {c.get('exit_status')}")
    if db:
        a = db_summary(ctx, db[0], os.path.join(ref_dir, db[1]))
        b = db_summary(ctx, db[0], os.path.join(run_dir, db[1]))
        if a != b:
            raise Fail(f"database differs: uninterrupted {a.split()} restored {b.split()}")


def need(prog):
    path = shutil.which(prog)
    if not path:
        raise Fail(f"{prog} is not installed (make check installs it)")
    return os.path.realpath(path)


def foreign_redis(ctx):
    """redis-server with a client connected over TCP: keys written before `checkpoint --stop`
    are read back after the restore, through the same connection (TCP_REPAIR; its segments
    dropped by the network lock in between), which goes on working; a new client connects
    to the restored listener."""
    need("redis-server")
    srv = shutil.which("redis-server")  # a link: redis-check-rdb reads its argv[0]
    img = os.path.join(ctx.root, "img")
    data = os.path.join(ctx.root, "redis")
    os.makedirs(data)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ctx.start("r", [srv, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", data])
    ctx.wait_line("r", "Ready to accept connections")

    def client():
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        return c, c.makefile("rb")

    def cmd(conn, *args):
        c, f = conn
        c.sendall(b"*%d\r\n" % len(args) +
                  b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        line = f.readline()
        if line.startswith(b"$") and line != b"$-1\r\n":
            return f.read(int(line[1:]) + 2)[:-2]
        return line.rstrip(b"\r\n")

    conn = None
    try:
        conn = client()
        for i in range(1000):
            if cmd(conn, b"SET", b"key:%d" % i, b"value %d" % (i * i)) != b"+OK":
                raise Fail(f"SET key:{i} failed")
        ctx.ferry("checkpoint", "r", "--dir", img, "--stop")
        ctx.ferry("restore", "--dir", img, "--name", "r")
        for i in range(0, 1000, 7):
            got = cmd(conn, b"GET", b"key:%d" % i)
            if got != b"value %d" % (i * i):
                raise Fail(f"GET key:{i} on the same connection after the restore: {got!r}")
        if cmd(conn, b"SET", b"after", b"restore") != b"+OK" or cmd(conn, b"DBSIZE") != b":1001":
            raise Fail("the connection does not go on working after the restore")
        other = client()
        if cmd(other, b"GET", b"after") != b"restore":
            raise Fail("a new client of the restored server does not see the key")
        other[0].close()
    except (OSError, socket.timeout) as e:
        raise Fail(f"the client's connection failed: {e}", tail(ctx.log("r"), 5))
    finally:
        if conn:
            conn[0].close()


def foreign_python(ctx):
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else need("python3")
    foreign_test(ctx, [py, os.path.join(HERE, "e2e", "compute.py")], r"^step 10 ")


def tree_cow_shared(ctx):
    """A root with 16 MiB forks three children that each write one page: the pages they still
    share copy-on-write are stored once (4096 shared by three children: at least 3 * 4095
    named twice, the image's own pages about 16 MiB, not 64), and after the restore every
    process has its own contents (PASS). inspect shows the tree: parent of each child."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("cow_tree"))
    ctx.wait_line("c", "^READY$")
    j = ckpt_json(ctx, "c", "--dir", img, "--stop")
    if j.get("processes") != 4:
        raise Fail(f"{j.get('processes')} processes checkpointed, expected 4: {brief(j)}")
    if not isinstance(j.get("pages_shared"), int) or j["pages_shared"] < 3 * 4095:
        raise Fail(f"{j.get('pages_shared')} pages stored once for parent and children, "
                   f"expected at least {3 * 4095}: {brief(j)}")
    if not isinstance(j.get("pages_written"), int) or j["pages_written"] > 4096 + 1024:
        raise Fail(f"{j.get('pages_written')} pages written, expected about 4096 (16 MiB "
                   f"once): {brief(j)}")
    procs = inspect_json(ctx, img).get("processes", [])
    kids = [p for p in procs if p.get("ppid") == 1]
    if len(procs) != 4 or len(kids) != 3:
        raise Fail(f"inspect shows {len(procs)} processes, {len(kids)} children of pid 1")
    ctx.forget("c")
    ctx.ferry("restore", "--dir", img, "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


NGINX_CONF = """daemon off;
master_process on;
worker_processes 2;
user nobody nogroup;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  scgi_temp_path {d}/scgi;
  uwsgi_temp_path {d}/uwsgi;
  keepalive_timeout 300;
  keepalive_requests 1000;
  server {{ listen 127.0.0.1:{port}; root {d}/www; location / {{ }} }}
}}
"""


def http_get(sock, path):
    """One HTTP/1.1 request on sock (kept alive); the body of the response."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: ferry\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise Fail(f"GET {path}: connection closed after {data[:80]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    m = re.search(rb"content-length: *(\d+)", head, re.I)
    if not head.startswith(b"HTTP/1.1 200") or not m:
        raise Fail(f"GET {path}: {head[:120]!r}")
    while len(body) < int(m.group(1)):
        chunk = sock.recv(4096)
        if not chunk:
            raise Fail(f"GET {path}: body cut at {len(body)} bytes")
        body += chunk
    return body


def foreign_nginx(ctx):
    """nginx (a master and two workers running as nobody, a listener they share, socketpairs
    between master and workers, shared memory) with a client's keep-alive connection held by a
    worker: `checkpoint --stop`, restore; the same connection gets the file again, and so does a
    new one; the workers are still two, still nobody's."""
    nginx = need("nginx")
    d = ctx.scratch
    www = os.path.join(d, "www")
    os.makedirs(www)
    body = ("ferry serves nginx\n" * 500).encode()
    with open(os.path.join(www, "file.txt"), "wb") as f:
        f.write(body)
    # the workers (nobody) reach the files: every directory on the way may be walked through
    p = www
    while p != "/":
        os.chmod(p, os.stat(p).st_mode | 0o055)
        p = os.path.dirname(p)
    os.chmod(os.path.join(www, "file.txt"), 0o644)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(d=d, port=port))
    img = os.path.join(ctx.root, "img")
    ctx.start("c", [nginx, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e",
                    os.path.join(d, "error.log")])

    def up():
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            return None
    conn = ctx.wait_for("nginx listening", up, 15)
    try:
        conn.settimeout(10)
        if http_get(conn, "/file.txt") != body:
            raise Fail("the file served before the checkpoint differs")
        j = ckpt_json(ctx, "c", "--dir", img, "--stop")
        if j.get("processes") != 3:
            raise Fail(f"{j.get('processes')} processes checkpointed, expected 3 (master and "
                       f"two workers): {brief(j)}")
        ctx.forget("c")
        ctx.ferry("restore", "--dir", img, "--name", "c")
        if http_get(conn, "/file.txt") != body:
            raise Fail("the file served on the same connection after restore differs")
        fresh = up()
        if not fresh or http_get(fresh, "/file.txt") != body:
            raise Fail("a new connection after restore is not served the file")
        fresh.close()
    finally:
        conn.close()
    root = ctx.pid("c")
    kids = [int(k) for k in _read(f"/proc/{root}/task/{root}/children").split()]
    users = sorted(os.stat(f"/proc/{k}").st_uid for k in kids)
    if len(kids) != 2 or users[0] == 0:
        raise Fail(f"after restore the master has children {kids} of uids {users}: "
                   f"expected two workers running as nobody")


def foreign_python_pool(ctx):
    """A multiprocessing pool (4 forked workers, pipes and a semaphore in a deleted /dev/shm
    file between them) checkpointed mid-way: the results equal an uninterrupted run's."""
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else need("python3")
    foreign_test(ctx, [py, os.path.join(HERE, "e2e", "pool.py")], r"^chunk 10 ")


def foreign_bash(ctx):
    foreign_test(ctx, [need("bash"), os.path.join(HERE, "e2e", "loop.sh")], r"^line 10 ")


def foreign_node(ctx):
    foreign_test(ctx, [shutil.which("node"), os.path.join(HERE, "e2e", "ticks.js")], r"^tick 10 ")


def foreign_sqlite(ctx):
    sqlite = need("sqlite3")
    foreign_test(ctx, [sqlite, "test.db", ".read inserts.sql"], r"^step\|10\|",
                 setup=lambda d: sqlite_script(os.path.join(d, "inserts.sql")),
                 db=(sqlite, "test.db"))


# ---------------------------------------------------------------------------------------------
# Refusals


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def truncate(path, keep):
    os.truncate(path, keep(os.path.getsize(path)))


def image_file(img, pattern):
    found = sorted(glob.glob(os.path.join(img, pattern)))
    if not found:
        raise Fail(f"no {pattern} in the image (files: {sorted(os.listdir(img))})")
    return found[-1]


CORRUPTIONS = {
    "pages-first-byte": lambda img: flip(image_file(img, "pages-*.img"), 2048),
    "pages-last-byte": lambda img: flip(image_file(img, "pages-*.img"),
                                        os.path.getsize(image_file(img, "pages-*.img")) - 100),
    "state-byte": lambda img: flip(image_file(img, "state-*.img"),
                                   os.path.getsize(image_file(img, "state-*.img")) // 2),
    "pages-truncated": lambda img: truncate(image_file(img, "pages-*.img"), lambda n: n // 2),
    "state-truncated": lambda img: truncate(image_file(img, "state-*.img"), lambda n: n - 16),
    "manifest-byte": lambda img: flip(image_file(img, "MANIFEST"), 10),
}


def refuse_corrupt(ctx):
    """Each corrupted copy of a good image is refused with a message and leaves nothing running;
    the good image then restores and passes (so the refusals were not for another reason)."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("heap_stack"))
    ctx.wait_line("c", "^READY$")
    ctx.ferry("checkpoint", "c", "--dir", img, "--stop")
    ctx.forget("c")
    ctx.names.append("bad")
    for what, corrupt in CORRUPTIONS.items():
        bad = os.path.join(ctx.root, "img-" + what)
        shutil.copytree(img, bad)
        corrupt(bad)
        rc, _, err = ctx.ferry("restore", "--dir", bad, "--name", "bad", ok=False)
        if rc == 0:
            raise Fail(f"restore of an image with {what} succeeded")
        if not err.strip():
            raise Fail(f"restore of an image with {what} failed without a message")
        say(f"{what}: {tail(err, 1)}")
        c = ctx.component("bad")
        if c and c.get("state") != "exited":
            raise Fail(f"after the refused restore ({what}) component bad is {c.get('state')}")
        strays = stray_processes(ctx.root)
        if strays:
            raise Fail(f"after the refused restore ({what}) processes remain: {strays}")
        run_cmd([ctx.ferry_bin, "kill", "bad"], env=ctx.env, timeout=10)
    ctx.ferry("restore", "--dir", img, "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def refuse_unsupported_fd(ctx, prog="unsupported_fd", what="a netlink socket"):
    """A checkpoint of a program holding a netlink socket (or another fd ferry refuses) fails
    naming the fd; the program is left as it was and still passes after go."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature(prog))
    m = re.search(r"^FD (\d+)$", ctx.wait_line("c", "^READY$"), re.M)
    if not m:
        raise Fail("the program did not print its fd number")
    fd = m.group(1)
    pid = ctx.pid("c")
    before = proc_snapshot(pid)
    rc, _, err = ctx.ferry("checkpoint", "c", "--dir", img, ok=False)
    if rc == 0:
        raise Fail(f"checkpoint of a component holding {what} succeeded")
    if not re.search(rf"\bfd\D{{0,3}}{fd}\b", err, re.I):
        raise Fail(f"the refusal does not name fd {fd}: {tail(err, 1)!r}")
    c = ctx.component("c")
    if not c or c.get("state") != "running" or c.get("pid") != pid:
        raise Fail(f"after the refused checkpoint the component is {c}")
    compare_snapshots(before, proc_snapshot(pid), "after the refused checkpoint")
    ctx.go()
    expect_log(ctx, "c", f"FD {fd}\nREADY\nPASS\n")


def refuse_seccomp(ctx):
    """A checkpoint of a process under a seccomp filter is refused, saying so; the process goes
    on under its filter and passes after go."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("seccomp_filter"))
    ctx.wait_line("c", "^READY$")
    pid = ctx.pid("c")
    rc, _, err = ctx.ferry("checkpoint", "c", "--dir", img, ok=False)
    if rc == 0 or "seccomp" not in err:
        raise Fail(f"checkpoint under a seccomp filter: exit {rc}, {tail(err, 1)!r}")
    c = ctx.component("c")
    if not c or c.get("state") != "running" or c.get("pid") != pid:
        raise Fail(f"after the refused checkpoint the component is {c}")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def tcp_established(ctx):
    """An established TCP connection from the component to a peer outside it (this harness)
    survives `checkpoint --stop` and a restore: the peer's bytes the program had not read, the
    program's bytes the peer had not read (its receive buffer is small: some wait in the
    program's send queue), then an echo exchange. The peer sees no EOF, no reset, and every
    byte once, in order."""
    img = os.path.join(ctx.root, "img")
    to_peer, from_peer = 512 * 1024, 64 * 1024
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn = None
    try:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        ls.settimeout(10)
        with open(os.path.join(ctx.scratch, "port"), "w") as f:
            f.write(str(ls.getsockname()[1]))
        ctx.start("c", ctx.feature("tcp_conn"))
        conn, _ = ls.accept()
        conn.sendall(bytes(i % 251 for i in range(from_peer)))
        m = re.search(r"^SENT (\d+) QUEUED (\d+)$", ctx.wait_line("c", "^READY$"), re.M)
        if not m or int(m.group(2)) != from_peer:
            raise Fail(f"the program did not queue the peer's {from_peer} bytes: {m and m.group(0)}")

        def alive(when):
            conn.setblocking(False)
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    raise Fail(f"the peer saw the connection end {when}")
            except BlockingIOError:
                pass
            except OSError as e:
                raise Fail(f"the peer's connection failed {when}: {e}")
            finally:
                conn.setblocking(True)

        ctx.ferry("checkpoint", "c", "--dir", img, "--stop")
        c = ctx.component("c")
        if c and c.get("state") != "exited":
            raise Fail(f"after checkpoint --stop the component is {c.get('state')}")
        alive("after the checkpoint")
        _, out, _ = ctx.ferry("inspect", img)
        line = next((l for l in out.splitlines() if "established" in l), None)
        if not line:
            raise Fail("inspect does not show the established connection", tail(out, 30))
        say(f"at the checkpoint: {line.strip()}")
        ctx.ferry("restore", "--dir", img, "--name", "c")
        alive("after the restore")
        ctx.go()
        conn.settimeout(10)
        got = bytearray()
        try:
            while len(got) < to_peer:
                chunk = conn.recv(65536)
                if not chunk:
                    raise Fail(f"EOF after {len(got)} of the program's {to_peer} bytes")
                got += chunk
            want = bytes(i % 253 for i in range(to_peer))
            if got != want:
                at = next(i for i in range(to_peer) if got[i] != want[i])
                raise Fail(f"the program's bytes differ from byte {at} on (of {to_peer})")
            f = conn.makefile("rb")
            for i in range(200):
                conn.sendall(b"ping %d\n" % i)
                back = f.readline()
                if back != b"ping %d\n" % i:
                    raise Fail(f"echo {i}: got {back!r}")
            conn.sendall(b"END\n")
        except (OSError, socket.timeout) as e:
            raise Fail(f"the peer's connection failed after the restore: {e}")
        ctx.wait_exited("c")
        if not ctx.log("c").endswith("READY\nPASS\n"):
            raise Fail("the program did not pass", tail(ctx.log("c"), 5))
    finally:
        if conn:
            conn.close()
        ls.close()


def generations(ctx):
    """Eight generations of checkpoint -> kill -> restore, each restoring the previous restore
    (rseq areas, TLS and thread stacks re-created every time), then the program's own check."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("threads8"))
    ctx.wait_line("c", "^READY$")
    for gen in range(8):
        shutil.rmtree(img, ignore_errors=True)
        ctx.ferry("checkpoint", "c", "--dir", img)
        ctx.ferry("kill", "c")
        ctx.ferry("restore", "--dir", img, "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def crash_mid_checkpoint(ctx):
    """ferry killed while it writes a checkpoint: the component runs on (its threads are
    released when their tracer dies), the earlier image in DIR stays the committed one, and
    it restores."""
    img = os.path.join(ctx.root, "img")
    hog = os.path.join(os.path.dirname(ctx.features), "bench", "bench-memhog")
    ctx.start("c", [hog, "256", os.path.join(ctx.scratch, "go")])
    ctx.wait_line("c", "^READY")
    pid = ctx.pid("c")
    ctx.ferry("checkpoint", "c", "--dir", img)
    with open(os.path.join(img, "MANIFEST"), "rb") as f:
        manifest = f.read()
    p = subprocess.Popen([ctx.ferry_bin, "checkpoint", "c", "--dir", img], env=ctx.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    caught = False
    end = time.monotonic() + 10
    while time.monotonic() < end and p.poll() is None:
        tmp = [f for f in os.listdir(img) if f.startswith("pages-") and f.endswith(".tmp")]
        if tmp and os.path.getsize(os.path.join(img, tmp[0])) > (32 << 20):
            safe_kill(p.pid, signal.SIGKILL)
            caught = True
            break
        time.sleep(0.002)
    p.wait()
    if not caught:
        raise Fail(f"could not catch the checkpoint mid-way (it exited {p.returncode})")
    time.sleep(0.3)
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    if state not in ("S", "R", "D"):
        raise Fail(f"after ferry was killed the component is in state {state!r}")
    with open(os.path.join(img, "MANIFEST"), "rb") as f:
        if f.read() != manifest:
            raise Fail("the MANIFEST changed although the checkpoint never committed")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", img, "--name", "c")
    ctx.go()
    ctx.wait_line("c", "^(PASS|FAIL)")
    if not re.search(r"^PASS", ctx.log("c"), re.M):
        raise Fail("restored memory differs", tail(ctx.log("c"), 3))


def die_mid_injection(ctx):
    """ferry SIGKILLed in the middle of the system calls it injects into a frozen component
    (sigaltstack, PR_GET_TID_ADDRESS, brk, each at its entry and after it ran, the registers not
    yet put back): every thread returns into rt_sigreturn with the frame ferry left on its stack,
    so the component runs on exactly as before (a 4-thread program that checks its memory
    against its counters). Without that frame the thread resumes with the injected registers and
    the component dies (SIGSEGV). The kill comes from ferry itself (FERRY_TEST_DIE_IN_SYSCALL),
    so the moment is exact."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("incr_threads"))
    ctx.wait_line("c", "^READY$")
    pid = ctx.pid("c")
    for spec in ("131:entry", "131:exit", "157:exit", "12:exit"):
        env = ctx.env
        ctx.env = dict(env, FERRY_TEST_DIE_IN_SYSCALL=spec)
        try:
            rc, _, err = ctx.ferry("checkpoint", "c", "--dir", img, ok=False)
        finally:
            ctx.env = env
        if rc != -signal.SIGKILL and rc != 128 + signal.SIGKILL:
            raise Fail(f"ferry did not die at {spec} (exit {rc}): {tail(err, 2)}")
        time.sleep(0.2)
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        if state not in ("S", "R"):
            c = ctx.component("c") or {}
            raise Fail(f"after ferry died at {spec} the component is {state!r} "
                       f"({c.get('state')})", ctx.log("c"))
        say(f"{spec}: ferry died, the component runs on")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def describe(ctx):
    """`ferry caps` of the running component and `ferry inspect` of its image describe the same
    capability space: threads with registers, the memory map by kind, fds with their meaning."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("eventfds"))
    ctx.wait_line("c", "^READY$")
    pid = ctx.pid("c")
    caps = json.loads(ctx.ferry("caps", "c", "--json")[1])
    ctx.ferry("checkpoint", "c", "--dir", img)
    image = json.loads(ctx.ferry("inspect", img, "--json")[1])
    for what, d in (("caps", caps), ("inspect", image)):
        procs = d.get("processes") or []
        if d.get("name") != "c" or len(procs) != 1 or procs[0].get("pid") != 1:
            raise Fail(f"{what}: not one process named c with pid 1: {str(d)[:200]}")
        p = procs[0]
        threads = p.get("threads") or []
        if not threads or any("rip" not in t.get("regs", {}) for t in threads):
            raise Fail(f"{what}: threads without registers")
        kinds = {m.get("kind") for m in p.get("memory", [])}
        if not {"heap", "stack", "vdso", "file", "anon"} <= kinds:
            raise Fail(f"{what}: memory kinds {sorted(kinds)}")
        fds = {f["fd"]: f for f in p.get("fds", [])}
        want = {0: "character device /dev/null", 1: "log", 3: "eventfd, counter 4242",
                8: "epoll watching"}
        for fd, text in want.items():
            if fd not in fds or text not in fds[fd].get("meaning", ""):
                raise Fail(f"{what}: fd {fd} is {fds.get(fd)}, expected a meaning with {text!r}")
    with open(f"/proc/{pid}/maps") as f:
        nmaps = sum(1 for line in f if "[vsyscall]" not in line)
    if len(image["processes"][0]["memory"]) != nmaps:
        raise Fail(f"inspect lists {len(image['processes'][0]['memory'])} mappings, "
                   f"/proc lists {nmaps}")
    out = ctx.ferry("inspect", img)[1]
    for word in ("Threads", "Memory", "eventfd", "epoll"):
        if word not in out:
            raise Fail(f"`ferry inspect` text lacks {word!r}")


def kernel_check(ctx):
    """`ferry check` runs every subsystem's kernel probe; on this kernel all must pass."""
    rc, out, err = ctx.ferry("check", "--json", ok=False)
    probes = json.loads(out) if out.strip() else []
    bad = [p for p in probes if not p.get("ok")]
    if rc != 0 or len(probes) < 5 or bad:
        raise Fail(f"ferry check exited {rc}: {bad or out or err}")


def monitor_death(ctx):
    """The runtime's own death does not harm a component: its monitor is killed, the component
    goes on running, still writes its log, and can still be checkpointed and restored."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("threads8"))
    ctx.wait_line("c", "^READY$")
    c = ctx.component("c")
    pid, monitor = c.get("pid"), c.get("monitor_pid")
    safe_kill(monitor, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{monitor}") and open(f"/proc/{monitor}/stat").read().split()[2] != "Z":
        if time.monotonic() > deadline:
            raise Fail(f"monitor {monitor} did not die")
        time.sleep(0.05)
    time.sleep(0.3)
    if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
        raise Fail(f"component pid {pid} died with its monitor")
    ctx.ferry("checkpoint", "c", "--dir", img, "--stop")
    ctx.ferry("restore", "--dir", img, "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


# ---------------------------------------------------------------------------------------------
# Incremental checkpoints: images holding only the pages written since their parent image.

PAGE = 4096


def ckpt_json(ctx, name, *args):
    """`ferry checkpoint NAME ARGS --json`, its one JSON object."""
    out = ctx.ferry("checkpoint", name, *args, "--json")[1]
    try:
        return json.loads(out)
    except ValueError as e:
        raise Fail(f"`ferry checkpoint {name} {' '.join(args)} --json` is not JSON ({e}): "
                   f"{out[:200]!r}")


def inspect_json(ctx, img):
    out = ctx.ferry("inspect", img, "--json")[1]
    try:
        return json.loads(out)
    except ValueError as e:
        raise Fail(f"`ferry inspect {img} --json` is not JSON ({e}): {out[:200]!r}")


def same_dir(a, b):
    return isinstance(a, str) and isinstance(b, str) and os.path.realpath(a) == os.path.realpath(b)


def brief(j):
    keys = ("incremental", "parent", "fallback", "files", "pages_written", "seq")
    return {k: j.get(k) for k in keys if k in j}


def expect_full(j, what):
    """A checkpoint taken without --parent: full, one pages file, no parent, no fallback."""
    if (j.get("incremental") is not False or j.get("files") != 1 or j.get("parent") is not None
            or j.get("fallback") is not None):
        raise Fail(f"{what}: not a plain full checkpoint: {brief(j)}")


def expect_incremental(j, parent, what):
    if j.get("incremental") is not True or not same_dir(j.get("parent"), parent):
        raise Fail(f"{what}: not an incremental checkpoint on {parent}: {brief(j)}")
    if j.get("fallback") is not None:
        raise Fail(f"{what}: incremental, yet with a fallback: {brief(j)}")


def pages_files(image, what, want=None):
    """The image's pages_files, checked to be indexed 0..n-1 (and n == want, if given)."""
    files = image.get("pages_files")
    if not isinstance(files, list) or not files:
        raise Fail(f"{what}: inspect lists no pages_files: {str(files)[:200]}")
    if [f.get("index") for f in files] != list(range(len(files))):
        raise Fail(f"{what}: pages_files indexes {[f.get('index') for f in files]}")
    if want is not None and len(files) != want:
        raise Fail(f"{what}: {len(files)} pages_files, expected {want}",
                   "\n".join(f"{f.get('index')}: {f.get('origin')} {f.get('pages')} pages"
                             for f in files))
    return files


def expect_origins(files, chain, what):
    """The pages files were first written in the directories of chain (oldest first), the
    image's own file in the last of them."""
    origins = [f.get("origin") for f in files]
    got = sorted(os.path.realpath(o) if isinstance(o, str) else repr(o) for o in origins)
    if not same_dir(origins[0], chain[-1]) or got != sorted(os.path.realpath(c) for c in chain):
        raise Fail(f"{what}: pages files first written in {origins}, expected {chain[-1]} "
                   f"first, then {', '.join(os.path.basename(c) for c in chain[:-1])}")


def page_sources(image, what):
    """{page address: pages file index} over the memory of the image's process, with each
    mapping's sources checked to lie inside it, not to overlap, and to name a listed file."""
    files = pages_files(image, what)
    procs = image.get("processes") or []
    if len(procs) != 1:
        raise Fail(f"{what}: {len(procs)} processes in the image, expected 1")
    pages = {}
    for m in procs[0].get("memory") or []:
        lo, hi = int(m["start"], 16), int(m["end"], 16)
        for src in m.get("sources") or []:
            start, n, f = int(src["start"], 16), src["pages"], src["file"]
            if not (lo <= start and start + n * PAGE <= hi and 0 <= f < len(files)):
                raise Fail(f"{what}: mapping {m['start']}-{m['end']} has a source {src} "
                           f"outside it or from an unlisted file")
            for i in range(n):
                if start + i * PAGE in pages:
                    raise Fail(f"{what}: page {start + i * PAGE:#x} has two sources")
                pages[start + i * PAGE] = f
    return pages


def own_pages_outside(image, lo, hi):
    """Lines naming the mappings with pages in the image's own file outside [lo, hi)."""
    lines = []
    for m in image["processes"][0].get("memory") or []:
        n = sum(s["pages"] for s in m.get("sources") or [] if s["file"] == 0 and
                not lo <= int(s["start"], 16) < hi)
        if n:
            lines.append(f"{m['start']}-{m['end']} {m.get('prot')} {m.get('kind')} "
                         f"{m.get('path') or ''}: {n} of its {m.get('pages')} pages")
    return "\n".join(lines)


def untouched_reservations(image):
    """PROT_NONE anonymous mappings the image holds pages of (as text), for a component whose
    PROT_NONE mappings are reservations it never touched."""
    return [f"{m['start']}-{m['end']}: {m.get('pages')} pages"
            for m in image["processes"][0].get("memory") or []
            if m.get("prot", "").startswith("---") and m.get("kind") == "anon" and m.get("pages")]


def same_layout(snap):
    """snap with adjacent mappings of equal protection and path (and contiguous offsets, for a
    file) merged: dirty-page tracking may split a mapping the kernel would otherwise merge (a
    heap grown after its registration), which a restore need not reproduce."""
    maps = []
    for line in snap["maps"]:
        rng, perms, off, path = (line.split(None, 3) + [""])[:4]
        lo, hi = (int(x, 16) for x in rng.split("-"))
        if maps:
            plo, phi, pperms, poff, ppath = maps[-1]
            if (phi == lo and pperms == perms and ppath == path and
                    (not path.startswith("/") or int(off, 16) == int(poff, 16) + phi - plo)):
                maps[-1] = (plo, hi, perms, poff, path)
                continue
        maps.append((lo, hi, perms, off, path))
    return dict(snap, maps=[f"{lo:x}-{hi:x} {perms} {off} {path}" for lo, hi, perms, off, path
                            in maps])


def step(ctx, k):
    open(os.path.join(ctx.scratch, f"step-{k}"), "w").close()


def incremental_pattern(ctx):
    """Each link of a chain of incremental checkpoints holds exactly the pages the component
    wrote since the previous link (and a few of its stack, stdio and libc pages); the last link
    restores the whole 64 MiB region."""
    d = [os.path.join(ctx.root, f"d{i}") for i in range(3)]
    ctx.start("c", ctx.feature("incr_pattern"))
    log = ctx.wait_line("c", "^READY$")
    m = re.search(r"^REGION ([0-9a-f]+) (\d+)$", log, re.M)
    if not m:
        raise Fail(f"the program did not print its region: {log!r}")
    start, npages = int(m.group(1), 16), int(m.group(2))
    end = start + npages * PAGE
    expect_full(ckpt_json(ctx, "c", "--dir", d[0]), "d0")
    pages_files(inspect_json(ctx, d[0]), "d0", want=1)
    for k in (1, 2):
        written = {start + i * PAGE for i in range(npages) if (i * 7919 + k * 31) % 97 == 0}
        step(ctx, k)
        log = ctx.wait_line("c", rf"^WROTE {k} \d+$")
        if not re.search(rf"^WROTE {k} {len(written)}$", log, re.M):
            raise Fail(f"step {k}: the program wrote other pages than {len(written)}", tail(log, 1))
        j = ckpt_json(ctx, "c", "--dir", d[k], "--parent", d[k - 1])
        expect_incremental(j, d[k - 1], f"d{k}")
        if j.get("files") != k + 1:
            raise Fail(f"d{k}: reads {j.get('files')} pages files, expected {k + 1}")
        image = inspect_json(ctx, d[k])
        files = pages_files(image, f"d{k}", want=k + 1)
        expect_origins(files, d[:k + 1], f"d{k}")
        src = page_sources(image, f"d{k}")
        own = {a for a, f in src.items() if f == 0}
        inside = {a for a in own if start <= a < end}
        missing, extra = sorted(written - inside), sorted(inside - written)
        if missing or extra:
            raise Fail(f"d{k}: the region's pages in its own file are not the {len(written)} "
                       f"written by step {k}: {len(missing)} missing "
                       f"({', '.join(hex(a) for a in missing[:4])}), {len(extra)} extra "
                       f"({', '.join(hex(a) for a in extra[:4])})")
        if len(own) - len(inside) > 64:
            raise Fail(f"d{k}: {len(own) - len(inside)} pages outside the region in its own "
                       f"file, expected at most 64", own_pages_outside(image, start, end))
        unsaved = [a for a in range(start, end, PAGE) if a not in src]
        if unsaved:
            raise Fail(f"d{k}: {len(unsaved)} pages of the region have no source "
                       f"(first {unsaved[0]:#x})")
        counts = [sum(1 for f in src.values() if f == i) for i in range(len(files))]
        if [f.get("pages") for f in files] != counts:
            raise Fail(f"d{k}: pages_files count {[f.get('pages') for f in files]} pages, the "
                       f"mappings' sources {counts}")
        if not isinstance(j.get("pages_written"), int) or j["pages_written"] > len(own):
            raise Fail(f"d{k}: pages_written {j.get('pages_written')}, its own file holds "
                       f"{len(own)} pages")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[2], "--name", "c")
    ctx.go()
    expect_log(ctx, "c", log + "PASS\n")


def incremental_chain(ctx, links):
    """A full checkpoint, then links-1 incremental ones, each after a step that changes the
    address space (mmap, mremap grow and move, munmap, mprotect, MADV_DONTNEED, writes, sbrk);
    the last link restores with the same /proc view and every region's checksum. No link holds
    pages of the component's PROT_NONE reservations, which it never touches."""
    d = [os.path.join(ctx.root, f"d{i}") for i in range(links)]
    ctx.start("c", ctx.feature("incr_chain"))
    log = ctx.wait_line("c", "^READY$")
    before = None
    for k in range(links):
        if k:
            step(ctx, k)
            log = ctx.wait_line("c", rf"^WROTE {k}$")
        if k == links - 1:
            before = proc_snapshot(ctx.pid("c"))
        if k == 0:
            expect_full(ckpt_json(ctx, "c", "--dir", d[0]), "d0")
        else:
            j = ckpt_json(ctx, "c", "--dir", d[k], "--parent", d[k - 1])  # --keep: no bound
            expect_incremental(j, d[k - 1], f"d{k}")
            if j.get("files") != k + 1:  # each step fills a page no later step rewrites
                raise Fail(f"d{k}: reads {j.get('files')} pages files, expected {k + 1}")
        image = inspect_json(ctx, d[k])
        held = untouched_reservations(image)
        if held:
            raise Fail(f"d{k} holds pages of PROT_NONE reservations the component never "
                       f"touched ({len(held)} mappings)", "\n".join(held[:8]))
    if links == 10:
        expect_origins(pages_files(image, "d9", want=10), d, "d9")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[-1], "--name", "c")
    after = proc_snapshot(ctx.pid("c"))
    if before["maps"] != after["maps"]:
        say("maps differ after restore (compared with adjacent equal mappings merged): " +
            "; ".join(sorted(set(before["maps"]) ^ set(after["maps"]))))
    compare_snapshots(same_layout(before), same_layout(after), "after restore")
    ctx.go()
    expect_log(ctx, "c", log + "PASS\n")


def incremental_fallback(ctx):
    """--parent naming an image that is not the component's latest checkpoint: a full
    checkpoint, which says why, and restores; it then is the latest, a valid parent."""
    d = [os.path.join(ctx.root, f"d{i}") for i in range(4)]
    ctx.start("c", ctx.feature("incr_chain"))
    ctx.wait_line("c", "^READY$")
    expect_full(ckpt_json(ctx, "c", "--dir", d[0]), "d0")
    step(ctx, 1)
    ctx.wait_line("c", "^WROTE 1$")
    expect_incremental(ckpt_json(ctx, "c", "--dir", d[1], "--parent", d[0]), d[0], "d1")
    step(ctx, 2)
    log = ctx.wait_line("c", "^WROTE 2$")  # the log as d2 saves it
    j = ckpt_json(ctx, "c", "--dir", d[2], "--parent", d[0])  # d1 is the latest
    fallback = j.get("fallback")
    if j.get("incremental") is not False or not isinstance(fallback, str) or not fallback.strip():
        raise Fail(f"d2 on the outdated parent d0: not a full checkpoint with a reason: "
                   f"{brief(j)}")
    if j.get("files") != 1:
        raise Fail(f"d2: a full checkpoint that reads {j.get('files')} pages files")
    pages_files(inspect_json(ctx, d[2]), "d2", want=1)
    say(f"fallback: {fallback}")
    step(ctx, 3)
    ctx.wait_line("c", "^WROTE 3$")
    expect_incremental(ckpt_json(ctx, "c", "--dir", d[3], "--parent", d[2]), d[2], "d3")
    ctx.ferry("kill", "c")
    os.unlink(os.path.join(ctx.scratch, "step-3"))  # d2 was taken before step 3
    ctx.ferry("restore", "--dir", d[2], "--name", "c")
    ctx.go()
    expect_log(ctx, "c", log + "PASS\n")


class Continuous:
    """`ferry checkpoint ... --every` running in the background, output in files; stop() ends
    it (by its pid) if it still runs."""

    def __init__(self, ctx, *args):
        self.ctx = ctx
        self.cmd = "ferry " + " ".join(args)
        self.out = os.path.join(ctx.root, "continuous.out")
        self.err = os.path.join(ctx.root, "continuous.err")
        say(self.cmd + " &")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.p = subprocess.Popen([ctx.ferry_bin, *args], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=err, env=ctx.env, cwd=ctx.scratch)

    def stderr(self):
        return _read(self.err)

    def records(self):
        """The JSON objects of the complete lines printed so far."""
        recs = []
        for line in _read(self.out).splitlines(keepends=True):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                recs.append(json.loads(line))
            except ValueError as e:
                raise Fail(f"`{self.cmd}` printed a line that is not JSON ({e}): {line[:200]!r}")
        return recs

    def wait_records(self, n, limit=None):
        def probe():
            recs = self.records()
            if len(recs) >= n:
                return recs
            if self.p.poll() is not None:
                raise Fail(f"`{self.cmd}` exited {self.p.returncode} after {len(recs)} "
                           f"checkpoints", f"its stderr:\n{tail(self.stderr(), 8)}")
            return None
        return self.ctx.wait_for(f"{n} checkpoints from `{self.cmd}`", probe, limit)

    def wait(self, timeout):
        try:
            return self.p.wait(timeout=max(timeout, 0.5))
        except subprocess.TimeoutExpired:
            raise Fail(f"`{self.cmd}` did not end {timeout:.0f} s after it was signalled",
                       f"its threads: {where_stuck(self.p.pid)}")

    def stop(self):
        if self.p.poll() is None:
            safe_kill(self.p.pid, signal.SIGKILL)
        self.p.wait()


def temp_files(img):
    """The temp files of a checkpoint being written in img, as "name (size)"."""
    found = []
    try:
        for f in sorted(os.listdir(img)):
            if f.endswith(".tmp"):
                found.append(f"{f} ({os.path.getsize(os.path.join(img, f))} bytes)")
    except OSError:
        pass
    return found


def incremental_killed_link(ctx):
    """Continuous checkpoints of a component writing memory fast; ferry SIGKILLed in the middle
    of a link: the component runs on and DIR restores (its newest committed image)."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("incr_threads"))
    ctx.wait_line("c", "^READY$")
    pid = ctx.pid("c")
    bg = Continuous(ctx, "checkpoint", "c", "--dir", img, "--every", "50ms", "--json")
    try:
        n = len(bg.wait_records(2))
        bg.wait_records(n + 1)  # a link just committed: kill the next one at a random moment
        delay = random.uniform(0, 0.05)
        time.sleep(delay)
        end = time.monotonic() + 1
        while not temp_files(img) and time.monotonic() < end and bg.p.poll() is None:
            time.sleep(0.001)
        mid = temp_files(img)
        if bg.p.poll() is not None:
            raise Fail(f"`{bg.cmd}` exited {bg.p.returncode} before it was killed",
                       f"its stderr:\n{tail(bg.stderr(), 8)}")
        safe_kill(bg.p.pid, signal.SIGKILL)
        bg.wait(10)
    finally:
        bg.stop()
    recs = bg.records()
    say(f"killed {delay * 1000:.0f} ms after checkpoint {len(recs)} was reported; "
        f"{'during a link: ' + ', '.join(mid) if mid else 'between links'}")
    time.sleep(0.3)
    try:
        state = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0]
    except OSError:
        state = "gone"
    if state not in ("S", "R", "D"):
        c = ctx.component("c") or {}
        raise Fail(f"after ferry was killed {'during a link' if mid else 'between links'} "
                   f"({delay * 1000:.0f} ms after checkpoint {len(recs)} was reported) the "
                   f"component is {state!r}: {c.get('state')}, exit status "
                   f"{c.get('exit_status')}", f"temp files when killed: {', '.join(mid)}")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", img, "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def incremental_continuous(ctx):
    """`checkpoint --every 100ms --keep 4` of a component writing memory fast, ended by SIGTERM
    (exit 0): ten checkpoints or more, never more than 4 pages files, stats that add up, and
    DIR restores."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("incr_threads"))
    ctx.wait_line("c", "^READY$")
    bg = Continuous(ctx, "checkpoint", "c", "--dir", img, "--every", "100ms", "--keep", "4",
                    "--json")
    try:
        t0 = time.monotonic()
        bg.wait_records(1)
        time.sleep(max(0.0, 3 - (time.monotonic() - t0)))
        bg.wait_records(10, limit=max(1.0, ctx.left() - 25))  # a slow machine: a while more
        safe_kill(bg.p.pid, signal.SIGTERM)
        rc = bg.wait(15)
    finally:
        bg.stop()
    if rc != 0:
        raise Fail(f"`{bg.cmd}` exited {rc} on SIGTERM", f"its stderr:\n{tail(bg.stderr(), 8)}")
    recs = bg.records()
    seqs = [r.get("seq") for r in recs]
    if any(not isinstance(s, int) for s in seqs) or seqs != sorted(set(seqs)):
        raise Fail(f"seq of the checkpoints: {seqs}")
    over = [brief(r) for r in recs if not isinstance(r.get("files"), int) or
            not 1 <= r["files"] <= 4]
    if over:
        raise Fail(f"checkpoints reading more than 4 pages files (--keep 4): {over[:3]}")
    if not any(r.get("incremental") is True for r in recs):
        raise Fail(f"none of {len(recs)} checkpoints was incremental: {brief(recs[-1])}")
    files = pages_files(inspect_json(ctx, img), "DIR")
    if len(files) > 4:
        raise Fail(f"DIR reads {len(files)} pages files, expected at most 4 (--keep 4)")
    out = ctx.ferry("stats", "c", "--json")[1]
    try:
        stats = json.loads(out)
    except ValueError as e:
        raise Fail(f"`ferry stats c --json` is not JSON ({e}): {out[:200]!r}")
    fz = stats.get("freeze_ms") or {}
    if stats.get("name") != "c" or not isinstance(stats.get("count"), int) or stats["count"] < 10:
        raise Fail(f"stats: {len(recs)} checkpoints reported, stats say {str(stats)[:300]}")
    if not all(isinstance(fz.get(k), (int, float)) for k in ("min", "median", "max")) or not (
            fz["min"] <= fz["median"] <= fz["max"]):
        raise Fail(f"stats: freeze_ms {fz}")
    if not isinstance((stats.get("latest") or {}).get("incremental"), bool):
        raise Fail(f"stats: latest {stats.get('latest')}")
    say(f"{len(recs)} checkpoints; freeze_ms {fz}; last {brief(recs[-1])}")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", img, "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def incremental_live(ctx):
    """`checkpoint --live` of a component writing memory on four threads: a full image taken in
    rounds while it runs and a short freeze at the end; first with no tracking yet (it starts
    in a brief freeze), then again with it, then an incremental link on the live image. The
    live image restores exactly (the program checks every page against its counters), and so
    does the link through it."""
    d = [os.path.join(ctx.root, f"d{i}") for i in range(3)]
    ctx.start("c", ctx.feature("incr_threads"))
    ctx.wait_line("c", "^READY$")
    for i in (0, 1):
        j = ckpt_json(ctx, "c", "--dir", d[i], "--live")
        expect_full(j, f"d{i}")
        if j.get("live") is not True or not isinstance(j.get("precopy_rounds"), int) or \
                j["precopy_rounds"] < 1 or not j.get("precopy_bytes"):
            raise Fail(f"d{i}: not a live checkpoint: {j}")
        if j.get("tracked") is not True:
            raise Fail(f"d{i}: dirty tracking does not go on after a live checkpoint: {j}")
        say(f"d{i}: live, {j['precopy_rounds']} rounds, {j['precopy_bytes']} bytes while "
            f"running, freeze {j.get('freeze_ms')} ms")
    j = ckpt_json(ctx, "c", "--dir", d[2], "--parent", d[1])
    expect_incremental(j, d[1], "d2")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[1], "--name", "c")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[2], "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nPASS\n")


def incremental_reuse(ctx):
    """A range that changes owner between two links: a mapping is unmapped and its neighbour
    grows in place over it, another is replaced by a new mapping half written. The parent holds
    the old owners' pages there; the restored incremental image must not (the program checks
    the grown part reads zeros and the new mapping holds exactly its own pages)."""
    d = [os.path.join(ctx.root, f"d{i}") for i in range(2)]
    ctx.start("c", ctx.feature("incr_reuse"))
    ctx.wait_line("c", "^READY$")
    expect_full(ckpt_json(ctx, "c", "--dir", d[0]), "d0")
    step(ctx, 1)
    ctx.wait_line("c", "^WROTE 1$")
    expect_incremental(ckpt_json(ctx, "c", "--dir", d[1], "--parent", d[0]), d[0], "d1")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[1], "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nWROTE 1\nPASS\n")


def incremental_every_fresh(ctx):
    """`--every` on a component never checkpointed before, one writing memory as fast as it can
    (bench-dirtier, rate mode): its first checkpoint starts the tracking and its holder process,
    and the next one follows 100 ms later. The holder must not keep the image directory's lock
    it inherited; it did until it closed its fds, and the second checkpoint found the image
    busy (4 times in 6 before the fix). Four times over, each with a new component."""
    dirtier = os.path.join(os.path.dirname(ctx.features), "bench", "bench-dirtier")
    shm = tempfile.mkdtemp(prefix="ferry-test-every-", dir="/dev/shm")  # fast commits, as in use
    try:
        every_fresh_tries(ctx, dirtier, shm)
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def every_fresh_tries(ctx, dirtier, shm):
    for t in range(4):
        img = os.path.join(shm, f"img{t}")
        ctx.start(f"c{t}", [dirtier, "-m", "rate", "256", "100", "1000"])
        ctx.wait_line(f"c{t}", r"^RATE seq=1 ")
        rc, out, err = ctx.ferry("checkpoint", f"c{t}", "--dir", img, "--every", "100ms",
                                 "--count", "3", "--json", ok=False)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if rc != 0 or len(lines) != 3:
            raise Fail(f"try {t}: `--every 100ms --count 3` exited {rc} after {len(lines)} "
                       f"checkpoints", tail(err, 3))
        ctx.ferry("kill", f"c{t}")


def incremental_after_restore(ctx):
    """A restored component is tracked from its first instruction (its monitor keeps the
    userfaultfd): the next checkpoint, with the image it came from as parent, is incremental,
    and a restore from that link is exact. Twice: restore, step, link; restore the link, step,
    link again."""
    d = [os.path.join(ctx.root, f"d{i}") for i in range(3)]
    ctx.start("c", ctx.feature("incr_chain"))
    ctx.wait_line("c", "^READY$")
    expect_full(ckpt_json(ctx, "c", "--dir", d[0]), "d0")
    for k in (1, 2):
        ctx.ferry("kill", "c")
        ctx.ferry("restore", "--dir", d[k - 1], "--name", "c")
        step(ctx, k)
        ctx.wait_line("c", rf"^WROTE {k}$")
        j = ckpt_json(ctx, "c", "--dir", d[k], "--parent", d[k - 1])
        expect_incremental(j, d[k - 1], f"d{k}")
        if j.get("files") != k + 1:
            raise Fail(f"d{k}: reads {j.get('files')} pages files, expected {k + 1}")
    ctx.ferry("kill", "c")
    ctx.ferry("restore", "--dir", d[2], "--name", "c")
    ctx.go()
    expect_log(ctx, "c", "READY\nWROTE 1\nWROTE 2\nPASS\n")


def incremental_live_refused(ctx):
    """--live with --parent or --stop is a usage error (exit 2), and nothing is written."""
    img = os.path.join(ctx.root, "img")
    ctx.start("c", ctx.feature("incr_threads"))
    ctx.wait_line("c", "^READY$")
    for extra in (("--parent", img), ("--stop",)):
        rc, _, err = ctx.ferry("checkpoint", "c", "--dir", img, "--live", *extra, ok=False)
        if rc != 2 or "--live" not in err:
            raise Fail(f"--live {' '.join(extra)}: exit {rc}, stderr {err!r}")
    if os.path.exists(img):
        raise Fail("a refused command created the image directory")


INCREMENTAL_TESTS = (
    ("pattern", incremental_pattern),
    ("live", incremental_live),
    ("live-refused", incremental_live_refused),
    ("reuse", incremental_reuse),
    ("every-fresh", incremental_every_fresh),
    ("after-restore", incremental_after_restore),
    ("chain-1", lambda ctx: incremental_chain(ctx, 1)),
    ("chain-2", lambda ctx: incremental_chain(ctx, 2)),
    ("chain-10", lambda ctx: incremental_chain(ctx, 10)),
    ("fallback", incremental_fallback),
    ("killed-link", incremental_killed_link),
    ("continuous", incremental_continuous),
)


# ---------------------------------------------------------------------------------------------


def unit_test(path):
    def test(ctx):
        rc, out, err = run_cmd([path], cwd=ctx.scratch, timeout=ctx.left())
        if rc != 0:
            raise Fail(f"exited {rc}" if rc is not None else "timed out", tail(out + err, 12))
    return test


def executables(pattern):
    return sorted(p for p in glob.glob(pattern) if os.path.isfile(p) and os.access(p, os.X_OK))


def collect(builds):
    """(name, ferry binary or None, function, timeout) for every test, in order."""
    features_dir = os.path.join(builds[0], "tests")
    features = [os.path.basename(p)[len("feature-"):]
                for p in executables(os.path.join(features_dir, "feature-*"))]
    tests = []
    if not features:
        def missing(ctx):
            raise Fail(f"no feature programs (feature-*) in {features_dir}")
        tests.append(("features", None, missing, 5))
    for b in builds:
        tag = os.path.basename(os.path.normpath(b))
        for u in executables(os.path.join(b, "tests", "test-*")):
            tests.append((f"{tag}/unit/{os.path.basename(u)}", None, unit_test(u), 120))
        ferry = os.path.join(b, "ferry")
        for prog in features:
            if prog in REFUSAL_ONLY or prog in INCREMENTAL_ONLY or prog in MIGRATE_ONLY:
                continue
            for variant, fn in (("restore", feature_restore), ("twice", feature_twice),
                                ("live", feature_live)):
                tests.append((f"{tag}/{prog}/{variant}", ferry,
                              lambda ctx, fn=fn, prog=prog: fn(ctx, prog), TEST_TIMEOUT))
        for name, fn in (("python3", foreign_python), ("python3-pool", foreign_python_pool),
                         ("nginx", foreign_nginx),
                         ("bash", foreign_bash),
                         ("sqlite3", foreign_sqlite), ("redis", foreign_redis)):
            tests.append((f"{tag}/foreign/{name}", ferry, fn, FOREIGN_TIMEOUT))
        if shutil.which("node"):  # on these machines, not installed by the build
            tests.append((f"{tag}/foreign/node", ferry, foreign_node, FOREIGN_TIMEOUT))
        tests.append((f"{tag}/refuse/corrupt-image", ferry, refuse_corrupt, TEST_TIMEOUT))
        tests.append((f"{tag}/refuse/unsupported-fd", ferry, refuse_unsupported_fd, TEST_TIMEOUT))
        tests.append((f"{tag}/tcp/established", ferry, tcp_established, TEST_TIMEOUT))
        tests.append((f"{tag}/tree/cow-shared", ferry, tree_cow_shared, TEST_TIMEOUT))
        tests.append((f"{tag}/refuse/inotify-queued", ferry,
                      lambda ctx: refuse_unsupported_fd(ctx, "inotify_queued",
                                                        "inotify events not read yet"),
                      TEST_TIMEOUT))
        tests.append((f"{tag}/refuse/seccomp", ferry, refuse_seccomp, TEST_TIMEOUT))
        tests.append((f"{tag}/refuse/unix-fd-in-flight", ferry,
                      lambda ctx: refuse_unsupported_fd(ctx, "unix_inflight",
                                                        "an epoll instance in flight"),
                      TEST_TIMEOUT))
        tests.append((f"{tag}/runtime/monitor-death", ferry, monitor_death, TEST_TIMEOUT))
        tests.append((f"{tag}/runtime/check", ferry, kernel_check, TEST_TIMEOUT))
        tests.append((f"{tag}/runtime/describe", ferry, describe, TEST_TIMEOUT))
        tests.append((f"{tag}/runtime/generations", ferry, generations, TEST_TIMEOUT))
        tests.append((f"{tag}/runtime/crash-mid-checkpoint", ferry, crash_mid_checkpoint,
                      TEST_TIMEOUT))
        tests.append((f"{tag}/runtime/die-mid-injection", ferry, die_mid_injection,
                      TEST_TIMEOUT))
        for name, fn in INCREMENTAL_TESTS:
            tests.append((f"{tag}/incremental/{name}", ferry, fn, INCREMENTAL_TIMEOUT))
        for prog in LAZY_FEATURES:
            if prog in features:
                tests.append((f"{tag}/restore-lazy/{prog}", ferry,
                              lambda ctx, prog=prog: feature_restore(ctx, prog, lazy=True),
                              TEST_TIMEOUT))
        memhog = os.path.join(builds[0], "bench", "bench-memhog")  # not ASan's: shadow maps
        tests.append((f"{tag}/restore-lazy/checkpoint-while-filling", ferry,
                      lambda ctx, memhog=memhog: lazy_checkpoint_filling(ctx, memhog),
                      INCREMENTAL_TIMEOUT))
        for name, fn, timeout in migrate_tests.tests():
            tests.append((f"{tag}/migrate/{name}", ferry, fn, timeout))
        for name, fn, timeout in services_tests.tests():
            tests.append((f"{tag}/services/{name}", ferry, fn, timeout))
        for name, fn, timeout in sessions_tests.tests():
            tests.append((f"{tag}/sessions/{name}", ferry, fn, timeout))
    return tests, features_dir


def main():
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", action="append", required=True,
                    help="build directory (repeatable); feature programs come from the first")
    ap.add_argument("-k", metavar="PATTERN", help="run only tests whose name matches (regex)")
    ap.add_argument("-v", action="store_true", help="print each step")
    args = ap.parse_args()
    VERBOSE = args.v

    builds = [os.path.abspath(b) for b in args.build]
    tests, features_dir = collect(builds)
    if args.k:
        tests = [t for t in tests if re.search(args.k, t[0])]
    passed = failed = 0
    spent = []  # (share of its time limit, seconds, limit, name) of each test
    tmp = tempfile.mkdtemp(prefix="ferry-tests-")
    try:
        for name, ferry, fn, timeout in tests:
            if ferry is not None and not os.access(ferry, os.X_OK):
                print(f"FAIL {name}: no ferry binary at {ferry}", flush=True)
                failed += 1
                continue
            say(f"{name}")
            started = time.monotonic()
            ctx = Ctx(tmp, ferry, features_dir, timeout)
            error, details, problems = None, "", []
            try:
                fn(ctx)
            except Fail as e:
                error, details = e.reason, e.details
            except Exception as e:  # a harness bug or an unexpected answer: still a failure
                error = f"{type(e).__name__}: {e}"
            finally:  # also on ^C: never leave components behind
                if error and ferry:
                    details = "\n".join(x for x in (details, ctx.details()) if x)
                if ferry:
                    problems = ctx.cleanup()
                else:
                    shutil.rmtree(ctx.root, ignore_errors=True)
            if not error and problems:
                error, details = problems[0], "\n".join(problems[1:])
            took = time.monotonic() - started
            spent.append((took / timeout, took, timeout, name))
            if error:
                failed += 1
                print(f"FAIL {name}: {error}", flush=True)
                if details:
                    print("    " + details.replace("\n", "\n    "), flush=True)
            else:
                passed += 1
                print(f"PASS {name} ({took:.1f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the tests closest to their time limit: where a slower machine would fail first
    close = sorted(spent, reverse=True)[:5]
    if close and close[0][0] > 0.25:
        print("closest to their time limit: " +
              ", ".join(f"{n} {t:.1f} s of {lim:.0f}" for _, t, lim, n in close), flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
