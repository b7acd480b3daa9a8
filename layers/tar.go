package layers

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// OCI whiteout names (image-spec layer.md).
const (
	WhiteoutPrefix = ".wh."
	WhiteoutOpaque = ".wh..wh..opq"
)

// DefaultOverlayXattrPrefix is the prefix of overlayfs's private xattrs on a
// mount without the userxattr option.
const DefaultOverlayXattrPrefix = "trusted.overlay."

// TarOptions control WriteTar and TarWriter.
type TarOptions struct {
	// Paths, when non-nil, selects the entries to write: slash-separated paths
	// relative to root ("app/main.go"; a leading "/" is ignored), each
	// written non-recursively, plus all of their ancestor directories. When
	// nil the whole tree is written.
	Paths []string
	// SourceDateEpoch, when non-nil, clamps every timestamp to it.
	SourceDateEpoch *time.Time
	// Overlay treats root as an overlayfs upper directory: 0/0 character
	// devices become OCI whiteouts (".wh.NAME"), opaque directories get a
	// ".wh..wh..opq" entry right after their own, and overlayfs's private
	// xattrs are not written.
	Overlay bool
	// OverlayXattrPrefix is the prefix of overlayfs's private xattrs when
	// Overlay is set. "" means DefaultOverlayXattrPrefix; mounts with the
	// userxattr option use "user.overlay.".
	OverlayXattrPrefix string
}

// WriteTar writes a deterministic tar of the tree under root into w:
// entries sorted by path (see ComparePaths), PAX format, numeric uid/gid and
// no user or group names, permission and setuid/setgid/sticky bits, xattrs
// (SCHILY.xattr.*), hard links within the archive as hard links, symlinks as
// symlinks, devices and fifos; sockets are skipped. Modification times are
// truncated to seconds (as BuildKit does) and clamped to
// opts.SourceDateEpoch; access and change times are never written. Nothing
// below root is followed through a symlink. root itself is not an entry.
func WriteTar(ctx context.Context, w io.Writer, root string, opts TarOptions) error {
	tw := NewTarWriter(w, root, opts)
	var err error
	if opts.Paths != nil {
		err = tw.writePaths(ctx, opts.Paths)
	} else {
		err = tw.walk(ctx, "")
	}
	if err != nil {
		return err
	}
	return tw.Close()
}

