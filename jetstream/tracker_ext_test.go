package jetstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func TestStreamSubjectCounts(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "SC", Subjects: []string{"sc.>"}}}}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"sc.a.1", "sc.a.1", "sc.a.2", "sc.b.1"} {
		if _, err := js.Publish(ctx, s, []byte("x"), jetstream.PubOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ { // second call uses the cached handle
		got, err := js.StreamSubjectCounts(ctx, "SC", "sc.a.>")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got["sc.a.1"] != 2 || got["sc.a.2"] != 1 {
			t.Fatalf("counts %v", got)
		}
	}
	if _, err := js.StreamSubjectCounts(ctx, "NOPE", ">"); err == nil {
		t.Fatal("missing stream: no error")
	}
}
