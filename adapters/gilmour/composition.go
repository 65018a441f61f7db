package gilmour

// composition.go: composition specs (canonical JSON and the 2016 keys) <-> Step trees. No I/O.

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"
)

// Composition kinds (spec §2.1).
const (
	KindRequest  = "request"
	KindPipe     = "pipe"
	KindAndAnd   = "andand"
	KindOrOr     = "oror"
	KindBatch    = "batch"
	KindParallel = "parallel"
	KindLambda   = "lambda"
)

// Limits of a composition spec.
const (
	maxCompositionDepth = 32
	maxCompositionSteps = 1000
)

// Step is one node of a composition tree.
type Step struct {
	Kind    string
	Topic   string          // request
	Message json.RawMessage // request: merged over the step's input (nil = none)
	Timeout int             // request: seconds (0 = the request's timeout)
	Lambda  string          // lambda: path on the calling node
	Steps   []*Step         // pipe, andand, oror, batch, parallel
	Record  bool            // batch: return every step's message
}

// MarshalJSON writes the canonical form.
func (s *Step) MarshalJSON() ([]byte, error) {
	switch s.Kind {
	case KindRequest:
		m := map[string]any{"topic": s.Topic}
		if s.Message != nil {
			m["message"] = s.Message
		}
		if s.Timeout > 0 {
			m["timeout"] = s.Timeout
		}
		return json.Marshal(m)
	case KindLambda:
		return json.Marshal(map[string]string{"lambda": s.Lambda})
	default:
		m := map[string]any{s.Kind: s.Steps}
		if s.Record {
			m["record"] = true
		}
		return json.Marshal(m)
	}
}

// ParseComposition parses a composition spec. Canonical form:
//
//	{"pipe":[{"topic":"a","message":{…},"timeout":5},{"parallel":[…]},{"lambda":"/path"}]}
//
// plus the 2016 keys: {"requests12":{"topic":<message|"">}}, kind keys with a suffix
// ("pipe42"), and "record": true on a batch.
func ParseComposition(raw json.RawMessage) (*Step, error) {
	n := 0
	return parseStep(raw, 0, &n)
}

var compositeKinds = []string{KindParallel, KindAndAnd, KindOrOr, KindBatch, KindPipe}

func parseStep(raw json.RawMessage, depth int, count *int) (*Step, error) {
	if depth > maxCompositionDepth {
		return nil, bad("composition: nested deeper than %d", maxCompositionDepth)
	}
	*count++
	if *count > maxCompositionSteps {
		return nil, bad("composition: more than %d steps", maxCompositionSteps)
	}
	m, err := objectFields(raw, "composition step")
	if err != nil {
		return nil, err
	}
	if t, ok := m["topic"]; ok && present(t) {
		s := &Step{Kind: KindRequest}
		if s.Topic, err = getString(m, "topic", "composition step"); err != nil {
			return nil, err
		}
		if err := ValidateTopic(s.Topic, false); err != nil {
			return nil, bad("composition step: %v", err)
		}
		if msg, ok := m["message"]; ok && present(msg) {
			s.Message = msg
		}
		if s.Timeout, err = getInt(m, "timeout", "composition step"); err != nil {
			return nil, err
		}
		return s, nil
	}
	var kindKey, kind string
	for _, k := range sortedKeys(m) {
		if k == "record" || k == "timeout" || k == "message" {
			continue
		}
		kk := matchKind(k)
		if kk == "" {
			return nil, bad("composition: unknown key %q", k)
		}
		if kindKey != "" {
			return nil, bad("composition: a step has one kind, got %q and %q", kindKey, k)
		}
		kindKey, kind = k, kk
	}
	if kindKey == "" {
		return nil, bad("composition: step without topic or kind")
	}
	val := m[kindKey]
	switch kind {
	case KindLambda:
		var p string
		if err := json.Unmarshal(val, &p); err != nil || p == "" {
			return nil, bad("composition: lambda must be a non-empty path string")
		}
		if p, err = normPath(p, ""); err != nil {
			return nil, bad("composition: lambda: %v", err)
		}
		return &Step{Kind: KindLambda, Lambda: p}, nil
	case KindRequest: // 2016: {"requestsN": {"<topic>": <message map | "">}}
		inner, err := objectFields(val, "composition "+kindKey)
		if err != nil {
			return nil, err
		}
		if len(inner) != 1 {
			return nil, bad("composition: %s must name exactly one topic", kindKey)
		}
		s := &Step{Kind: KindRequest}
		for t, msg := range inner {
			s.Topic = t
			if present(msg) && string(bytes.TrimSpace(msg)) != `""` {
				s.Message = msg
			}
		}
		if err := ValidateTopic(s.Topic, false); err != nil {
			return nil, bad("composition step: %v", err)
		}
		return s, nil
	}
	s := &Step{Kind: kind}
	if rec, ok := m["record"]; ok && present(rec) {
		if err := json.Unmarshal(rec, &s.Record); err != nil {
			return nil, bad("composition: record must be a boolean")
		}
	}
	var items []json.RawMessage
	if err := json.Unmarshal(val, &items); err != nil {
		return nil, bad("composition: %s must be a list of steps", kindKey)
	}
	if len(items) == 0 {
		return nil, bad("composition: %s has no steps", kindKey)
	}
	for _, it := range items {
		st, err := parseStep(it, depth+1, count)
		if err != nil {
			return nil, err
		}
		s.Steps = append(s.Steps, st)
	}
	return s, nil
}

// matchKind maps a key to its kind; 2016 clients added numeric suffixes ("pipe42", "requests3").
func matchKind(k string) string {
	base := strings.TrimRight(k, "0123456789")
	switch base {
	case "requests", "request":
		return KindRequest
	case KindLambda:
		return KindLambda
	}
	for _, kind := range compositeKinds {
		if base == kind {
			return kind
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
