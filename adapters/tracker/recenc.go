package tracker

// recenc.go encodes item records and claim answers without reflection: every item change
// writes its record (enqueue, claim, finish) and every claim answers with the item. The output is
// byte-identical to json.Marshal's; anything unusual (floats json.Marshal writes with an
// exponent or refuses, metadata that compacting would change) takes json.Marshal's own path.

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
)

// encodeRecord is json.Marshal(r) (nil when json.Marshal fails).
func encodeRecord(r *Record) []byte {
	n := 448 + len(r.Item) + len(r.Metadata) + 192*len(r.Attempts) + 128*len(r.AdminLog)
	b, ok := appendRecord(make([]byte, 0, n), r)
	if !ok {
		b, _ = json.Marshal(r)
	}
	return b
}

// appendRecord appends json.Marshal(r); false when r needs json.Marshal's own path.
func appendRecord(b []byte, r *Record) ([]byte, bool) {
	b, ok := appendEntryFields(b, r, r.Attempts, r.AdminLog, r.Metadata)
	if !ok {
		return b, false
	}
	b = append(b, `,"gen":`...)
	b = strconv.AppendUint(b, r.Gen, 10)
	if c := r.Claim; c != nil {
		b = append(b, `,"claim":{"pipeline":`...)
		b = appendJSONString(b, c.Pipeline)
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(c.Attempt), 10)
		b = append(b, `,"lease_until":`...)
		if b, ok = appendPlainFloat(b, c.LeaseUntil); !ok {
			return b, false
		}
		b = append(b, `,"pod":`...)
		b = appendJSONString(b, c.Pod)
		b = append(b, '}')
	}
	return append(b, '}'), true
}

