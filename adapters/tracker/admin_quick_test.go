package tracker

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestAdminQueueAnswer: the enqueue answer is what c.JSON writes ({"ids":[…]} and a newline,
// application/json), for one item and for a batch; a batch key spelled in other case still
// counts as the batch form (encoding/json matches it), and ?pretty still indents.
func TestAdminQueueAnswer(t *testing.T) {
	e := newEnv(t)
	post := func(path, body string) (int, string, string) {
		resp, err := http.Post(e.pod.AdminURL+"/api/v1/tracker"+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	for _, c := range []struct{ body, want string }{
		{`{"id":"one-1","item":"https://a/","pipeline_type":"q"}`, `{"ids":["one-1"]}` + "\n"},
		{`{"items":[{"id":"b-1","item":"https://b/","pipeline_type":"q"},{"id":"b-2","item":"https://b/2","pipeline_type":"q"}]}`, `{"ids":["b-1","b-2"]}` + "\n"},
		{`{"ITEMS":[{"id":"c-1","item":"https://c/","pipeline_type":"q"}]}`, `{"ids":["c-1"]}` + "\n"},
		{`{"\u0069tems":[{"id":"d-1","item":"https://d/","pipeline_type":"q"}]}`, `{"ids":["d-1"]}` + "\n"},
	} {
		st, ct, body := post("/items", c.body)
		if st != 201 || body != c.want || !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s: %d %q %q, want 201 %q", c.body, st, ct, body, c.want)
		}
	}
	st, _, body := post("/items?pretty", `{"id":"p-1","item":"https://p/","pipeline_type":"q"}`)
	if want := fmt.Sprintf("{\n  \"ids\": [\n    %q\n  ]\n}\n", "p-1"); st != 201 || body != want {
		t.Errorf("pretty: %d %q, want %q", st, body, want)
	}
}
