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
// every path as the top-most layer holding it left it, with whiteouts
// applied and whiteout entries dropped (the semantics of go-containerregistry's
// mutate.Extract: a path hidden by a whiteout or an opaque directory in an
// upper layer is gone; entries with names escaping the root fail; links whose
// relative target escapes the root are dropped). Unlike mutate.Extract the
// entries come bottom layer first, so parent directories and hard-link
// targets of lower layers precede what upper layers put on them, and the
// stream extracts with plain tar. Each layer is read twice (once to decide,
// once to copy) and verified against its digest each time. Known gap: a hard
// link whose target an upper layer deleted or replaced is written as a link
// to the surviving path (if any).
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
// order, whether it belongs to the flattened filesystem.
func (st *flatState) decideLayer(ctx context.Context, l v1.Layer) ([]bool, error) {
	var keep []bool
	layerOpaque := map[string]bool{}
	err := eachEntry(ctx, l, func(hdr *tar.Header, _ io.Reader) error {
		k, err := st.decide(hdr, layerOpaque)
		keep = append(keep, k)
		return err
	})
	for d := range layerOpaque {
		st.opaque[d] = true
	}
	return keep, err
}

func (st *flatState) decide(hdr *tar.Header, layerOpaque map[string]bool) (bool, error) {
	name, ok := cleanEntryName(hdr.Name)
	if !ok {
		return false, fmt.Errorf("unsafe path %q in layer", hdr.Name)
	}
	if name == "." {
		return false, nil
	}
	if unsafeLink(name, hdr) {
		return false, nil
	}
	dir, base := path.Dir(name), path.Base(name)
	if base == whiteoutOpaque {
		layerOpaque[dir] = true
		return false, nil
	}
	tombstone := strings.HasPrefix(base, whiteoutPrefix)
	if tombstone {
		name = path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
	}
	if _, ok := st.seen[name]; ok && !tombstone {
		return false, nil
	}
	if hiddenBy(st.seen, name) || st.inOpaque(name) {
		return false, nil
	}
	st.seen[name] = tombstone || hdr.Typeflag != tar.TypeDir
	return !tombstone, nil
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
		h.Name, _ = cleanEntryName(hdr.Name)
		if h.Typeflag == tar.TypeDir {
			h.Name += "/"
		}
		if h.Typeflag == tar.TypeLink {
			h.Linkname, _ = cleanEntryName(h.Linkname)
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

// cleanEntryName returns name relative to the root ("etc/passwd", "." for
// the root itself), and false when it climbs out of the root.
func cleanEntryName(name string) (string, bool) {
	c := path.Clean("/" + strings.ReplaceAll(name, "\\", "/"))
	raw := path.Clean(strings.ReplaceAll(name, "\\", "/"))
	if raw == ".." || strings.HasPrefix(raw, "../") {
		return "", false
	}
	if c == "/" {
		return ".", true
	}
	return strings.TrimPrefix(c, "/"), true
}

// unsafeLink reports whether hdr is a link whose relative target leaves the
// root: symlink targets resolve from the link's directory, hard-link
// targets from the root.
func unsafeLink(name string, hdr *tar.Header) bool {
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		t := path.Clean(hdr.Linkname)
		if path.IsAbs(t) {
			return false
		}
		r := path.Clean(path.Join(path.Dir(name), t))
		return r == ".." || strings.HasPrefix(r, "../")
	case tar.TypeLink:
		_, ok := cleanEntryName(hdr.Linkname)
		return !ok
	}
	return false
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
