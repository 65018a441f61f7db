"""pyzmq driver for the interop tests: one JSON command per stdin line,
one JSON answer per stdout line. Frames travel as hex strings."""
import json
import sys

import zmq

ctx = zmq.Context()
socks = {}


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def frames_hex(frames):
    return [f.hex() for f in frames]


for line in sys.stdin:
    c = json.loads(line)
    op = c["op"]
    try:
        if op == "socket":
            s = ctx.socket(getattr(zmq, c["type"]))
            s.setsockopt(zmq.LINGER, 0)
            for k, v in c.get("opts", {}).items():
                s.setsockopt(getattr(zmq, k), v)
            if c.get("identity"):
                s.setsockopt(zmq.IDENTITY, bytes.fromhex(c["identity"]))
            s.connect(c["addr"])
            socks[c["name"]] = s
            out({"ok": True})
        elif op == "send":
            flags = zmq.NOBLOCK if c.get("noblock") else 0
            try:
                socks[c["name"]].send_multipart([bytes.fromhex(f) for f in c["frames"]], flags)
                out({"ok": True})
            except zmq.Again:
                out({"ok": True, "again": True})
        elif op == "recv":
            s = socks[c["name"]]
            if s.poll(c.get("timeout", 10000)) == 0:
                out({"ok": True, "timeout": True})
            else:
                out({"ok": True, "frames": frames_hex(s.recv_multipart())})
        elif op in ("sub", "unsub"):
            s = socks[c["name"]]
            prefix = bytes.fromhex(c["prefix"])
            if s.type == zmq.XSUB:
                s.send((b"\x01" if op == "sub" else b"\x00") + prefix)
            else:
                s.setsockopt(zmq.SUBSCRIBE if op == "sub" else zmq.UNSUBSCRIBE, prefix)
            out({"ok": True})
        elif op == "close":
            socks.pop(c["name"]).close()
            out({"ok": True})
        elif op == "exit":
            out({"ok": True})
            break
        else:
            out({"ok": False, "error": "unknown op " + op})
    except Exception as e:  # reported to the Go test
        out({"ok": False, "error": repr(e)})

for s in socks.values():
    s.close()
ctx.term()
