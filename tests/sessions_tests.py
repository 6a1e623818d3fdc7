"""Sessions to node services (issue 6): a component holding sessions to a sensor gateway, a log
service and a ROM migrates back and forth between two nodes while data flows, in each mode; every sensor
record, command and log line is accounted for exactly once across the two nodes' services, the
component reads the ROM of the node it is on, a resume-aware service is told which session each
re-created connection continues, and a migration to a node lacking a service is refused.

The services are threads of this test, listening on Unix sockets of its own directory, or for
the sensor on a TCP port of loopback (the `-tcp` tests).
Imported by run.py, whose helpers it uses through __main__.
"""

import collections
import json
import os
import socket
import struct
import threading
import time

import __main__ as h
import migrate_tests as m

SESSIONS_TIMEOUT = 120

COMPONENT = r"""
import os, socket, sys, time
rom = open('/run/ferry/rom/calibration')
to = os.readlink('/run/ferry/services/sensor')  # its socket, or tcp:HOST:PORT
if to.startswith('tcp:'):
    host, port = to[4:].rsplit(':', 1)
    s = socket.create_connection((host, int(port)))
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if 'seq' in sys.argv else
                      socket.SOCK_STREAM)
    s.connect('/run/ferry/services/sensor')
log = socket.socket(socket.AF_UNIX)
log.connect('/run/ferry/services/log')
if 'fork' in sys.argv and os.fork() > 0:
    os.wait()  # the parent holds the sessions too; its child uses them
    sys.exit(0)
n, buf = 0, b""
while True:
    b = s.recv(65536)  # a stream's bytes, or one seqpacket message (one record)
    if not b:
        time.sleep(0.05)
        continue
    buf += b
    *lines, buf = buf.split(b"\n")
    for line in lines:
        rec = line.strip().decode()
        rom.seek(0)
        cal = rom.read().strip()
        log.sendall(f"got {rec} rom={cal}\n".encode())
        n += 1
        if n % 10 == 0:
            s.sendall(f"cmd {rec}\n".encode())
"""


class Services:
    """One node's sensor gateway and log service."""

    def __init__(self, ctx, name, d, seqpacket=False, tcp=False):
        self.name, self.dir, self.tcp = name, d, tcp
        self.type = socket.SOCK_SEQPACKET if seqpacket else socket.SOCK_STREAM
        self.lock = threading.Lock()
        self.sent, self.cmds, self.resumes, self.logged = [], [], [], []
        self.sending = True
        self.closed = False
        self.seq = 0
        self.unacked = 0  # TCP: records sent after the session ended, not acknowledged
        if tcp:
            self.sensor = socket.socket()
            self.sensor.bind(("127.0.0.1", 0))
            self.sensor.listen()
            self.port = self.sensor.getsockname()[1]
            threading.Thread(target=self._accept, args=(self.sensor, self._sensor),
                             daemon=True).start()
        else:
            self.sensor = self._listen("sensor.sock", self._sensor, self.type)
        self.log = self._listen("log.sock", self._log)
        ctx.on_cleanup.append(self.close)

    def _listen(self, name, serve, kind=socket.SOCK_STREAM):
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(os.path.join(self.dir, name))
        s.listen()
        threading.Thread(target=self._accept, args=(s, serve), daemon=True).start()
        return s

    def _accept(self, s, serve):
        while not self.closed:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    def _lines(self, c, on_line):
        buf = b""
        while True:
            try:
                b = c.recv(65536)
            except OSError:
                b = b""
            if not b:
                return
            buf += b
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                on_line(ln.decode())

    def _sensor(self, c):
        def on_line(ln):
            with self.lock:
                if ln.startswith("FERRY-RESUME "):
                    self.resumes.append(ln.split()[1:])
                else:
                    self.cmds.append(ln)
        if self.tcp:  # each record on the wire at once (no Nagle): fewer held back
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._lines, args=(c, on_line), daemon=True).start()
        offset, ends = 0, []  # TCP: where each record sent on this connection ends
        try:
            while not self.closed:
                if not self.sending:
                    time.sleep(0.01)
                    continue
                with self.lock:
                    self.seq += 1
                    rec = f"{self.name}:{self.seq}"
                # unix: counted as sent once the kernel took it: it is in the component's
                # queue (a send after the session ended fails)
                c.sendall(f"{rec}\n".encode())
                offset += len(rec) + 1
                ends.append((offset, rec))
                with self.lock:
                    self.sent.append(rec)
                time.sleep(0.002)
        except OSError:
            # the component moved on. TCP: the connection was reset; what reached the
            # component is what its kernel acknowledged (tcpi_bytes_acked), the rest did not
            if self.tcp:
                acked = struct.unpack_from(
                    "<Q", c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), 120)[0]
                lost = {rec for end, rec in ends if end > acked}
                with self.lock:
                    self.sent = [r for r in self.sent if r not in lost]
                    self.unacked += len(lost)
        finally:
            c.close()

    def _log(self, c):
        def on_line(ln):
            with self.lock:
                self.logged.append(ln)
        self._lines(c, on_line)
        c.close()

    def close(self):
        self.closed = True
        self.sensor.close()
        self.log.close()


