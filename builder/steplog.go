package builder

import (
	"bytes"
	"sync"
)

// Limits of a step's output kept and reported.
const (
	tailLines   = 10      // lines of a failed step's output in its error
	maxLineSize = 8 << 10 // longer lines are cut into pieces of this size
)

// stepOutput receives a RUN step's output: it reports each line as a
// progress Event of the step and keeps the last lines for the error of a
// failed step.
type stepOutput struct {
	b    *build
	ev   Event
	mu   sync.Mutex
	buf  []byte   // incomplete last line
	last []string // ring of the last tailLines lines
	next int
}

func newStepOutput(b *build, ev Event) *stepOutput {
	return &stepOutput{b: b, ev: ev}
}

func (o *stepOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	for {
		i := bytes.IndexByte(o.buf, '\n')
		if i < 0 && len(o.buf) < maxLineSize {
			break
		}
		end, skip := i, 1
		if i < 0 || i > maxLineSize {
			end, skip = maxLineSize, 0
		}
		o.line(o.buf[:end])
		o.buf = o.buf[end+skip:]
	}
	if len(o.buf) == 0 {
		o.buf = nil
	}
	return len(p), nil
}

// flush reports an incomplete last line.
func (o *stepOutput) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.buf) > 0 {
		o.line(o.buf)
		o.buf = nil
	}
}

func (o *stepOutput) line(l []byte) {
	l = bytes.TrimSuffix(l, []byte("\r"))
	if len(o.last) < tailLines {
		o.last = append(o.last, string(l))
	} else {
		o.last[o.next] = string(l)
		o.next = (o.next + 1) % tailLines
	}
	ev := o.ev
	ev.Log = append(append([]byte(nil), l...), '\n')
	o.b.progress(ev)
}

// tail is the last lines of output, oldest first.
func (o *stepOutput) tail() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append(append([]string(nil), o.last[o.next:]...), o.last[:o.next]...)
}
