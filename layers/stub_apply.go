package layers

// TEMPORARY API SKETCH owned by the extraction helper: replace with apply.go and delete this file.

import (
	"context"
	"errors"
	"io"
)

// ApplyOptions control Apply.
type ApplyOptions struct {
	// NoChown skips lchown of extracted entries (unprivileged extraction).
	NoChown bool
	// NoWhiteouts treats .wh. entries as ordinary files (ADD of a plain archive).
	NoWhiteouts bool
}

// Apply extracts an uncompressed layer tar read from r into root with chroot
// semantics: every entry is confined to root, OCI whiteouts are applied.
func Apply(ctx context.Context, root string, r io.Reader, opts ApplyOptions) error {
	return errors.New("layers.Apply: not implemented yet")
}
