package builder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/patternmatcher"
)

// srcItem is one top-level thing to copy: a file or directory in the
// context or a source rootfs, a heredoc or a download (both written to a
// temporary file first).
type srcItem struct {
	name      string        // base name used when the destination is a directory
	path      string        // resolved path on disk
	shown     string        // the source as the user wrote it, for messages
	ctx       *buildContext // set when path is inside the build context
	ctxRoot   string        // path's context-relative location (for .dockerignore)
	keepOwner bool          // keep source owners (COPY --from)
	unpack    bool          // extract as an archive into the destination (ADD)
	mayUnpack bool          // a local regular file ADD extracts if it is an archive
	// include holds --parents patterns, relative to path.
	include         *patternmatcher.PatternMatcher
	includePatterns []string
}

// ctxPath is the context-relative path of rel below the item.
func (it *srcItem) ctxPath(rel string) string {
	return strings.TrimPrefix(path.Join(it.ctxRoot, rel), "/")
}

// display names rel below the item in messages.
func (it *srcItem) display(rel string) string {
	if rel == "" {
		return it.shown
	}
	return path.Join(it.shown, rel)
}

// sourceFS is where local sources are resolved: the build context (whose
// ignored entries do not exist) or a stage's or image's rootfs.
type sourceFS struct {
	root string
	bc   *buildContext // nil for a rootfs
}

func (c *copier) sourceFS() sourceFS {
	if c.srcRoot != "" {
		return sourceFS{root: c.srcRoot}
	}
	return sourceFS{root: c.op.Context.Dir, bc: c.op.Context}
}

// resolve follows p (an absolute source path) inside the source root with
// chroot semantics, symlinks included, and checks that the result exists
// (and, in the context, is not ignored).
func (s sourceFS) resolve(p string) (string, os.FileInfo, error) {
	var vfs securejoin.VFS
	if s.bc != nil {
		vfs = contextVFS{s.bc}
	}
	r, err := securejoin.SecureJoinVFS(s.root, p, vfs)
	if err != nil {
		return "", nil, fmt.Errorf("%q: %w", p, err)
	}
	var fi os.FileInfo
	if vfs != nil {
		fi, err = vfs.Lstat(r)
	} else {
		fi, err = os.Lstat(r)
	}
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return "", nil, fmt.Errorf("%q: %w", p, errNotFound)
	}
	if err != nil {
		return "", nil, fmt.Errorf("%q: %w", p, err)
	}
	return r, fi, nil
}

// localItems expands one local source argument: wildcards (filepath.Match
// syntax, a component at a time, as fsutil) and --parents patterns.
func (c *copier) localItems(src string) ([]srcItem, error) {
	if c.op.Parents {
		return c.parentsItems(src)
	}
	fsys := c.sourceFS()
	p := path.Clean("/" + filepath.ToSlash(src))
	paths := []string{p}
	if containsWildcards(p) {
		var err error
		if paths, err = fsys.glob(p); err != nil {
			return nil, err
		}
	}
	items := make([]srcItem, 0, len(paths))
	for _, q := range paths {
		it, err := c.item(fsys, q)
		if err != nil {
			return nil, err
		}
		items = append(items, it)
	}
	return items, nil
}

// item resolves one source path into an item.
func (c *copier) item(fsys sourceFS, p string) (srcItem, error) {
	r, fi, err := fsys.resolve(p)
	if err != nil {
		return srcItem{}, err
	}
	it := srcItem{name: path.Base(p), path: r, shown: p, keepOwner: fsys.bc == nil}
	if fsys.bc != nil {
		it.ctx = fsys.bc
		it.ctxRoot, _ = fsys.bc.rel(r)
	}
	it.mayUnpack = c.op.Add && fi.Mode().IsRegular() && (c.op.Unpack == nil || *c.op.Unpack)
	return it, nil
}

// isUnpacked reports whether ADD extracts the local item it: a regular
// file (not a --parents tree) that reads as a tar archive. It reads the
// file's first bytes; sourcesDigest, which must not, hashes the whole
// content instead.
func (c *copier) isUnpacked(it *srcItem) bool {
	return it.mayUnpack && isArchive(it.path)
}

