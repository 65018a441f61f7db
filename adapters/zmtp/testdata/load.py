"""N DEALER peers x M messages against an echoing ROUTER, with at most W
requests in flight per peer; checks that every reply arrives in order.
Prints one JSON line: {"ok", "msgs", "seconds", "msgs_per_s", "error"}."""
import json
import sys
import time

import zmq

addr, npeers, nmsgs, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = zmq.Context()
socks = []
for i in range(npeers):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, b"load-%d" % i)
    s.connect(addr)
    socks.append(s)

# Warm up: one round trip per socket so every connection is established.
for s in socks:
    s.send_multipart([b"warmup"])
for s in socks:
    if s.poll(10000) == 0:
        print(json.dumps({"ok": False, "error": "warm-up timeout"}))
        sys.exit(1)
    s.recv_multipart()

sent = [0] * npeers
recvd = [0] * npeers
err = None
start = time.monotonic()


def recv_one(i):
    s = socks[i]
    if s.poll(10000) == 0:
        raise RuntimeError("peer %d: timeout waiting for reply %d" % (i, recvd[i]))
    frames = s.recv_multipart()
    want = b"%d" % recvd[i]
    if len(frames) != 2 or frames[0] != want or frames[1] != b"payload-" + want:
        raise RuntimeError("peer %d: got %r, want %r" % (i, frames[:2], want))
    recvd[i] += 1


try:
    for n in range(nmsgs):
        for i, s in enumerate(socks):
            s.send_multipart([b"%d" % n, b"payload-%d" % n])
            sent[i] += 1
            if sent[i] - recvd[i] >= window:
                recv_one(i)
    for i in range(npeers):
        while recvd[i] < nmsgs:
            recv_one(i)
except Exception as e:
    err = repr(e)

el = time.monotonic() - start
total = sum(recvd)
print(json.dumps({"ok": err is None, "msgs": total, "seconds": el,
                  "msgs_per_s": total / el if el > 0 else 0, "error": err}))
for s in socks:
    s.close()
ctx.term()
