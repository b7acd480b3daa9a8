package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/imgbuild/imgbuild/builder"
)

// renderer writes build progress events, one step at a time, as plain text
// (BuildKit's --progress=plain style) or as one JSON object per event.
// Events may arrive from several goroutines.
type renderer struct {
	mu      sync.Mutex
	w       io.Writer
	json    bool
	enc     *json.Encoder
	started map[int]bool // steps whose header line was written
}

func newRenderer(w io.Writer, mode string) *renderer {
	r := &renderer{w: w, json: mode == "json", started: map[int]bool{}}
	if r.json {
		r.enc = json.NewEncoder(w)
	}
	return r
}

// event renders one builder.Event.
func (r *renderer) event(ev builder.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.json {
		_ = r.enc.Encode(newJSONEvent(ev))
		return
	}
	r.plain(ev)
}

// plain writes:
//
//	#3 [build] COPY . /app
//	#3 <log line>
//	#3 DONE 0.1s | #3 CACHED | #3 ERROR: <error>
func (r *renderer) plain(ev builder.Event) {
	if !r.started[ev.Step] {
		r.started[ev.Step] = true
		if ev.Stage != "" {
			fmt.Fprintf(r.w, "#%d [%s] %s\n", ev.Step, ev.Stage, ev.Instruction)
		} else {
			fmt.Fprintf(r.w, "#%d %s\n", ev.Step, ev.Instruction)
		}
	}
	for _, line := range bytes.Split(bytes.TrimRight(ev.Log, "\n"), []byte("\n")) {
		if len(line) > 0 {
			fmt.Fprintf(r.w, "#%d %s\n", ev.Step, line)
		}
	}
	switch {
	case ev.Err != nil:
		fmt.Fprintf(r.w, "#%d ERROR: %s\n", ev.Step, oneLine(ev.Err.Error()))
	case ev.Cached:
		fmt.Fprintf(r.w, "#%d CACHED\n", ev.Step)
	case !ev.Done.IsZero():
		fmt.Fprintf(r.w, "#%d DONE %.1fs\n", ev.Step, ev.Done.Sub(ev.Started).Seconds())
	}
}

// jsonEvent is the --progress=json form of a builder.Event. Field names are
// part of the CLI contract.
type jsonEvent struct {
	Step        int        `json:"step"`
	Total       int        `json:"total"`
	Stage       string     `json:"stage,omitempty"`
	Instruction string     `json:"instruction"`
	Status      string     `json:"status"` // running, done, cached, error
	Started     *time.Time `json:"started,omitempty"`
	Done        *time.Time `json:"done,omitempty"`
	Duration    *float64   `json:"duration,omitempty"` // seconds, once done
	Log         string     `json:"log,omitempty"`
	Error       string     `json:"error,omitempty"`
}

func newJSONEvent(ev builder.Event) jsonEvent {
	j := jsonEvent{Step: ev.Step, Total: ev.Total, Stage: ev.Stage, Instruction: ev.Instruction,
		Status: "running", Log: string(ev.Log)}
	if !ev.Started.IsZero() {
		t := ev.Started.UTC()
		j.Started = &t
	}
	if !ev.Done.IsZero() {
		t := ev.Done.UTC()
		j.Done = &t
		j.Status = "done"
		if !ev.Started.IsZero() {
			d := ev.Done.Sub(ev.Started).Seconds()
			j.Duration = &d
		}
	}
	switch {
	case ev.Err != nil:
		j.Status, j.Error = "error", ev.Err.Error()
	case ev.Cached:
		j.Status = "cached"
	}
	return j
}