def make_node(ctx, key, name, sensor=True, seqpacket=False, tcp=False, hook=None):
    d = os.path.join(ctx.root, f"sess-{name}")
    os.makedirs(d)
    with open(os.path.join(d, "calibration"), "w") as f:
        f.write(f"calibration of {name}\n")
    svc = Services(ctx, name, d, seqpacket, tcp)
    args = ["--service", f"log=unix:{d}/log.sock",
            "--service", f"calibration=rom:{d}/calibration"]
    if sensor and tcp:
        args += ["--service", f"sensor=tcp:127.0.0.1:{svc.port},resume"]
    elif sensor:
        args += ["--service", f"sensor=unix:{d}/sensor.sock,resume"]
    return m.Node(ctx, name, key, args=args).start(**(hook or {})), svc


def flowing(ctx, svc, what):
    """Wait until svc's log service gets a line newer than now."""
    n = len(svc.logged)
    ctx.wait_for(f"log lines at {svc.name} ({what})", lambda: len(svc.logged) > n + 5, limit=20)


def finish(ctx, where, sa, sb, nmoves):
    """The end: the sensors stop, the component (at where) reads all that was sent, then ends;
    every record, command and resume line is checked."""
    for s in (sa, sb):
        s.sending = False
    total = lambda: len(sa.sent) + len(sb.sent)  # noqa: E731
    got = lambda: sum(1 for s in (sa, sb) for ln in s.logged if ln.startswith("got "))  # noqa
    ctx.wait_for("every record sent to be logged", lambda: got() >= total(), limit=20)
    time.sleep(0.3)
    where.ferry("kill", "comp")
    time.sleep(0.3)
    check(sa, sb, nmoves)


