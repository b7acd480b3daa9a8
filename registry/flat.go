package registry

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/layers"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// WriteFlatTar writes the flattened filesystem of img as one tar stream:
// every path as the top-most layer holding it left it, whiteouts applied and
// whiteout entries dropped, as go-containerregistry's mutate.Extract does (a
// path hidden by a whiteout or an opaque directory of an upper layer is gone;
// an upper non-directory hides everything below its path). Two differences:
// names and hard-link targets are cleaned with chroot semantics as
// layers.Apply (and so ExtractFlat) does ("../x" and "/x" are "x"), and
// symlinks are kept whatever their target, so the tar and ExtractFlat give
// the same tree; and entries come bottom layer first, so parent directories
// and hard-link targets of lower layers precede what upper layers put on
// them and the stream extracts with plain tar. Directory names end in "/".
// Each layer is read twice (once to decide, once to copy) and verified
// against its digest both times. Known gap: a hard link whose target an upper
// layer replaced points at the surviving path; one whose target an upper
// layer deleted is written as a dangling hard link.
func WriteFlatTar(ctx context.Context, w io.Writer, img v1.Image) error {
	ls, err := img.Layers()
	if err != nil {
		return fmt.Errorf("flattening: %w", err)
	}
	keep := make([][]bool, len(ls))
	st := newFlatState()
	for i := len(ls) - 1; i >= 0; i-- {
		if keep[i], err = st.decideLayer(ctx, ls[i]); err != nil {
			return fmt.Errorf("flattening: layer %d: %w", i+1, err)
		}
	}
	tw := tar.NewWriter(w)
	for i, l := range ls {
		if err := copyKept(ctx, tw, l, keep[i]); err != nil {
			return fmt.Errorf("flattening: layer %d: %w", i+1, err)
		}
	}
	return tw.Close()
}

// flatState tracks, from the top layer down, which paths are decided.
type flatState struct {
	// seen maps a path decided by an upper layer to whether it hides
	// everything below it (a whiteout or a non-directory).
	seen map[string]bool
	// opaque holds directories made opaque by an upper layer.
	opaque map[string]bool
}

func newFlatState() *flatState {
	return &flatState{seen: map[string]bool{}, opaque: map[string]bool{}}
}

// decideLayer reads one layer and returns, for each of its entries in
// order, whether it belongs to the flattened filesystem. The layer's own
// whiteouts and opaque markers hide only lower layers, whatever their place
// in the tar, so they take effect once the layer is read.
func (st *flatState) decideLayer(ctx context.Context, l v1.Layer) ([]bool, error) {
	var keep []bool
	staged := &flatState{seen: map[string]bool{}, opaque: map[string]bool{}}
	err := eachEntry(ctx, l, func(hdr *tar.Header, _ io.Reader) error {
		keep = append(keep, st.decide(hdr, staged))
		return nil
	})
	for p := range staged.seen {
		st.seen[p] = true
	}
	for d := range staged.opaque {
		st.opaque[d] = true
	}
	return keep, err
}

// decide reports whether hdr, an entry of the layer being read, is kept;
// whiteouts and opaque markers of that layer are recorded in staged.
func (st *flatState) decide(hdr *tar.Header, staged *flatState) bool {
	name := cleanName(hdr.Name)
	if name == "." {
		return false
	}
	dir, base := path.Dir(name), path.Base(name)
	switch {
	case base == whiteoutOpaque:
		staged.opaque[dir] = true
		return false
	case strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix):
		return false // other AUFS metadata
	case strings.HasPrefix(base, whiteoutPrefix):
		staged.seen[path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))] = true
		return false
	}
	if _, ok := st.seen[name]; ok {
		return false
	}
	if hiddenBy(st.seen, name) || st.inOpaque(name) {
		return false
	}
	st.seen[name] = hdr.Typeflag != tar.TypeDir
	return true
}

// hiddenBy reports whether an ancestor of name hides what is below it.
func hiddenBy(seen map[string]bool, name string) bool {
	for d := path.Dir(name); d != "." && d != "/"; d = path.Dir(d) {
		if seen[d] {
			return true
		}
	}
	return false
}

func (st *flatState) inOpaque(name string) bool {
	for d := path.Dir(name); ; d = path.Dir(d) {
		if st.opaque[d] {
			return true
		}
		if d == "." || d == "/" {
			return false
		}
	}
}

// copyKept copies the entries of l marked in keep.
func copyKept(ctx context.Context, tw *tar.Writer, l v1.Layer, keep []bool) error {
	i := 0
	return eachEntry(ctx, l, func(hdr *tar.Header, r io.Reader) error {
		if i >= len(keep) {
			return errors.New("layer changed between reads")
		}
		k := keep[i]
		i++
		if !k {
			return nil
		}
		h := *hdr
		h.Name = cleanName(hdr.Name)
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if h.Typeflag == tar.TypeLink {
			h.Linkname = cleanName(h.Linkname)
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		if h.Size > 0 {
			_, err := io.CopyN(tw, r, h.Size)
			return err
		}
		return nil
	})
}

// eachEntry calls fn for each entry of l's uncompressed tar, then reads the
// stream to its end so that the layer's digest is verified.
func eachEntry(ctx context.Context, l v1.Layer, fn func(*tar.Header, io.Reader) error) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
		if err := fn(hdr, tr); err != nil {
			return err
		}
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("verifying layer: %w", err)
	}
	return rc.Close()
}

// cleanName returns name relative to the root with chroot semantics
// ("etc/passwd"; "." for the root itself; "../x" and "/x" are "x").
func cleanName(name string) string {
	c := path.Clean("/" + name)
	if c == "/" {
		return "."
	}
	return c[1:]
}

// ExtractFlat writes the flattened filesystem of img into dir (created if
// missing) by applying its layers in order with layers.Apply: every entry
// confined to dir, whiteouts applied, ownership kept when running as root.
// Each layer is read to its end so that its digest is verified.
func ExtractFlat(ctx context.Context, dir string, img v1.Image) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("extracting: %w", err)
	}
	ls, err := img.Layers()
	if err != nil {
		return fmt.Errorf("extracting: %w", err)
	}
	opts := layers.ApplyOptions{NoChown: os.Geteuid() != 0}
	for i, l := range ls {
		if err := applyLayer(ctx, dir, l, opts); err != nil {
			return fmt.Errorf("extracting layer %d into %s: %w", i+1, dir, err)
		}
	}
	return nil
}

func applyLayer(ctx context.Context, dir string, l v1.Layer, opts layers.ApplyOptions) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := layers.Apply(ctx, dir, rc, opts); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("verifying layer: %w", err)
	}
	return rc.Close()
}
