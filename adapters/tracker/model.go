package tracker

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Item statuses (rue's Status).
const (
	StatusTodo    = "todo"
	StatusClaimed = "claimed"
	StatusDone    = "done"
	StatusError   = "error"
	StatusStashed = "stashed"
)

// Attempt is one claim of an item.
type Attempt struct {
	Pipeline        string   `json:"pipeline"`
	PipelineVersion string   `json:"pipeline_version"`
	Time            float64  `json:"time"`
	Error           *string  `json:"error"`
	End             *float64 `json:"end,omitempty"`
}

// Claim is the open claim of an item (present only while status is claimed).
type Claim struct {
	Pipeline   string  `json:"pipeline"`
	Attempt    int     `json:"attempt"`
	LeaseUntil float64 `json:"lease_until"`
	Pod        string  `json:"pod"`
}

// AdminLog is one operator action on an item.
type AdminLog struct {
	Time   float64 `json:"time"`
	Action string  `json:"action"`
	By     string  `json:"by,omitempty"`
	Reason string  `json:"reason,omitempty"`
}

// Record is an item as stored in the TRACKER_ITEMS bucket (key = id). The first block is rue's
// Entry; Gen and Claim are jetbridge's bookkeeping.
type Record struct {
	ID           string          `json:"id"`
	Item         string          `json:"item"`
	QueuedBy     string          `json:"queued_by"`
	PipelineType string          `json:"pipeline_type"`
	Status       string          `json:"status"`
	Attempts     []Attempt       `json:"attempts"`
	QueuedAt     float64         `json:"queued_at"`
	ClaimedAt    *float64        `json:"claimed_at"`
	FinishedAt   *float64        `json:"finished_at"`
	Expires      *float64        `json:"expires"`
	Explanation  *string         `json:"explanation"`
	ParentItem   *string         `json:"parent_item"`
	Priority     int             `json:"priority"`
	RunOn        string          `json:"run_on"`
	Stash        *string         `json:"stash"`
	AdminLog     []AdminLog      `json:"admin_log"`
	Metadata     json.RawMessage `json:"metadata"`

	// Gen is the ready-queue generation: it starts from the clock (microseconds) when the record
	// is created and grows by one every time the item is put in the ready queue; a ready token
	// carries the generation it was published for, so stale tokens are recognised and dropped.
	Gen   uint64 `json:"gen"`
	Claim *Claim `json:"claim,omitempty"`
}

// level is the queue level: ascending priority + attempts (lower is claimed first).
func (r *Record) level() int { return r.Priority + len(r.Attempts) }

// entry is the claim payload's item: the Entry fields plus _current_attempt (a struct, not a
// map: it is encoded on every claim).
type entry struct {
	ID             string          `json:"id"`
	Item           string          `json:"item"`
	QueuedBy       string          `json:"queued_by"`
	PipelineType   string          `json:"pipeline_type"`
	Status         string          `json:"status"`
	Attempts       []Attempt       `json:"attempts"`
	QueuedAt       float64         `json:"queued_at"`
	ClaimedAt      *float64        `json:"claimed_at"`
	FinishedAt     *float64        `json:"finished_at"`
	Expires        *float64        `json:"expires"`
	Explanation    *string         `json:"explanation"`
	ParentItem     *string         `json:"parent_item"`
	Priority       int             `json:"priority"`
	RunOn          string          `json:"run_on"`
	Stash          *string         `json:"stash"`
	AdminLog       []AdminLog      `json:"admin_log"`
	Metadata       json.RawMessage `json:"metadata"`
	CurrentAttempt int             `json:"_current_attempt"`
}

// claimPayload is the Item:claim answer with an item.
type claimPayload struct {
	Item    *entry `json:"item"`
	InfoURL string `json:"info_url"`
}

// entryJSON is the claim payload's item: the Entry fields plus _current_attempt.
func (r *Record) entryJSON(current int) *entry {
	md := r.Metadata
	if len(md) == 0 {
		md = json.RawMessage("{}")
	}
	attempts := r.Attempts
	if attempts == nil {
		attempts = []Attempt{}
	}
	al := r.AdminLog
	if al == nil {
		al = []AdminLog{}
	}
	return &entry{ID: r.ID, Item: r.Item, QueuedBy: r.QueuedBy, PipelineType: r.PipelineType,
		Status: r.Status, Attempts: attempts, QueuedAt: r.QueuedAt, ClaimedAt: r.ClaimedAt,
		FinishedAt: r.FinishedAt, Expires: r.Expires, Explanation: r.Explanation,
		ParentItem: r.ParentItem, Priority: r.Priority, RunOn: r.RunOn, Stash: r.Stash,
		AdminLog: al, Metadata: md, CurrentAttempt: current}
}

func decodeRecord(b []byte) (*Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode item record: %w", err)
	}
	return &r, nil
}

