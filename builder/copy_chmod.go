package builder

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	mode "github.com/tonistiigi/dchapes-mode"
)

// chmodSpec is a parsed --chmod value: octal, or chmod(1) symbolic notation
// (BuildKit uses the BSD setmode semantics of tonistiigi/dchapes-mode, with
// a zero umask, so "+x" means "a+x").
type chmodSpec struct {
	octal    uint32    // valid when sym == nil: bits 07777
	sym      *mode.Set // symbolic form
	original string
}

// parseChmod parses --chmod as BuildKit does: a value that parses as octal
// must be at most 07777; anything else must be a valid symbolic mode, and a
// value that looks numeric but is not octal gets BuildKit's octal error.
func parseChmod(s string) (*chmodSpec, error) {
	if s == "" {
		return nil, nil
	}
	nonOctal := fmt.Errorf("invalid chmod parameter: '%v'. it should be octal string and between 0 and 07777", s)
	if p, err := strconv.ParseUint(s, 8, 32); err == nil {
		if p > 0o7777 {
			return nil, nonOctal
		}
		return &chmodSpec{octal: uint32(p), original: s}, nil
	}
	set, err := mode.Parse(s)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) {
			return nil, nonOctal
		}
		return nil, fmt.Errorf("invalid chmod parameter: '%v': %w", s, err)
	}
	return &chmodSpec{sym: &set, original: s}, nil
}

// apply returns the mode a copied entry gets: the symbolic form applied to
// the source mode, or the octal value's permission, setuid, setgid and
// sticky bits (the file type is kept).
func (c *chmodSpec) apply(m os.FileMode) os.FileMode {
	if c == nil {
		return m
	}
	if c.sym != nil {
		return c.sym.Apply(m)
	}
	out := m.Type() | os.FileMode(c.octal&0o777)
	if c.octal&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if c.octal&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if c.octal&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}

// dirMode is the mode of destination parent directories COPY creates:
// BuildKit creates them with the octal --chmod permission bits, and 0755
// otherwise (also with a symbolic --chmod).
func (c *chmodSpec) dirMode() os.FileMode {
	if c == nil || c.sym != nil {
		return 0o755
	}
	return os.FileMode(c.octal & 0o777)
}
