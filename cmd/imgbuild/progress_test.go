package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
)

// progressEvents is a small build: a step done, a cached step, a step with
// output that fails.
func progressEvents() []builder.Event {
	t0 := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	return []builder.Event{
		{Step: 1, Total: 3, Stage: "build", Instruction: "FROM busybox", Started: t0},
		{Step: 1, Total: 3, Stage: "build", Instruction: "FROM busybox", Started: t0, Done: t0.Add(120 * time.Millisecond)},
		{Step: 2, Total: 3, Stage: "build", Instruction: "COPY . /app", Started: t0, Done: t0, Cached: true},
		{Step: 3, Total: 3, Instruction: "COPY missing /", Started: t0},
		{Step: 3, Total: 3, Instruction: "COPY missing /", Started: t0, Done: t0.Add(time.Second),
			Log: []byte("line one\nline two\n"), Err: errors.New("Dockerfile:3: COPY missing /: no such file\nin context")},
	}
}

func TestProgressPlain(t *testing.T) {
	var b bytes.Buffer
	r := newRenderer(&b, "plain")
	for _, ev := range progressEvents() {
		r.event(ev)
	}
	want := `#1 [build] FROM busybox
#1 DONE 0.1s
#2 [build] COPY . /app
#2 CACHED
#3 COPY missing /
#3 line one
#3 line two
#3 ERROR: Dockerfile:3: COPY missing /: no such file; in context
`
	if b.String() != want {
		t.Errorf("plain progress:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestProgressJSON(t *testing.T) {
	var b bytes.Buffer
	r := newRenderer(&b, "json")
	for _, ev := range progressEvents() {
		r.event(ev)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("got %d JSON lines, want 5:\n%s", len(lines), b.String())
	}
	var evs []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		evs = append(evs, m)
	}
	checks := []struct {
		i          int
		key        string
		want       any
		wantAbsent bool
	}{
		{i: 0, key: "status", want: "running"},
		{i: 0, key: "step", want: 1.0},
		{i: 0, key: "total", want: 3.0},
		{i: 0, key: "stage", want: "build"},
		{i: 0, key: "instruction", want: "FROM busybox"},
		{i: 0, key: "started", want: "2024-01-02T03:04:05Z"},
		{i: 0, key: "done", wantAbsent: true},
		{i: 1, key: "status", want: "done"},
		{i: 1, key: "duration", want: 0.12},
		{i: 2, key: "status", want: "cached"},
		{i: 3, key: "stage", wantAbsent: true},
		{i: 4, key: "status", want: "error"},
		{i: 4, key: "log", want: "line one\nline two\n"},
		{i: 4, key: "error", want: "Dockerfile:3: COPY missing /: no such file\nin context"},
	}
	for _, c := range checks {
		got, ok := evs[c.i][c.key]
		if c.wantAbsent {
			if ok {
				t.Errorf("event %d: %s = %v, want absent", c.i, c.key, got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("event %d: %s = %#v, want %#v", c.i, c.key, got, c.want)
		}
	}
}

func TestBuildMetadata(t *testing.T) {
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}
	cd := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("b", 64)}
	res := &builder.Result{Digest: d, ConfigDigest: cd, Tags: []string{"app:1", "app:latest"},
		Descriptor: v1.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 123, Digest: d},
		Cache:      builder.CacheStats{Imported: 40, Hits: 12, BytesDownloaded: 34500000, Exported: 20}}
	base := map[string]any{
		"containerimage.digest":        d.String(),
		"containerimage.config.digest": cd.String(),
		"image.name":                   "app:1,app:latest",
		"containerimage.descriptor": map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 123.0, "digest": d.String(),
		},
	}
	withCache := map[string]any{"imgbuild.cache": map[string]any{
		"imported": 40.0, "hits": 12.0, "bytesDownloaded": 34500000.0, "exported": 20.0}}
	for k, v := range base {
		withCache[k] = v
	}
	tests := []struct {
		name        string
		remoteCache bool
		want        map[string]any
	}{
		{"without --cache-from/--cache-to", false, base},
		{"with a remote cache", true, withCache},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := buildMetadata(res, tt.remoteCache)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			gotJSON, _ := json.Marshal(m)
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("metadata = %s\nwant %s", gotJSON, wantJSON)
			}
		})
	}
}
