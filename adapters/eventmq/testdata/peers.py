#!/usr/bin/python3
"""Test driver: real libzmq peers (pyzmq) speaking the exact eMQP/1.0 frames of the original
EventMQ client, job manager, scheduler and emq-cli. One JSON command per stdin line, one JSON
answer per stdout line."""
import json
import sys
import threading
import time
import uuid

import zmq

ctx = zmq.Context.instance()
socks = {}
managers = {}
VERSION = b'eMQP/1.0'


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def dealer(addr, identity):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if identity:
        s.setsockopt(zmq.IDENTITY, identity.encode())
    s.connect(addr)
    return s


def send_emqp(sock, command, *body):
    """As eventmq.utils.messages.send_emqp_message: '', version, COMMAND, msgid, body..."""
    msgid = str(uuid.uuid4())
    frames = [b'', VERSION, command.encode(), msgid.encode()] + [b.encode() if isinstance(b, str) else b for b in body]
    sock.send_multipart(frames, zmq.NOBLOCK)
    return msgid


class JobManager(threading.Thread):
    """Behaves like eventmq.jobmanager.JobManager: INFORM, wait for ACK, start the worker slots
    only at the first HEARTBEAT received (then one READY per slot), HEARTBEAT every hb seconds,
    REPLY (when reply-requested) and READY after each job, KBYE on stop."""

    def __init__(self, addr, identity, queues, slots, hb, work, fail_after):
        super().__init__(daemon=True)
        self.sock = dealer(addr, identity)
        self.queues, self.slots, self.hb, self.work = queues, slots, hb, work
        self.lock = threading.Lock()
        self.executed = []       # msgids of jobs run
        self.requests = []       # [msgid, queue, headers, payload]
        self.stop_mode = None    # 'kbye' | 'silent' | 'close'
        self.silent = False
        self.fail_after = fail_after
        self.running = []        # [deadline, msgid, headers, payload]
        self.started = False
        self.events = []

    def run(self):
        sock = self.sock
        send_emqp(sock, 'INFORM', self.queues, 'worker')
        acked = False
        last_hb = time.time()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while True:
            with self.lock:
                mode = self.stop_mode
            if mode == 'kbye':
                send_emqp(sock, 'KBYE')
                time.sleep(0.05)
                sock.close()
                return
            if mode == 'close':
                sock.close()
                return
            if mode == 'silent':
                time.sleep(0.01)
                continue
            ev = dict(poller.poll(10))
            if ev.get(sock) == zmq.POLLIN:
                frames = sock.recv_multipart()
                cmd = frames[2].decode()
                with self.lock:
                    self.events.append(cmd)
                if not acked:
                    if cmd == 'ACK':
                        acked = True
                    continue  # everything but ACK is dropped while waiting for it
                if cmd == 'HEARTBEAT' and not self.started:
                    self.started = True
                    for _ in range(self.slots):
                        send_emqp(sock, 'READY')
                elif cmd == 'REQUEST':
                    msgid = frames[3].decode()
                    queue, headers, payload = [f.decode() for f in frames[4:7]]
                    with self.lock:
                        self.requests.append([msgid, queue, headers, payload, len(frames)])
                        crash = self.fail_after is not None and len(self.requests) > self.fail_after
                    if crash:
                        with self.lock:
                            self.stop_mode = 'silent'
                        continue
                    self.running.append([time.time() + self.work, msgid, headers, payload])
            now = time.time()
            for job in [j for j in self.running if j[0] <= now]:
                self.running.remove(job)
                _, msgid, headers, payload = job
                with self.lock:
                    self.executed.append(msgid)
                args = json.loads(payload)[1].get('args', [])
                if 'reply-requested' in headers:
                    send_emqp(sock, 'REPLY', json.dumps({"value": args}), msgid)
                send_emqp(sock, 'READY')
            if acked and now - last_hb >= self.hb:
                last_hb = now
                send_emqp(sock, 'HEARTBEAT', str(time.time()))


def handle(c):
    op = c['op']
    if op == 'dealer':
        socks[c['name']] = dealer(c['addr'], c.get('identity') or str(uuid.uuid4()))
        return {'ok': True}
    if op == 'sub':
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, c['topic'].encode())
        s.connect(c['addr'])
        socks[c['name']] = s
        return {'ok': True}
    if op == 'send':
        socks[c['name']].send_multipart([f.encode() for f in c['frames']], zmq.NOBLOCK)
        return {'ok': True}
    if op == 'emqp':
        return {'msgid': send_emqp(socks[c['name']], c['command'], *c.get('body', []))}
    if op == 'recv':
        s = socks[c['name']]
        if s.poll(c.get('timeout', 5000)) == 0:
            return {'timeout': True}
        return {'frames': [f.decode('utf-8', 'replace') for f in s.recv_multipart()]}
    if op == 'close':
        socks.pop(c['name']).close()
        return {'ok': True}
    if op == 'jobmanager':
        jm = JobManager(c['addr'], c.get('identity') or str(uuid.uuid4()), c.get('queues', ''),
                        c.get('slots', 4), c.get('hb', 3.0), c.get('work', 0.0), c.get('fail_after'))
        managers[c['name']] = jm
        jm.start()
        return {'ok': True}
    if op == 'jm':
        jm = managers[c['name']]
        with jm.lock:
            if c.get('stop'):
                jm.stop_mode = c['stop']
            return {'executed': list(jm.executed), 'requests': list(jm.requests), 'events': list(jm.events),
                    'started': jm.started}
    return {'error': 'unknown op ' + op}


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        out(handle(json.loads(line)))
    except Exception as e:  # report, keep going
        out({'error': repr(e)})