// parentsItems handles COPY --parents: the part before "/./" (or "/") is
// the directory copied, the rest an include pattern below it, as in
// BuildKit's dockerfile2llb.
func (c *copier) parentsItems(src string) ([]srcItem, error) {
	fsys := c.sourceFS()
	parent, pattern, ok := strings.Cut(filepath.ToSlash(src), "/./")
	if !ok {
		parent, pattern = "/", src
	}
	parent = path.Clean("/" + parent)
	pattern = strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(pattern)), "/")
	if !containsWildcards(parent) && !containsWildcards(pattern) {
		if _, _, err := fsys.resolve(path.Join(parent, pattern)); err != nil {
			return nil, err
		}
	}
	parents := []string{parent}
	if containsWildcards(parent) {
		var err error
		if parents, err = fsys.glob(parent); err != nil {
			return nil, err
		}
	}
	var include *patternmatcher.PatternMatcher
	var patterns []string
	if pattern != "" {
		patterns = []string{pattern}
		var err error
		if include, err = patternmatcher.New(patterns); err != nil {
			return nil, fmt.Errorf("--parents %s: %w", src, err)
		}
	}
	var items []srcItem
	for _, p := range parents {
		it, err := c.item(fsys, p)
		if err != nil {
			return nil, err
		}
		it.mayUnpack = false
		if fi, err := os.Stat(it.path); err == nil && !fi.IsDir() {
			continue // --parents copies directory trees; a file pivot has nothing below it
		}
		it.include, it.includePatterns = include, patterns
		items = append(items, it)
	}
	return items, nil
}

// glob expands a wildcard source as fsutil's ResolveWildcards does: the
// components before the first wildcard are resolved (following symlinks),
// then paths below are matched against the rest with filepath.Match.
// No match is not an error (BuildKit allows empty wildcards).
func (s sourceFS) glob(p string) ([]string, error) {
	prefix, pattern := splitWildcards(p)
	base, fi, err := s.resolve(prefix)
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, nil
	}
	depth := strings.Count(pattern, "/") + 1
	var out []string
	err = filepath.WalkDir(base, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(base, q)
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if s.bc != nil {
			if ctxRel, ok := s.bc.rel(q); ok && s.bc.hidden(ctxRel, d.IsDir()) {
				return skipEntry(d)
			}
		}
		if ok, _ := path.Match(pattern, rel); ok {
			out = append(out, path.Join(prefix, rel))
			return skipEntry(d)
		}
		if d.IsDir() && strings.Count(rel, "/")+1 >= depth {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", p, err)
	}
	return out, nil
}

func skipEntry(d fs.DirEntry) error {
	if d.IsDir() {
		return fs.SkipDir
	}
	return nil
}

// containsWildcards reports whether p has an unescaped *, ? or [.
func containsWildcards(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '*', '?', '[':
			return true
		}
	}
	return false
}

// splitWildcards splits p before its first component holding a wildcard.
func splitWildcards(p string) (prefix, pattern string) {
	parts := strings.Split(path.Clean(p), "/")
	for i, part := range parts {
		if containsWildcards(part) {
			return path.Clean("/" + strings.Join(parts[:i], "/")), strings.Join(parts[i:], "/")
		}
	}
	return path.Clean(p), ""
}

// mayContainMatch reports whether some include pattern could match a path
// below the directory dir (conservative: used only to prune walks).
func mayContainMatch(patterns []string, dir string) bool {
	parts := strings.Split(dir, "/")
	for _, p := range patterns {
		pp := strings.Split(p, "/")
		ok := true
		for i, d := range parts {
			if i >= len(pp) {
				ok = false
				break
			}
			if pp[i] == "**" {
				return true
			}
			m, err := path.Match(pp[i], d)
			if err != nil {
				return true
			}
			if !m {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// heredocItem writes a heredoc to a temporary file (mode 0644 unless set,
// modified now) so it is copied like a context file.
func (c *copier) heredocItem(h heredocSource) (srcItem, error) {
	name := path.Base(path.Clean("/" + h.Name))
	if name == "/" {
		return srcItem{}, fmt.Errorf("heredoc %q: invalid name", h.Name)
	}
	f, err := os.CreateTemp("", "imgbuild-heredoc-")
	if err != nil {
		return srcItem{}, err
	}
	c.tmp = append(c.tmp, f.Name())
	if _, err := f.Write(h.Data); err != nil {
		f.Close()
		return srcItem{}, err
	}
	if err := f.Close(); err != nil {
		return srcItem{}, err
	}
	m := h.Mode
	if m == 0 {
		m = 0o644
	}
	if err := os.Chmod(f.Name(), m); err != nil {
		return srcItem{}, err
	}
	now := time.Now()
	if err := os.Chtimes(f.Name(), now, now); err != nil {
		return srcItem{}, err
	}
	return srcItem{name: name, path: f.Name(), shown: "<<" + h.Name}, nil
}