// encodeClaimResponse is EncodeResponse(200, claimPayload{Item: r.entryJSON(current), InfoURL: infoURL}, seq).
func encodeClaimResponse(r *Record, current int, infoURL string, seq int64) []byte {
	b := make([]byte, 0, 448+len(r.Item)+len(r.Metadata)+len(infoURL)+192*len(r.Attempts)+128*len(r.AdminLog))
	b = append(b, `{"status":200,"payload":{"item":`...)
	attempts, al, md := r.Attempts, r.AdminLog, r.Metadata
	if attempts == nil {
		attempts = []Attempt{}
	}
	if al == nil {
		al = []AdminLog{}
	}
	if len(md) == 0 {
		md = json.RawMessage("{}")
	}
	b, ok := appendEntryFields(b, r, attempts, al, md)
	if !ok {
		return EncodeResponse(200, claimPayload{Item: r.entryJSON(current), InfoURL: infoURL}, seq)
	}
	b = append(b, `,"_current_attempt":`...)
	b = strconv.AppendInt(b, int64(current), 10)
	b = append(b, `},"info_url":`...)
	b = appendJSONString(b, infoURL)
	b = append(b, `},"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	return append(b, '}')
}

// appendEntryFields appends '{' and the Entry fields of r (id … metadata), without the closing
// brace.
func appendEntryFields(b []byte, r *Record, attempts []Attempt, al []AdminLog, md json.RawMessage) ([]byte, bool) {
	ok := true
	b = append(b, `{"id":`...)
	b = appendJSONString(b, r.ID)
	b = append(b, `,"item":`...)
	b = appendJSONString(b, r.Item)
	b = append(b, `,"queued_by":`...)
	b = appendJSONString(b, r.QueuedBy)
	b = append(b, `,"pipeline_type":`...)
	b = appendJSONString(b, r.PipelineType)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, r.Status)
	b = append(b, `,"attempts":`...)
	if attempts == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range attempts {
			a := &attempts[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"pipeline":`...)
			b = appendJSONString(b, a.Pipeline)
			b = append(b, `,"pipeline_version":`...)
			b = appendJSONString(b, a.PipelineVersion)
			b = append(b, `,"time":`...)
			if b, ok = appendPlainFloat(b, a.Time); !ok {
				return b, false
			}
			b = append(b, `,"error":`...)
			b = appendStringPtr(b, a.Error)
			if a.End != nil {
				b = append(b, `,"end":`...)
				if b, ok = appendPlainFloat(b, *a.End); !ok {
					return b, false
				}
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"queued_at":`...)
	if b, ok = appendPlainFloat(b, r.QueuedAt); !ok {
		return b, false
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{{`,"claimed_at":`, r.ClaimedAt}, {`,"finished_at":`, r.FinishedAt}, {`,"expires":`, r.Expires}} {
		b = append(b, f.name...)
		if f.v == nil {
			b = append(b, "null"...)
		} else if b, ok = appendPlainFloat(b, *f.v); !ok {
			return b, false
		}
	}
	b = append(b, `,"explanation":`...)
	b = appendStringPtr(b, r.Explanation)
	b = append(b, `,"parent_item":`...)
	b = appendStringPtr(b, r.ParentItem)
	b = append(b, `,"priority":`...)
	b = strconv.AppendInt(b, int64(r.Priority), 10)
	b = append(b, `,"run_on":`...)
	b = appendJSONString(b, r.RunOn)
	b = append(b, `,"stash":`...)
	b = appendStringPtr(b, r.Stash)
	b = append(b, `,"admin_log":`...)
	if al == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range al {
			l := &al[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"time":`...)
			if b, ok = appendPlainFloat(b, l.Time); !ok {
				return b, false
			}
			b = append(b, `,"action":`...)
			b = appendJSONString(b, l.Action)
			if l.By != "" {
				b = append(b, `,"by":`...)
				b = appendJSONString(b, l.By)
			}
			if l.Reason != "" {
				b = append(b, `,"reason":`...)
				b = appendJSONString(b, l.Reason)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"metadata":`...)
	if len(md) == 0 {
		b = append(b, "null"...)
	} else {
		if !plainJSON(md) {
			return b, false
		}
		b = append(b, md...)
	}
	return b, true
}

func appendStringPtr(b []byte, s *string) []byte {
	if s == nil {
		return append(b, "null"...)
	}
	return appendJSONString(b, *s)
}

// appendPlainFloat appends f as json.Marshal writes it when that is plain decimal notation
// (0 or 1e-6 <= |f| < 1e21); false otherwise.
func appendPlainFloat(b []byte, f float64) ([]byte, bool) {
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21 || math.IsNaN(f)) {
		return b, false
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64), true
}

// plainJSON says whether json.Marshal copies raw as it is: valid JSON without whitespace between
// tokens and without characters it escapes inside strings (<, >, &, and any non-ASCII byte,
// conservatively).
func plainJSON(raw []byte) bool {
	in, esc := false, false
	for _, c := range raw {
		switch {
		case c >= 0x80 || c == '<' || c == '>' || c == '&':
			return false
		case in:
			if esc {
				esc = false
			} else if c == '\\' {
				esc = true
			} else if c == '"' {
				in = false
			}
		case c == '"':
			in = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			return false
		}
	}
	return json.Valid(raw)
}

// encodeToken is json.Marshal(token{ID: id, Gen: gen}).
func encodeToken(id string, gen uint64) []byte {
	b := make([]byte, 0, 24+len(id)+20)
	b = append(b, `{"id":`...)
	b = appendJSONString(b, id)
	b = append(b, `,"gen":`...)
	b = strconv.AppendUint(b, gen, 10)
	return append(b, '}')
}

// decodeToken is json.Unmarshal into a token: the form encodeToken writes is read by hand.
func decodeToken(b []byte) (token, error) {
	const pre, mid = `{"id":"`, `","gen":`
	if bytes.HasPrefix(b, []byte(pre)) && len(b) > len(pre) && b[len(b)-1] == '}' {
		rest := b[len(pre) : len(b)-1]
		if q := bytes.IndexByte(rest, '"'); q >= 0 && bytes.HasPrefix(rest[q:], []byte(mid)) {
			id, num := rest[:q], rest[q+len(mid):]
			plain := len(num) > 0 && len(num) <= 19 && (num[0] != '0' || len(num) == 1)
			for _, c := range num {
				plain = plain && c >= '0' && c <= '9'
			}
			for _, c := range id {
				plain = plain && c >= 0x20 && c < 0x7f && c != '\\'
			}
			if plain {
				gen, err := strconv.ParseUint(string(num), 10, 64)
				if err == nil {
					return token{ID: string(id), Gen: gen}, nil
				}
			}
		}
	}
	var t token
	err := json.Unmarshal(b, &t)
	return t, err
}
