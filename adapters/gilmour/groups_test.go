package gilmour

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestServiceExclusionGroups: two nodes in one group share the requests (each request handled
// once in the group); another group gets every request too.
func TestServiceExclusionGroups(t *testing.T) {
	e := newEnv(t)
	a, b, c := newNode(t), newNode(t), newNode(t)
	for _, n := range []*testNode{a, b, c} {
		n.handle("/work", echoHandler("done"))
	}
	idA := a.register(e.url, map[string]any{"services": []map[string]any{{"topic": "work", "group": "g", "path": "/work"}}})
	idB := b.register(e.url, map[string]any{"services": []map[string]any{{"topic": "work", "group": "g", "path": "/work"}}})
	// wait for both members before adding the other group
	jstest.Eventually(t, 10*time.Second, func() error {
		request(t, e.url, idA, map[string]any{"topic": "work", "timeout": 2})
		if len(a.callsOf("/work")) == 0 || len(b.callsOf("/work")) == 0 {
			return fmt.Errorf("a %d b %d", len(a.callsOf("/work")), len(b.callsOf("/work")))
		}
		return nil
	})
	idC := c.register(e.url, map[string]any{"services": []map[string]any{{"topic": "work", "group": "h", "path": "/work"}}})
	jstest.Eventually(t, 10*time.Second, func() error {
		request(t, e.url, idC, map[string]any{"topic": "work", "timeout": 2})
		if len(c.callsOf("/work")) == 0 {
			return fmt.Errorf("c not called yet")
		}
		return nil
	})
	_ = idB
	// count only the calls of the measured requests (warm-up calls may still be landing)
	count := func(n *testNode) int {
		k := 0
		for _, hc := range n.callsOf("/work") {
			if strings.Contains(string(hc.Data), `"bench"`) {
				k++
			}
		}
		return k
	}
	const N = 40
	for i := 0; i < N; i++ {
		code, r := request(t, e.url, idA, map[string]any{"topic": "work", "message": map[string]any{"bench": i}, "timeout": 5})
		if code != 200 || r.Length != 1 {
			t.Fatalf("request %d: %d %+v", i, code, r)
		}
	}
	var da, db, dc int
	jstest.Eventually(t, 10*time.Second, func() error { // the first reply wins; the other group may still be working
		da, db, dc = count(a), count(b), count(c)
		if da+db < N || dc < N {
			return fmt.Errorf("group g: %d, group h: %d, want %d", da+db, dc, N)
		}
		return nil
	})
	if da+db != N || da == 0 || db == 0 {
		t.Fatalf("group g: a %d + b %d, want %d shared", da, db, N)
	}
	if dc != N {
		t.Fatalf("group h: %d calls, want %d", dc, N)
	}
}

// TestSlotGroupsAndWildcards: a signal is delivered once per exclusion group, once per node
// without a group, and Gilmour globs match across dots and inside tokens.
func TestSlotGroupsAndWildcards(t *testing.T) {
	e := newEnv(t)
	a, b, c, d := newNode(t), newNode(t), newNode(t), newNode(t)
	for _, n := range []*testNode{a, b, c, d} {
		n.handle("/ev", func(HandlerCall) (int, any) { return 200, "" })
	}
	slot := func(group string) map[string]any {
		return map[string]any{"slots": []map[string]any{{"topic": "ev", "group": group, "path": "/ev"}}}
	}
	id := a.register(e.url, slot("sg"))
	b.register(e.url, slot("sg"))
	c.register(e.url, slot(""))
	d.register(e.url, slot("other"))

	const N = 30
	for i := 0; i < N; i++ {
		if code, body := call(t, "POST", e.url+"/signal/"+id, map[string]any{"topic": "ev", "message": i}); code != 200 {
			t.Fatalf("signal: %d %s", code, body)
		}
	}
	c.waitCalls("/ev", N, 10*time.Second)
	d.waitCalls("/ev", N, 10*time.Second)
	jstest.Eventually(t, 10*time.Second, func() error {
		if s := len(a.callsOf("/ev")) + len(b.callsOf("/ev")); s != N {
			return fmt.Errorf("group sg got %d, want %d", s, N)
		}
		return nil
	})
	if len(a.callsOf("/ev")) == 0 || len(b.callsOf("/ev")) == 0 {
		t.Logf("group sg: a %d b %d (one member took all)", len(a.callsOf("/ev")), len(b.callsOf("/ev")))
	}
	seen := map[string]int{}
	for _, n := range []*testNode{a, b} {
		for _, hc := range n.callsOf("/ev") {
			seen[string(hc.Data)]++
		}
	}
	for k, v := range seen {
		if v != 1 {
			t.Fatalf("signal %s delivered %d times in group sg", k, v)
		}
	}

	// wildcards
	w := newNode(t)
	patterns := map[string]string{"/p1": "user.add.*", "/p2": "ping*", "/p3": "a.*.c", "/p4": "exact.topic", "/p5": "*"}
	var subs []map[string]any
	for path, p := range patterns {
		w.handle(path, func(HandlerCall) (int, any) { return 200, "" })
		subs = append(subs, map[string]any{"topic": p, "path": path})
	}
	w.register(e.url, map[string]any{"slots": subs})
	topics := []string{"user.add.5", "user.add.5.x", "user.addx", "pingworld", "ping.a", "pin", "a.b.c", "a.b.x.c", "a.b.d",
		"exact.topic", "exact.topic.more"}
	for _, tp := range topics {
		if code, body := call(t, "POST", e.url+"/signal/"+id, map[string]any{"topic": tp, "message": tp}); code != 200 {
			t.Fatalf("signal %s: %d %s", tp, code, body)
		}
	}
	want := map[string][]string{
		"/p1": {"user.add.5", "user.add.5.x"},
		"/p2": {"pingworld", "ping.a"},
		"/p3": {"a.b.c", "a.b.x.c"},
		"/p4": {"exact.topic"},
		"/p5": topics,
	}
	// "*" sees every topic, so once it has them all, every other pattern has had its chance
	w.waitCalls("/p5", len(topics), 10*time.Second)
	for path, exp := range want {
		got := w.waitCalls(path, len(exp), 10*time.Second)
		set := map[string]bool{}
		for _, hc := range got {
			set[hc.Topic] = true
		}
		for _, x := range exp {
			if !set[x] {
				t.Errorf("%s (%s): missing %s, got %v", path, patterns[path], x, set)
			}
		}
		if len(got) != len(exp) {
			t.Errorf("%s (%s): got %v, want %v", path, patterns[path], set, exp)
		}
	}
}
