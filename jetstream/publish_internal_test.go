package jetstream

import "testing"

func TestParsePubAck(t *testing.T) {
	good := []struct {
		in   string
		want PubAck
	}{
		{`{"stream":"S","seq":5}`, PubAck{Stream: "S", Sequence: 5}},
		{`{"stream":"S","seq":7,"duplicate": true}`, PubAck{Stream: "S", Sequence: 7, Duplicate: true}},
		{`{"stream":"S", "seq": 9, "domain":"d"}`, PubAck{Stream: "S", Sequence: 9}},
		{`{"stream":"S","seq":3,"duplicate":false}`, PubAck{Stream: "S", Sequence: 3}},
	}
	for _, g := range good {
		got, err := parsePubAck([]byte(g.in))
		if err != nil || got != g.want {
			t.Errorf("%s: %+v %v", g.in, got, err)
		}
	}
	for _, bad := range []string{``, `{}`, `nope`, `{"seq":1}`,
		`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}`} {
		if got, err := parsePubAck([]byte(bad)); err == nil {
			t.Errorf("%s accepted: %+v", bad, got)
		}
	}
}