def moves(ctx, tree=False, tcp=False, seqpacket=False):
    """tree: the sessions are opened by the init, which forks; its child uses them (both
    processes hold them, the relay puts the connection in both). tcp: the sensor is a TCP
    service, on a port of its own at each node."""
    key = m.make_key(ctx)
    (a, sa), (b, sb) = (make_node(ctx, key, n, tcp=tcp, seqpacket=seqpacket) for n in "AB")
    c, _ = make_node(ctx, key, "C", sensor=False)
    prog = os.path.join(ctx.scratch, "component.py")
    with open(prog, "w") as f:
        f.write(COMPONENT)
    a.ferry("run", "--name", "comp", "--", "python3", prog, *(["fork"] if tree else []),
            *(["seq"] if seqpacket else []))
    flowing(ctx, sa, "after the start")
    # the sessions as caps shows them
    caps = json.loads(a.ferry("caps", "comp", "--json")[1])
    fds = [fd for p in caps.get("processes", [caps])[-1:] for fd in p.get("fds", [])]
    sess = {fd.get("fd"): fd.get("meaning", "") for fd in fds if fd.get("kind") == "session"}
    for want in ("service sensor (tcp" if tcp else "service sensor", "service log",
                 "ROM calibration"):
        if not any(want in v for v in sess.values()):
            raise h.Fail(f"`ferry caps` shows no session to {want}: {sess}")
    where, svc = a, sa
    # each mode once (post-copy and stop-and-copy carry the late bytes with GO too)
    modes = ["precopy", "postcopy"] if tree else ["precopy", "postcopy", "stop-and-copy",
                                                  "precopy"]
    for i, mode in enumerate(modes):
        dst, dsvc = (b, sb) if where is a else (a, sa)
        m.migrate(ctx, where, "comp", dst, "--mode", mode)
        where, svc = dst, dsvc
        flowing(ctx, svc, f"after move {i + 1}")
    # a node without the sensor gateway: refused, and the component runs on where it was
    rc, _, err = m.migrate(ctx, where, "comp", c, ok=False)
    if rc == 0:
        raise h.Fail("a migration to a node lacking the sensor service was not refused")
    if "sensor" not in err:
        raise h.Fail(f"the refusal does not name the service: {h.tail(err, 3)}")
    if not where.running("comp"):
        raise h.Fail(f"the component does not run on {where.name} after the refused migration")
    flowing(ctx, svc, "after the refused migration")
    finish(ctx, where, sa, sb, 2 if tree else 4)
    if tcp:
        print(f"# TCP sensor: {len(sa.sent) + len(sb.sent)} records delivered, "
              f"{sa.unacked + sb.unacked} sent after their session ended (not acknowledged, "
              f"known to the sensor)")


def asked(ctx, tcp=False):
    """The link breaks right after the decision, before GO: the destination learns the outcome
    by asking the source, and gets the sessions' bytes that came after the capture with the
    answer (none lost, none twice)."""
    key = m.make_key(ctx)
    a, sa = make_node(ctx, key, "A", tcp=tcp, hook={"FERRY_TEST_MIGRATE_CUT": "src-decided"})
    b, sb = make_node(ctx, key, "B", tcp=tcp)
    prog = os.path.join(ctx.scratch, "component.py")
    with open(prog, "w") as f:
        f.write(COMPONENT)
    a.ferry("run", "--name", "comp", "--", "python3", prog)
    flowing(ctx, sa, "after the start")
    a.ferry("migrate", "comp", "--to", b.addr, ok=False, timeout=120)
    ctx.wait_for("the component to run at B", lambda: b.running("comp"), limit=60)
    if a.running("comp"):
        raise h.Fail("the component runs at A too")
    flowing(ctx, sb, "after the move")
    finish(ctx, b, sa, sb, 1)


WAITER = r"""
import os, selectors, socket, sys
go = sys.argv[1]
to = os.readlink('/run/ferry/services/sensor')
if to.startswith('tcp:'):
    host, port = to[4:].rsplit(':', 1)
    s = socket.create_connection((host, int(port)))
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if sys.argv[2:] else socket.SOCK_STREAM)
    s.connect('/run/ferry/services/sensor')
log = socket.socket(socket.AF_UNIX)
log.connect('/run/ferry/services/log')
os.dup2(s.fileno(), 50, inheritable=True)  # dups of the session, one without close-on-exec
os.dup2(s.fileno(), 51, inheritable=False)
print(f"FD {s.fileno()}", flush=True)
sel = selectors.DefaultSelector()  # epoll: its interest in the session must survive
sel.register(s, selectors.EVENT_READ)
while not os.path.exists(go):
    sel.select(0.02)  # the sensor's records pile up unread meanwhile
buf = b""
while True:
    for key, _ in sel.select():
        b = s.recv(4096)
        if not b:
            continue
        buf += b
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            log.sendall(b"got " + ln + b" rom=none\n")
"""


