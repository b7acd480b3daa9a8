//go:build !linux

package run

import (
	"errors"
)

// Init returns false: the sandbox only exists on Linux.
func Init() bool { return false }

// New fails: the RUN sandbox needs Linux namespaces.
func New(opts Options) (Executor, error) {
	return nil, errors.New("run: the RUN sandbox needs Linux")
}
