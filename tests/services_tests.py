"""Node services tests (issue 6, its first part): each ferryd declares its services, by flags
and a configuration file; `ferry services` lists the node's own, with whether each is up, and
a bad declaration stops ferryd with a message that says what is wrong.

Imported by run.py, whose helpers it uses through __main__.
"""

import json
import os
import socket

import __main__ as h
import migrate_tests as m

SERVICES_TIMEOUT = 30


def listed(node):
    """{name: entry} of `ferry services --json` on node."""
    out = node.ferry("services", "--json")[1]
    try:
        return {s["name"]: s for s in json.loads(out)}
    except (ValueError, KeyError, TypeError) as e:
        raise h.Fail(f"[{node.name}] `ferry services --json` is not a list of services ({e})",
                     out[:300])


def declared(ctx):
    """Two nodes with a ROM of the same name and their own content, a sensor gateway (a Unix
    socket: listening on A only) and a log service over TCP: each node lists its own."""
    key = m.make_key(ctx)
    nodes = {}
    for name in ("A", "B"):
        d = os.path.join(ctx.root, f"svc-{name}")
        os.makedirs(d)
        with open(os.path.join(d, "calibration"), "w") as f:
            f.write(f"calibration of {name}\n" * (1 if name == "A" else 3))
        with open(os.path.join(d, "ferryd.conf"), "w") as f:
            f.write("# services of this node\n\n"
                    f"service sensor unix:{d}/sensor.sock   # the gateway\n"
                    f"service calibration rom:{d}/calibration\n")
        nodes[name] = d
    log = socket.socket()
    log.bind(("127.0.0.1", 0))
    log.listen()
    ctx.on_cleanup.append(log.close)
    gw = socket.socket(socket.AF_UNIX)
    gw.bind(os.path.join(nodes["A"], "sensor.sock"))
    gw.listen()
    ctx.on_cleanup.append(gw.close)
    logaddr = f"127.0.0.1:{log.getsockname()[1]}"
    a = m.Node(ctx, "A", key, args=["--config", os.path.join(nodes["A"], "ferryd.conf"),
                                    "--service", f"log=tcp:{logaddr}"]).start()
    b = m.Node(ctx, "B", key, args=["--service", f"log=tcp:{logaddr}",
                                    "--config", os.path.join(nodes["B"], "ferryd.conf")]).start()
    for node, d in ((a, nodes["A"]), (b, nodes["B"])):
        got = listed(node)
        want = {"sensor": ("unix", f"{d}/sensor.sock"), "calibration": ("rom", f"{d}/calibration"),
                "log": ("tcp", logaddr)}
        if sorted(got) != sorted(want):
            raise h.Fail(f"[{node.name}] lists {sorted(got)}, not {sorted(want)}")
        for name, (kind, target) in want.items():
            if (got[name].get("kind"), got[name].get("target")) != (kind, target):
                raise h.Fail(f"[{node.name}] service {name} is {got[name]}, not {kind} {target}")
        size = os.path.getsize(os.path.join(d, "calibration"))
        if not got["calibration"].get("up") or got["calibration"].get("status") != f"{size} bytes":
            raise h.Fail(f"[{node.name}] calibration: {got['calibration']}, expected {size} bytes")
        if not got["log"].get("up"):
            raise h.Fail(f"[{node.name}] the log service is listening, but: {got['log']}")
        if got["sensor"].get("up") != (node is a):
            raise h.Fail(f"[{node.name}] the sensor gateway listens on A only, but: "
                         f"{got['sensor']}")
    text = a.ferry("services")[1]
    if "calibration" not in text or "down" in text:
        raise h.Fail(f"`ferry services` on A: {text!r}")
    if "down: " not in b.ferry("services")[1]:
        raise h.Fail("`ferry services` on B does not say its sensor gateway is down")


def refused(ctx):
    """A declaration ferryd cannot honour stops it before it serves, saying what and where."""
    key = m.make_key(ctx)
    conf = os.path.join(ctx.root, "bad.conf")
    with open(conf, "w") as f:
        f.write("service ok rom:/etc/hostname\n\nservce typo unix:/x\n")
    ferryd = os.path.join(os.path.dirname(ctx.ferry_bin), "ferryd")
    cases = [(["--service", "cal=rom:/nonexistent/ferry-rom"], "/nonexistent/ferry-rom"),
             (["--service", "x=ftp:/y"], "kind 'ftp'"),
             (["--service", "s=unix:relative.sock"], "absolute"),
             (["--service", "l=tcp:localhost"], "HOST:PORT"),
             (["--service", "bad name=rom:/etc/hostname"], "service name"),
             (["--config", conf], "line 3"),
             (["--service", "d=rom:/etc/hostname", "--service", "d=unix:/x"], "declared twice")]
    for extra, want in cases:
        rc, _, err = h.run_cmd([ferryd, "--node", "R", "--listen", f"127.0.0.1:{m.free_port()}",
                                "--key", key, "--state-dir", os.path.join(ctx.root, "state-R"),
                                *extra], timeout=10)
        if rc in (0, None) or want not in err:
            raise h.Fail(f"ferryd {' '.join(extra)}: exit {rc}, {h.tail(err, 2)!r}; expected a "
                         f"refusal naming {want!r}")


def tests():
    return [("declared", declared, SERVICES_TIMEOUT), ("refused", refused, SERVICES_TIMEOUT)]