def restored(ctx, seqpacket=False, tcp=False):
    """Records the sensor sent while the component did not read are in the image; the restore
    delivers them first, then the new connection's, in order; the component's epoll instance
    watches the session throughout (before and after the connection takes the pair's place)."""
    key = m.make_key(ctx)
    a, sa = make_node(ctx, key, "A", seqpacket=seqpacket, tcp=tcp)
    prog = os.path.join(ctx.scratch, "waiter.py")
    with open(prog, "w") as f:
        f.write(WAITER)
    go = os.path.join(ctx.scratch, "go")
    img = os.path.join(ctx.scratch, "img")
    a.ferry("run", "--name", "w", "--", "python3", prog, go, *(["seq"] if seqpacket else []))
    ctx.wait_for("records queued", lambda: len(sa.sent) > 50, limit=20)
    a.ferry("checkpoint", "w", "--dir", img, "--stop")
    queued = len(sa.sent)
    caps = json.loads(a.ferry("inspect", img, "--json")[1])
    fds = [fd for p in caps.get("processes", [caps]) for fd in p.get("fds", [])]
    sens = [fd["session"] for fd in fds if fd.get("session", {}).get("service") == "sensor"]
    if not sens or sens[0].get("bytes_to_component", 0) <= 0 or \
            sens[0].get("kind") != ("tcp" if tcp else "unix"):
        raise h.Fail(f"inspect shows no sensor session with bytes in flight: {sens}")
    a.ferry("restore", "--dir", img, "--name", "w")
    ctx.wait_for("a new sensor connection", lambda: len(sa.sent) > queued + 20, limit=20)
    open(go, "w").close()
    flowing(ctx, sa, "after the restore")
    # the connection is at the session's fd and at both dups, each with its own flags
    pid = next(c["pid"] for c in json.loads(a.ferry("ps", "--json")[1]) if c.get("name") == "w")
    fd = int(next(ln.split()[1] for ln in a.ferry("logs", "w")[1].splitlines()
                  if ln.startswith("FD ")))
    links = {k: os.readlink(f"/proc/{pid}/fd/{k}") for k in (fd, 50, 51)}
    flags = {}
    for k in (fd, 50, 51):
        with open(f"/proc/{pid}/fdinfo/{k}") as f:
            flags[k] = int(next(ln.split()[1] for ln in f if ln.startswith("flags:")), 8)
    if len(set(links.values())) != 1 or flags[50] & 0o2000000 or not flags[51] & 0o2000000 \
            or not flags[fd] & 0o2000000:
        raise h.Fail(f"the session's fd and its dups after the restore: {links}, flags "
                     f"{ {k: oct(v) for k, v in flags.items()} }")
    sa.sending = False
    got = lambda: sum(1 for ln in sa.logged if ln.startswith("got "))  # noqa: E731
    ctx.wait_for("every record sent to be logged", lambda: got() >= len(sa.sent), limit=20)
    time.sleep(0.3)
    a.ferry("kill", "w")
    recs = [ln.split()[1] for ln in sa.logged]
    if recs != sa.sent:
        first = next((i for i, (x, y) in enumerate(zip(recs, sa.sent)) if x != y),
                     min(len(recs), len(sa.sent)))
        raise h.Fail(f"{len(sa.sent)} records sent ({queued} before the checkpoint), "
                     f"{len(recs)} logged; they differ from #{first}: logged "
                     f"{recs[first:first + 3]}, sent {sa.sent[first:first + 3]}")


def default_state(ctx):
    """With the default state directory, /run/ferry (a systemd node's), a component runs, is
    checkpointed and restored: the services' mounts (/run/ferry/services, /rom, /resume) hide
    none of the state, and those names cannot name a component."""
    env = dict(os.environ, FERRY_STATE_DIR="/run/ferry")
    name = f"sessions-default-{os.getpid()}"
    img = os.path.join(ctx.scratch, "img")

    def fr(*args, ok=True):
        rc, out, err = h.run_cmd([ctx.ferry_bin, *args], env=env, timeout=60)
        if ok and rc != 0:
            raise h.Fail(f"`ferry {' '.join(args)}` (state /run/ferry) exited {rc}: "
                         f"{h.tail(err, 3)}")
        return rc, out, err
    ctx.on_cleanup.append(lambda: h.run_cmd([ctx.ferry_bin, "kill", name], env=env, timeout=15))
    fr("run", "--name", name, "--", "sh", "-c",
       "ls /run/ferry/services /run/ferry/rom >/dev/null && echo SEEN; "
       "while sleep 0.05; do :; done")
    ctx.wait_for("the component's output", lambda: "SEEN" in fr("logs", name)[1], limit=10)
    fr("checkpoint", name, "--dir", img, "--stop")
    fr("restore", "--dir", img)
    ps = json.loads(fr("ps", "--json")[1])
    if not any(c.get("name") == name and c.get("state") == "running" for c in ps):
        raise h.Fail(f"{name} does not run after its restore: {ps}")
    fr("kill", name)
    rc, _, err = fr("run", "--name", "services", "--", "true", ok=False)
    if rc == 0 or "reserved" not in err:
        raise h.Fail(f"a component named 'services' was not refused: rc {rc}, {err!r}")


