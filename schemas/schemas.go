// Package schemas holds the JSON Schemas (draft 2020-12) of every JSON message of every protocol
// and every payload jetbridge writes to NATS, and validates values against them. The files live
// in one folder per protocol (schemas/<protocol>/*.schema.json); the subject catalog is
// subjects.md.
package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed */*.json
var files embed.FS

// FS is the folder of schema files.
func FS() fs.FS { return files }

const base = "https://jetbridge.dev/schemas/"

var (
	once     sync.Once
	compiler *jsonschema.Compiler
	loadErr  error
	mu       sync.Mutex
	compiled = map[string]*jsonschema.Schema{}
)

func load() {
	compiler = jsonschema.NewCompiler()
	compiler.DefaultDraft(jsonschema.Draft2020)
	compiler.AssertFormat()
	loadErr = fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		data, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("schema %s: %w", path, err)
		}
		if err := compiler.AddResource(base+path, doc); err != nil {
			return fmt.Errorf("schema %s: %w", path, err)
		}
		return nil
	})
}

// Names lists every schema file ("tracker/claim.schema.json", …).
func Names() []string {
	var names []string
	_ = fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".json") {
			names = append(names, path)
		}
		return nil
	})
	return names
}

// Compile compiles one schema by its file name relative to this folder.
func Compile(name string) (*jsonschema.Schema, error) {
	once.Do(load)
	if loadErr != nil {
		return nil, loadErr
	}
	mu.Lock()
	defer mu.Unlock()
	if s, ok := compiled[name]; ok {
		return s, nil
	}
	s, err := compiler.Compile(base + name)
	if err != nil {
		return nil, fmt.Errorf("compile schema %s: %w", name, err)
	}
	compiled[name] = s
	return s, nil
}

// Validate checks a value against the named schema. v may be raw JSON ([]byte or
// json.RawMessage) or any Go value that marshals to JSON.
func Validate(name string, v any) error {
	s, err := Compile(name)
	if err != nil {
		return err
	}
	var raw []byte
	switch t := v.(type) {
	case []byte:
		raw = t
	case json.RawMessage:
		raw = t
	default:
		raw, err = json.Marshal(v)
		if err != nil {
			return fmt.Errorf("validate %s: %w", name, err)
		}
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("validate %s: not JSON: %w", name, err)
	}
	if err := s.Validate(doc); err != nil {
		return fmt.Errorf("validate %s: %w", name, err)
	}
	return nil
}
