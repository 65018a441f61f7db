package tracker

import (
	"encoding/json"
	"testing"
)

func claimedRecord(id, pipeline string) (*Record, []byte) {
	r := &Record{ID: id, Status: StatusClaimed, PipelineType: "t", Gen: 1, Attempts: []Attempt{},
		Claim: &Claim{Pipeline: pipeline, LeaseUntil: 100}, ClaimedAt: fptr(1)}
	b, _ := json.Marshal(r)
	return r, b
}

func doneRecord(id string) (*Record, []byte) {
	r := &Record{ID: id, Status: StatusDone, PipelineType: "t", Gen: 1, Attempts: []Attempt{}}
	b, _ := json.Marshal(r)
	return r, b
}

// The watch sets aside deliveries for items this pod is writing; end keeps the pod's own record
// (no decoding) or applies a newer delivery.
func TestClaimIndexPendingWrites(t *testing.T) {
	x := newClaimIndex()
	mine, mineB := claimedRecord("a", "p1")

	// own write delivered by the watch before the write is answered
	x.begin("a")
	if !x.observe("a", 5, mineB, false) {
		t.Fatal("delivery during a write not set aside")
	}
	if _, ok := x.cached("a"); ok {
		t.Fatal("indexed before the write was answered")
	}
	x.end("a", true, 5, mineB, mine)
	c, ok := x.cached("a")
	if !ok || c.rev != 5 || c.rec != mine || c.pipeline != "p1" {
		t.Fatalf("own write not indexed from its record: %+v %v", c, ok)
	}
	if len(x.pending) != 0 || len(x.deferred) != 0 {
		t.Fatalf("left over: %v %v", x.pending, x.deferred)
	}
	// the answer came first: the delivery is known
	_, doneB := doneRecord("a")
	x.begin("a")
	x.end("a", true, 6, doneB, &Record{ID: "a", Status: StatusDone})
	if !x.observe("a", 6, doneB, false) {
		t.Fatal("known revision not skipped")
	}
	if _, ok := x.cached("a"); ok || x.countPipeline("p1") != 0 {
		t.Fatal("finished claim still indexed")
	}

	// a failed write (another pod's claim got there): the set-aside delivery is applied
	other, otherB := claimedRecord("b", "p2")
	_ = other
	x.begin("b")
	x.observe("b", 7, otherB, false)
	x.end("b", false, 0, nil, nil)
	if c, ok := x.cached("b"); !ok || c.rev != 7 || c.pipeline != "p2" || c.rec != nil {
		t.Fatalf("other pod's claim not indexed: %+v %v", c, ok)
	}

	// a newer delivery than this pod's write wins; with two writes in flight it waits for both
	mineC, mineCB := claimedRecord("c", "p1")
	_, laterB := doneRecord("c")
	x.begin("c")
	x.begin("c")
	x.observe("c", 8, mineCB, false)
	x.observe("c", 9, laterB, false)
	x.end("c", true, 8, mineCB, mineC)
	if _, ok := x.deferred["c"]; !ok {
		t.Fatal("newer delivery dropped while a write is in flight")
	}
	x.end("c", false, 0, nil, nil)
	if x.countPipeline("p1") != 0 || len(x.deferred) != 0 || len(x.pending) != 0 {
		t.Fatalf("newer delivery not applied: %d %v %v", x.countPipeline("p1"), x.deferred, x.pending)
	}

	// a deletion delivered during a write
	mineD, mineDB := claimedRecord("d", "p3")
	x.begin("d")
	x.end("d", true, 10, mineDB, mineD)
	x.begin("d")
	x.observe("d", 11, nil, true)
	x.end("d", false, 0, nil, nil)
	if x.countPipeline("p3") != 0 {
		t.Fatal("deleted item still indexed")
	}
}