func (r *Record) clone() *Record {
	c := *r
	c.Attempts = slices.Clone(r.Attempts)
	c.AdminLog = slices.Clone(r.AdminLog)
	if c.Attempts == nil {
		c.Attempts = []Attempt{}
	}
	if c.AdminLog == nil {
		c.AdminLog = []AdminLog{}
	}
	if r.Claim != nil {
		cl := *r.Claim
		c.Claim = &cl
	}
	return &c
}

func epoch(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func fptr(f float64) *float64 { return &f }

func sptr(s string) *string { return &s }

// newID makes a random UUIDv4 (never contains '_').
func newID() string {
	var b [16]byte
	idRand.read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return uuidString(b)
}

// idRand hands out crypto/rand bytes read 4 KiB at a time (one read per 256 ids, not one each).
var idRand randPool

type randPool struct {
	mu  sync.Mutex
	buf [4096]byte
	off int
}

func (p *randPool) read(out []byte) {
	p.mu.Lock()
	if p.off == 0 || p.off+len(out) > len(p.buf) {
		_, _ = rand.Read(p.buf[:])
		p.off = 0
	}
	copy(out, p.buf[p.off:])
	clear(p.buf[p.off : p.off+len(out)]) // handed-out bytes do not stay in memory
	p.off += len(out)
	if p.off == len(p.buf) {
		p.off = 0
	}
	p.mu.Unlock()
}

func uuidString(b [16]byte) string {
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}

// nameRule is a name pattern: an ASCII letter or digit, then up to 63 letters, digits, '-' (and
// '_' when underscore is set). Checked by hand: this runs on every command.
type nameRule struct {
	underscore bool
	pattern    string
}

var (
	reID      = nameRule{false, `^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`}
	reName    = nameRule{false, `^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`}
	reTypeTok = nameRule{true, `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`}
)

func (n nameRule) String() string { return n.pattern }

// MatchString reports whether s follows the rule.
func (n nameRule) MatchString(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && c == '-':
		case i > 0 && c == '_' && n.underscore:
		default:
			return false
		}
	}
	return true
}

// NewItem is an item to enqueue, as the admin API and the submit subject take it.
type NewItem struct {
	ID           string          `json:"id,omitempty"`
	Item         string          `json:"item"`
	PipelineType string          `json:"pipeline_type"`
	Priority     int             `json:"priority"`
	RunOn        string          `json:"run_on"`
	QueuedBy     string          `json:"queued_by"`
	Metadata     json.RawMessage `json:"metadata,omitempty"`
	Stash        string          `json:"stash,omitempty"`
	Explanation  string          `json:"explanation,omitempty"`
	ParentItem   string          `json:"parent_item,omitempty"`
	Expires      *float64        `json:"expires,omitempty"`
}

// DecodeNewItem parses and validates an item to enqueue (strict: unknown fields are refused).
func DecodeNewItem(data []byte) (NewItem, error) {
	var it NewItem
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&it); err != nil {
		return it, fmt.Errorf("invalid item JSON: %w", err)
	}
	return it, it.Validate()
}

// Validate checks an item to enqueue.
func (it *NewItem) Validate() error {
	switch {
	case it.Item == "":
		return fmt.Errorf("item: required")
	case len(it.Item) > 8192:
		return fmt.Errorf("item: longer than 8192 bytes")
	case !reTypeTok.MatchString(it.PipelineType):
		return fmt.Errorf("pipeline_type: must match %s", reTypeTok)
	case it.RunOn != "" && !reName.MatchString(it.RunOn):
		return fmt.Errorf("run_on: must be empty or a pipeline name")
	case it.ID != "" && !reID.MatchString(it.ID):
		return fmt.Errorf("id: must match %s (no '_')", reID)
	case it.Stash != "" && !reTypeTok.MatchString(it.Stash):
		return fmt.Errorf("stash: must match %s", reTypeTok)
	case it.Priority < -1000000 || it.Priority > 1000000:
		return fmt.Errorf("priority: out of range")
	}
	if len(it.Metadata) > 0 {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(it.Metadata, &m); err != nil || m == nil {
			return fmt.Errorf("metadata: must be an object")
		}
	}
	return nil
}
