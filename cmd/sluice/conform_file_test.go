package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fileTarget is the conformance suite's file destination: JSON lines in a
// folder of the test's, rotated files included. A file reaches no network
// service and refuses no event: the suite skips outage, stall and poison
// (a failing disk under the file is tested in router/filedest).
type fileTarget struct{ dir string }

func newFileTarget(t *testing.T) conformTarget { return &fileTarget{dir: t.TempDir()} }

func (f *fileTarget) upstream(*testing.T) string { return "" }

func (f *fileTarget) config(_ *testing.T, id, _ string) string {
	return fmt.Sprintf("type: file\nconfig:\n  path: %s\n  max_bytes: 65536\n", filepath.Join(f.dir, id, "events.jsonl"))
}

// received reads the rotated files (their names sort by time) and then the
// current one.
func (f *fileTarget) received(t *testing.T, id string) ([]conformEvent, bool) {
	names, err := filepath.Glob(filepath.Join(f.dir, id, "events*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(f.dir, id, "events.jsonl")
	names = slices.DeleteFunc(names, func(n string) bool { return n == current })
	slices.Sort(names)
	names = append(names, current)
	var out []conformEvent
	for _, name := range names {
		data, err := os.ReadFile(name)
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev webhookEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				continue // a line being written
			}
			out = append(out, conformEvent{ID: ev.MessageID, User: ev.UserID})
		}
	}
	return out, true
}

func (f *fileTarget) poison(*testing.T, string) (conformPoison, string) {
	return conformPoison{}, "a file refuses no event"
}
