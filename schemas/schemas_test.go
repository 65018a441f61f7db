package schemas_test

import (
	"testing"

	"github.com/jetbridge/jetbridge/schemas"
)

// Every schema file must compile (a broken schema would silently accept everything).
func TestEverySchemaCompiles(t *testing.T) {
	names := schemas.Names()
	if len(names) == 0 {
		t.Fatal("no schemas embedded")
	}
	for _, n := range names {
		if _, err := schemas.Compile(n); err != nil {
			t.Errorf("%v", err)
		}
	}
}

func TestValidateAcceptsAndRejects(t *testing.T) {
	good := map[string][]string{
		"Jetbridge-Dlq-Reason": {"max deliveries exceeded"}, "Jetbridge-Dlq-Stream": {"WORK"},
		"Jetbridge-Dlq-Seq": {"12"}, "Jetbridge-Dlq-Subject": {"work.a"}, "Jetbridge-Dlq-Deliveries": {"5"},
		"Jetbridge-Dlq-Time": {"2026-11-22T04:00:00Z"},
	}
	if err := schemas.Validate("jetbridge/dlq-headers.schema.json", good); err != nil {
		t.Fatal(err)
	}
	bad := map[string][]string{"Jetbridge-Dlq-Reason": {""}}
	if err := schemas.Validate("jetbridge/dlq-headers.schema.json", bad); err == nil {
		t.Fatal("incomplete headers accepted")
	}
	if err := schemas.Validate("jetbridge/dlq-headers.schema.json", []byte("{not json")); err == nil {
		t.Fatal("invalid JSON accepted")
	}
	if err := schemas.Validate("nope.schema.json", good); err == nil {
		t.Fatal("unknown schema accepted")
	}
}