def check(sa, sb, nmoves):
    sent = sa.sent + sb.sent
    recs = []
    for s in (sa, sb):
        other = 0
        for ln in s.logged:
            parts = ln.split(" ", 2)
            if len(parts) != 3 or parts[0] != "got" or not parts[2].startswith("rom="):
                raise h.Fail(f"log service {s.name}: unexpected line {ln!r}")
            recs.append(parts[1])
            # the ROM read is the one of the node whose log service took the line, but for
            # a line read before a move and sent after it (one per move at most)
            other += parts[2] != f"rom=calibration of {s.name}"
        if other > 2:
            raise h.Fail(f"{other} lines logged at {s.name} read another node's ROM (2 moves "
                         f"into it)")
    count = collections.Counter(recs)
    twice = [r for r, n in count.items() if n > 1]
    lost = [r for r in sent if r not in count]
    extra = [r for r in count if r not in set(sent)]
    if twice or lost or extra:
        raise h.Fail(f"sensor records: {len(sent)} sent, {len(recs)} logged; twice {twice[:5]}, "
                     f"lost {lost[:5]} ({len(lost)}), never sent {extra[:5]}")
    if not sa.sent or not sb.sent:
        raise h.Fail(f"records from both nodes expected: A {len(sa.sent)}, B {len(sb.sent)}")
    cmds = collections.Counter(c.split()[1] for c in sa.cmds + sb.cmds)
    if any(n > 1 for n in cmds.values()) or len(cmds) != len(recs) // 10 or \
            any(r not in count for r in cmds):
        raise h.Fail(f"commands: {len(cmds)} received for {len(recs)} records (one per 10 "
                     f"expected), repeated: {[r for r, n in cmds.items() if n > 1][:5]}")
    # each re-created sensor session announced itself, with the same id and the next sequence
    resumes = sorted(sa.resumes + sb.resumes, key=lambda r: int(r[2]))
    if [int(r[2]) for r in resumes] != list(range(1, nmoves + 1)) or len({r[1] for r in resumes}) != 1 or \
            any(r[0] != "sensor" for r in resumes):
        raise h.Fail(f"FERRY-RESUME lines: {resumes}")


def tests():
    return [("moves", moves, SESSIONS_TIMEOUT), ("restored", restored, SESSIONS_TIMEOUT),
            ("tree", lambda ctx: moves(ctx, tree=True), SESSIONS_TIMEOUT),
            ("default-state", default_state, SESSIONS_TIMEOUT),
            ("restored-seqpacket", lambda ctx: restored(ctx, seqpacket=True), SESSIONS_TIMEOUT),
            ("moves-tcp", lambda ctx: moves(ctx, tcp=True), SESSIONS_TIMEOUT),
            ("tree-tcp", lambda ctx: moves(ctx, tree=True, tcp=True), SESSIONS_TIMEOUT),
            ("restored-tcp", lambda ctx: restored(ctx, tcp=True), SESSIONS_TIMEOUT),
            ("asked", asked, SESSIONS_TIMEOUT),
            ("moves-seqpacket", lambda ctx: moves(ctx, seqpacket=True), SESSIONS_TIMEOUT),
            ("asked-tcp", lambda ctx: asked(ctx, tcp=True), SESSIONS_TIMEOUT)]
