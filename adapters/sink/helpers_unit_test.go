package sink

import (
	"strings"
	"testing"
)

func TestVersionLess(t *testing.T) {
	cases := []struct {
		a, b     string
		less, ok bool
	}{
		{"1.0.0", "1.2.0", true, true},
		{"1.2.0", "1.2.0", false, true},
		{"1.10.0", "1.2.0", false, true},
		{"1.2", "1.2.0", false, true},
		{"1.2.0-rc1", "1.2.0", true, true},
		{"1.2.0", "1.2.0-rc1", false, true},
		{"1.2.0-rc1", "1.2.0-rc2", true, true},
		{"v2.0.0", "1.2.0", false, true},
		{"1.2.0+build5", "1.2.0", false, true},
		{"", "1.0.0", false, false},
		{"one", "1.0.0", false, false},
		{"1..0", "1.0.0", false, false},
		{"1.x", "1.0.0", false, false},
	}
	for _, c := range cases {
		less, ok := versionLess(c.a, c.b)
		if less != c.less || ok != c.ok {
			t.Errorf("versionLess(%q, %q) = %v %v, want %v %v", c.a, c.b, less, ok, c.less, c.ok)
		}
	}
}

func TestKeyIDAndHeaderText(t *testing.T) {
	if keyID(nil) != "_" || keyID([]byte{1, 2, 3}) != "010203" {
		t.Fatal("short keys")
	}
	long := []byte(strings.Repeat("k", 33))
	if id := keyID(long); !strings.HasPrefix(id, "h") || len(id) != 65 || id == keyID(append(long, 'x')) {
		t.Fatalf("long key id %q", id)
	}
	if headerText([]byte("409")) != "409" || headerText([]byte("data mismatch")) != "data mismatch" {
		t.Fatal("text")
	}
	if got := headerText([]byte{1, 1, 1}); got != "base64:AQEB" {
		t.Fatalf("binary: %q", got)
	}
	if got := headerText([]byte("a\r\nb")); !strings.HasPrefix(got, "base64:") {
		t.Fatalf("newline: %q", got)
	}
	for _, id := range []string{"meter-1", "A_b-9", strings.Repeat("x", 64)} {
		if !ValidClientID(id) {
			t.Errorf("%q refused", id)
		}
	}
	for _, id := range []string{"", "a.b", "a b", "a*", strings.Repeat("x", 65), "ü"} {
		if ValidClientID(id) {
			t.Errorf("%q accepted", id)
		}
	}
}
