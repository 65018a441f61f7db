package zerotask

// model.go: what ZeroTask keeps in JetStream (task, node and client records) and how ids map onto
// KV keys and subjects.

import (
	"crypto/rand"
	"encoding/json"
	"strings"
	"time"
)

// Task statuses (§1.3).
const (
	StatusQueued   = 1000
	StatusAssigned = 3000
	StatusRunning  = 5000
	StatusFinished = 7000
	StatusFailed   = 9000
)

// StatusName names a status for metrics and the admin API.
func StatusName(s int) string {
	switch s {
	case StatusQueued:
		return "queued"
	case StatusAssigned:
		return "assigned"
	case StatusRunning:
		return "running"
	case StatusFinished:
		return "finished"
	case StatusFailed:
		return "failed"
	}
	return "unknown"
}

func terminal(s int) bool { return s == StatusFinished || s == StatusFailed }

// Logical asset names.
const (
	streamQueue  = "ZEROTASK_QUEUE"
	consumerDog  = "ZEROTASK_WATCHDOG"
	bucketTasks  = "ZEROTASK_TASKS"
	bucketNodes  = "ZEROTASK_NODES"
	bucketClient = "ZEROTASK_CLIENTS"
)

// Task is the record of one task (KV ZEROTASK_TASKS, key = encoded full id).
type Task struct {
	ID       string          `json:"id"` // full id "<client_id>-<task_id>"
	ClientID string          `json:"client_id"`
	TaskID   string          `json:"task_id"` // the short id
	Method   string          `json:"method"`
	Params   json.RawMessage `json:"params"`
	Status   int             `json:"status"`
	NodeID   string          `json:"node_id,omitempty"`
	Attempts int             `json:"attempts"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    json.RawMessage `json:"error,omitempty"`
	Created  time.Time       `json:"created"`
	Updated  time.Time       `json:"updated"`
	Assigned *time.Time      `json:"assigned,omitempty"`
	Fetched  *time.Time      `json:"fetched,omitempty"`
	// Pod is the pod that last changed the task.
	Pod string `json:"pod,omitempty"`
}

// Peer is a ZeroTask participant's record (KV ZEROTASK_NODES or ZEROTASK_CLIENTS, key = encoded
// id). A participant connected over ZeroMQ is kept alive by its pod while its connection lasts;
// one using HTTP or NATS by its own calls (node_heartbeat or any other).
type Peer struct {
	ID        string    `json:"id"`
	Pod       string    `json:"pod,omitempty"`
	Conn      string    `json:"conn,omitempty"` // hex routing id of the ZeroMQ connection ("" over HTTP/NATS)
	Transport string    `json:"transport"`      // zmq, http, nats
	Connected time.Time `json:"connected"`
	LastSeen  time.Time `json:"last_seen"`
	Workers   int       `json:"workers,omitempty"`
}

// alive reports whether the record was refreshed within timeout.
func (p *Peer) alive(now time.Time, timeout time.Duration) bool {
	return now.Sub(p.LastSeen) < timeout
}

// queueMsg is the work-queue message of a task (stream ZEROTASK_QUEUE): the task as submitted.
type queueMsg struct {
	ID       string          `json:"id"`
	ClientID string          `json:"client_id"`
	TaskID   string          `json:"task_id"`
	Method   string          `json:"method"`
	Params   json.RawMessage `json:"params"`
}

// key encodes an id as a KV key: [A-Za-z0-9_-] stay, every other byte is "=XX".
func key(id string) string {
	clean := id != ""
	for i := 0; i < len(id) && clean; i++ {
		clean = keyByte(id[i])
	}
	if clean {
		return id
	}
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if keyByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte("0123456789ABCDEF"[c>>4])
		b.WriteByte("0123456789ABCDEF"[c&15])
	}
	if b.Len() == 0 {
		return "="
	}
	return b.String()
}

func keyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// unkey reverses key.
func unkey(k string) string {
	if k == "=" {
		return ""
	}
	if !strings.Contains(k, "=") {
		return k
	}
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] == '=' && i+2 < len(k) {
			if v, ok := unhex(k[i+1], k[i+2]); ok {
				b.WriteByte(v)
				i += 2
				continue
			}
		}
		b.WriteByte(k[i])
	}
	return b.String()
}

func unhex(a, b byte) (byte, bool) {
	h := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'A' && c <= 'F':
			return c - 'A' + 10, true
		}
		return 0, false
	}
	x, ok1 := h(a)
	y, ok2 := h(b)
	return x<<4 | y, ok1 && ok2
}

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// randomID returns 20 random ASCII letters, like jsonrpc.get_random_id.
func randomID() string {
	var b [20]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b[:])
}