// ComparePaths orders slash-separated paths component by component, which
// is the order of a depth-first walk visiting directory entries sorted by
// name: a directory comes right before its contents, "a/b" before "a-b".
func ComparePaths(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		// '/' sorts before every other byte.
		if ca == '/' {
			return -1
		}
		if cb == '/' {
			return 1
		}
		if ca < cb {
			return -1
		}
		return 1
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

// TarWriter writes deterministic layer tar entries one at a time, in the
// order they are added. WriteTar sorts; a snapshotter listing its own
// changes adds them in ComparePaths order itself.
type TarWriter struct {
	tw     *tar.Writer
	root   string
	opts   TarOptions
	links  map[fileID]string
	buf    []byte
	prefix string
}

type fileID struct{ dev, ino uint64 }

// NewTarWriter returns a TarWriter reading files below root and writing the
// archive to w. Close writes the archive's end; it does not close w.
func NewTarWriter(w io.Writer, root string, opts TarOptions) *TarWriter {
	p := opts.OverlayXattrPrefix
	if p == "" {
		p = DefaultOverlayXattrPrefix
	}
	return &TarWriter{
		tw:     tar.NewWriter(w),
		root:   root,
		opts:   opts,
		links:  map[fileID]string{},
		prefix: p,
	}
}

// Close writes the end of the archive.
func (t *TarWriter) Close() error {
	if err := t.tw.Close(); err != nil {
		return fmt.Errorf("closing tar: %w", err)
	}
	return nil
}

// WriteEntry writes the entry of the file at rel (slash-separated, relative
// to root) without recursing into directories. Every ancestor of rel must be
// a real directory (not a symlink). Regular files are copied; a file whose
// inode was already written becomes a hard link to the first path written.
func (t *TarWriter) WriteEntry(ctx context.Context, rel string) error {
	rel, err := cleanRel(rel)
	if err != nil {
		return err
	}
	if rel == "" {
		return errors.New("tar entry: the root itself is not an entry")
	}
	for dir := path.Dir(rel); dir != "."; dir = path.Dir(dir) {
		var st unix.Stat_t
		if err := unix.Lstat(t.hostPath(dir), &st); err != nil {
			return fmt.Errorf("tar entry %s: %w", rel, &os.PathError{Op: "lstat", Path: dir, Err: err})
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("tar entry %s: ancestor %s is not a directory", rel, dir)
		}
	}
	_, err = t.writeEntry(ctx, rel)
	return err
}

// WriteWhiteout writes the OCI whiteout entry that deletes rel.
func (t *TarWriter) WriteWhiteout(rel string) error {
	rel, err := cleanRel(rel)
	if err != nil || rel == "" {
		return fmt.Errorf("whiteout for %q: invalid path", rel)
	}
	return t.writeMarker(path.Join(path.Dir(rel), WhiteoutPrefix+path.Base(rel)))
}

// WriteOpaque writes the OCI opaque-directory marker for dir: the lower
// layers' contents of dir are hidden. Write it right after dir's own entry.
func (t *TarWriter) WriteOpaque(dir string) error {
	dir, err := cleanRel(dir)
	if err != nil || dir == "" {
		return fmt.Errorf("opaque marker for %q: invalid path", dir)
	}
	return t.writeMarker(path.Join(dir, WhiteoutOpaque))
}

// writeMarker writes an empty whiteout file: owned by 0:0, mode 0, dated
// the Unix epoch, so that markers never depend on when a file was deleted.
func (t *TarWriter) writeMarker(name string) error {
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// cleanRel turns rel into a clean slash-separated relative path ("" for the
// root) and rejects paths that climb out of the root.
func cleanRel(rel string) (string, error) {
	c := path.Clean("/" + rel)
	if strings.Contains(rel, "\x00") {
		return "", fmt.Errorf("invalid path %q", rel)
	}
	for _, part := range strings.Split(rel, "/") {
		if part == ".." {
			return "", fmt.Errorf("path %q leaves the root", rel)
		}
	}
	return strings.TrimPrefix(c, "/"), nil
}

func (t *TarWriter) hostPath(rel string) string {
	if rel == "" {
		return t.root
	}
	return filepath.Join(t.root, filepath.FromSlash(rel))
}

// writePaths writes the given entries and their ancestors, sorted.
func (t *TarWriter) writePaths(ctx context.Context, paths []string) error {
	set := map[string]bool{} // path -> is an ancestor of another entry
	for _, p := range paths {
		rel, err := cleanRel(p)
		if err != nil {
			return err
		}
		if rel == "" {
			continue
		}
		if _, ok := set[rel]; !ok {
			set[rel] = false
		}
		for dir := path.Dir(rel); dir != "."; dir = path.Dir(dir) {
			set[dir] = true
		}
	}
	sorted := make([]string, 0, len(set))
	for p := range set {
		sorted = append(sorted, p)
	}
	sort.Slice(sorted, func(i, j int) bool { return ComparePaths(sorted[i], sorted[j]) < 0 })
	for _, p := range sorted {
		st, err := t.writeEntry(ctx, p)
		if err != nil {
			return err
		}
		if set[p] && (st == nil || st.Mode&unix.S_IFMT != unix.S_IFDIR) {
			return fmt.Errorf("tar entry %s: not a directory, but has entries below it", p)
		}
	}
	return nil
}

// walk writes the entries below dir (relative to root), depth first, each
// directory's entries sorted by name.
func (t *TarWriter) walk(ctx context.Context, dir string) error {
	ents, err := os.ReadDir(t.hostPath(dir))
	if err != nil {
		return fmt.Errorf("reading directory: %w", err)
	}
	type item struct{ key, name string }
	items := make([]item, 0, len(ents))
	resort := false
	for _, e := range ents {
		it := item{key: e.Name(), name: e.Name()}
		if t.opts.Overlay && e.Type()&os.ModeCharDevice != 0 {
			if t.isWhiteoutDevice(path.Join(dir, e.Name())) {
				it.key = WhiteoutPrefix + e.Name()
				resort = true
			}
		}
		items = append(items, it)
	}
	if resort {
		sort.Slice(items, func(i, j int) bool { return items[i].key < items[j].key })
	}
	for _, it := range items {
		rel := path.Join(dir, it.name)
		st, err := t.writeEntry(ctx, rel)
		if err != nil {
			return err
		}
		if st != nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := t.walk(ctx, rel); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *TarWriter) isWhiteoutDevice(rel string) bool {
	var st unix.Stat_t
	if err := unix.Lstat(t.hostPath(rel), &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}
