package eventmq

import (
	"bufio"
	"bytes"
	"encoding/json"
	"github.com/jetbridge/jetbridge/adapters/zmtp/zmtptest"
	"io"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Interop with real libzmq peers through Debian's python3-zmq (testdata/peers.py).

const python = zmtptest.Python

func requirePyzmq(t testing.TB) {
	t.Helper()
	zmtptest.RequirePyzmq(t, "EventMQ libzmq interop")
}

type pyPeers struct {
	t     testing.TB
	mu    sync.Mutex
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	errb  *bytes.Buffer
}

func startPeers(t testing.TB) *pyPeers {
	t.Helper()
	requirePyzmq(t)
	p := &pyPeers{t: t, lines: make(chan string, 16), errb: &bytes.Buffer{}}
	p.cmd = exec.Command(python, "testdata/peers.py")
	p.cmd.Stderr = &lockedWriter{w: p.errb}
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		_ = p.stdin.Close()
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	})
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *pyPeers) do(cmd map[string]any) map[string]any {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := json.Marshal(cmd)
	if _, err := p.stdin.Write(append(b, '\n')); err != nil {
		p.t.Fatalf("driver: %v", err)
	}
	select {
	case line, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("driver exited")
		}
		var out map[string]any
		if err := json.Unmarshal([]byte(line), &out); err != nil {
			p.t.Fatalf("driver said %q", line)
		}
		if e, ok := out["error"]; ok {
			p.t.Fatalf("driver error on %v: %v", cmd, e)
		}
		return out
	case <-time.After(30 * time.Second):
		p.t.Fatalf("driver silent on %v", cmd)
	}
	return nil
}

func tcp(addr string) string { return "tcp://" + addr }

func (p *pyPeers) dealer(name, addr string) {
	p.do(map[string]any{"op": "dealer", "name": name, "addr": tcp(addr)})
}

// emqp sends [”, eMQP/1.0, command, uuid4, body...] and returns the msgid.
func (p *pyPeers) emqp(name, command string, body ...string) string {
	if body == nil {
		body = []string{}
	}
	return p.do(map[string]any{"op": "emqp", "name": name, "command": command, "body": body})["msgid"].(string)
}

func (p *pyPeers) sendRaw(name string, frames ...string) {
	p.do(map[string]any{"op": "send", "name": name, "frames": frames})
}

// recv returns the next message's frames, nil on timeout.
func (p *pyPeers) recv(name string, timeout time.Duration) []string {
	out := p.do(map[string]any{"op": "recv", "name": name, "timeout": timeout.Milliseconds()})
	if _, ok := out["timeout"]; ok {
		return nil
	}
	var fr []string
	for _, f := range out["frames"].([]any) {
		fr = append(fr, f.(string))
	}
	return fr
}

// recvCmd returns the next message with command cmd (others skipped), failing after timeout.
func (p *pyPeers) recvCmd(name, cmd string, timeout time.Duration) []string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		fr := p.recv(name, time.Until(deadline))
		if fr == nil {
			break
		}
		if len(fr) >= 3 && fr[2] == cmd {
			return fr
		}
	}
	p.t.Fatalf("%s: no %s within %v", name, cmd, timeout)
	return nil
}

type jmOpts struct {
	queues    string
	slots     int
	work      time.Duration
	failAfter int
}

// jobManager starts an emulated JobManager (READY only after the first HEARTBEAT).
func (p *pyPeers) jobManager(name, addr string, o jmOpts) {
	cmd := map[string]any{"op": "jobmanager", "name": name, "addr": tcp(addr), "queues": o.queues,
		"slots": max(o.slots, 1), "hb": 0.1, "work": o.work.Seconds()}
	if o.failAfter > 0 {
		cmd["fail_after"] = o.failAfter
	}
	p.do(cmd)
}

type jmState struct {
	Executed []string
	Requests [][]any
	Events   []string
	Started  bool
}

func (p *pyPeers) jm(name, stop string) jmState {
	cmd := map[string]any{"op": "jm", "name": name}
	if stop != "" {
		cmd["stop"] = stop
	}
	out := p.do(cmd)
	b, _ := json.Marshal(out)
	var st jmState
	_ = json.Unmarshal(b, &st)
	return st
}
