"""Drives real libzmq sockets (pyzmq) for the zerotask interop tests.

Reads one JSON command per line on stdin and answers one JSON line on stdout:
  {"op": "req"|"sub", "sock": NAME, "addr": "tcp://..."}   open a REQ or SUB (subscribed to "") socket
  {"op": "send", "sock": NAME, "frame": TEXT}              REQ: send TEXT as one frame, answer the reply frame
  {"op": "sendjson", "sock": NAME, "obj": OBJ}             REQ: send_json(OBJ) as the original client does, answer the reply
  {"op": "wait", "sock": NAME, "match": [TEXT...], "timeout": MS}  SUB: the first frame containing every TEXT
  {"op": "close", "sock": NAME}
Replies: {"ok": true, "frame": TEXT} or {"ok": false, "error": TEXT}.
"""
import json
import sys
import time

import zmq

ctx = zmq.Context()
socks = {}


def handle(cmd):
    op = cmd["op"]
    if op in ("req", "sub"):
        s = ctx.socket(zmq.REQ if op == "req" else zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        if op == "sub":
            s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(cmd["addr"])
        socks[cmd["sock"]] = s
        return {"ok": True}
    s = socks[cmd["sock"]]
    if op in ("send", "sendjson"):
        if op == "send":
            s.send(cmd["frame"].encode("utf-8"))
        else:
            s.send_json(cmd["obj"])
        if not s.poll(cmd.get("timeout", 10000)):
            return {"ok": False, "error": "no reply"}
        frames = s.recv_multipart()
        if len(frames) != 1:
            return {"ok": False, "error": "reply of %d frames" % len(frames)}
        return {"ok": True, "frame": frames[0].decode("utf-8")}
    if op == "wait":
        deadline = time.time() + cmd.get("timeout", 10000) / 1000.0
        while True:
            left = int((deadline - time.time()) * 1000)
            if left <= 0 or not s.poll(left):
                return {"ok": False, "error": "nothing matched %r" % cmd["match"]}
            f = s.recv().decode("utf-8")
            if all(m in f for m in cmd["match"]):
                return {"ok": True, "frame": f}
    if op == "close":
        s.close(0)
        del socks[cmd["sock"]]
        return {"ok": True}
    return {"ok": False, "error": "unknown op " + op}


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        out = handle(json.loads(line))
    except Exception as e:  # report, keep going
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
