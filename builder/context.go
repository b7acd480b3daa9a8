package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// contextOptions say where the build context and the Dockerfile come from.
type contextOptions struct {
	// Dir is the context directory; ignored when Tar is set.
	Dir string
	// Tar, when non-nil, is the context as a tar stream (plain, gzip, bzip2,
	// xz or zstd), for `imgbuild build -`. It is extracted into TempDir.
	Tar io.Reader
	// Dockerfile is the -f path. "" means <context>/Dockerfile (or
	// <context>/dockerfile when only that exists). With Dir, a relative path
	// is relative to the process's working directory; with Tar it names a
	// file inside the archive.
	Dockerfile string
	// DockerfileContent, when non-nil, is the Dockerfile itself (-f -).
	DockerfileContent []byte
	// TempDir is a scratch directory to extract Tar into.
	TempDir string
}

// buildContext is a loaded build context: its directory, its Dockerfile and
// its .dockerignore rules.
type buildContext struct {
	Dir            string // directory holding the context files (symlink-free, absolute)
	Dockerfile     []byte // the Dockerfile's bytes
	DockerfileName string // base name for error messages, e.g. "Dockerfile.prod"

	// ignore holds the .dockerignore rules (nil when nothing is ignored).
	// PatternMatcher compiles patterns lazily and is not safe for
	// concurrent use; stages copy from the context concurrently, so every
	// use holds ignoreMu.
	ignore   *patternmatcher.PatternMatcher
	ignoreMu sync.Mutex
}

// loadContext opens the build context described by o: a directory or an
// extracted tar stream, the Dockerfile, and the ignore file
// ("<Dockerfile>.dockerignore" next to the Dockerfile, else
// <context>/.dockerignore), compiled with BuildKit's pattern rules.
func loadContext(ctx context.Context, o contextOptions) (*buildContext, error) {
	var (
		dir string
		err error
	)
	if o.Tar != nil {
		dir, err = extractTarContext(ctx, o.Tar, o.TempDir)
	} else {
		dir, err = openContextDir(o.Dir)
	}
	if err != nil {
		return nil, err
	}
	bc := &buildContext{Dir: dir, DockerfileName: "Dockerfile"}
	dfPath := "" // the Dockerfile's location on disk, if it has one
	switch {
	case o.DockerfileContent != nil:
		bc.Dockerfile = o.DockerfileContent
		if o.Dockerfile != "" && o.Dockerfile != "-" {
			bc.DockerfileName = filepath.Base(o.Dockerfile)
		}
	default:
		if dfPath, err = findDockerfile(dir, o.Dockerfile, o.Tar != nil); err != nil {
			return nil, err
		}
		if bc.Dockerfile, err = readRegular(dfPath); err != nil {
			return nil, fmt.Errorf("reading Dockerfile: %w", err)
		}
		bc.DockerfileName = filepath.Base(dfPath)
	}
	if err := bc.loadIgnore(dfPath); err != nil {
		return nil, err
	}
	return bc, nil
}

func openContextDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("no build context directory given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("build context %s: %w", dir, err)
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return "", fmt.Errorf("build context %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("build context: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("build context %s: not a directory", dir)
	}
	return abs, nil
}

// findDockerfile locates the Dockerfile: name as given (relative to the
// working directory, or inside the context when it came from a tar), or the
// default Dockerfile / dockerfile in the context.
func findDockerfile(dir, name string, inContext bool) (string, error) {
	if name == "" {
		p := filepath.Join(dir, "Dockerfile")
		if _, err := os.Lstat(p); err != nil {
			if alt := filepath.Join(dir, "dockerfile"); fileExists(alt) {
				return alt, nil
			}
			return "", fmt.Errorf("reading Dockerfile: %w", errNotFoundIn(p, err))
		}
		return p, nil
	}
	if inContext {
		p, err := securejoin.SecureJoin(dir, name)
		if err != nil {
			return "", fmt.Errorf("Dockerfile %s: %w", name, err)
		}
		return p, nil
	}
	p, err := filepath.Abs(name)
	if err != nil {
		return "", fmt.Errorf("Dockerfile %s: %w", name, err)
	}
	return p, nil
}

func errNotFoundIn(p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open %s: no such file or directory", p)
	}
	return err
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// readRegular reads a regular file (following symlinks: the Dockerfile may be
// a link, as in BuildKit's own tests).
func readRegular(p string) ([]byte, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", p)
	}
	return os.ReadFile(p)
}

// loadIgnore reads <Dockerfile>.dockerignore next to the Dockerfile if it
// exists, else <context>/.dockerignore.
func (bc *buildContext) loadIgnore(dfPath string) error {
	candidates := []string{filepath.Join(bc.Dir, ".dockerignore")}
	if dfPath != "" {
		candidates = append([]string{dfPath + ".dockerignore"}, candidates...)
	}
	for _, p := range candidates {
		data, err := readRegular(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", filepath.Base(p), err)
		}
		patterns, err := ignorefile.ReadAll(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("parsing %s: %w", filepath.Base(p), err)
		}
		if len(patterns) == 0 {
			return nil
		}
		pm, err := patternmatcher.New(patterns)
		if err != nil {
			return fmt.Errorf("parsing %s: %w", filepath.Base(p), err)
		}
		bc.ignore = pm
		return nil
	}
	return nil
}

// hidden reports whether the context entry rel (slash-separated, relative
// to the context root) is left out of the context by .dockerignore, the way
// BuildKit's context transfer leaves it out: an ignored directory still
// exists when something below it is re-included by a "!" pattern.
func (bc *buildContext) hidden(rel string, isDir bool) bool {
	if bc == nil || bc.ignore == nil || rel == "" || rel == "." {
		return false
	}
	bc.ignoreMu.Lock()
	defer bc.ignoreMu.Unlock()
	m, err := bc.ignore.MatchesOrParentMatches(rel)
	if err != nil || !m {
		return err != nil
	}
	if !isDir || !bc.ignore.Exclusions() || !bc.exceptionBelow(rel) {
		return true
	}
	found := false
	root := filepath.Join(bc.Dir, filepath.FromSlash(rel))
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root || found {
			return nil
		}
		r, _ := filepath.Rel(bc.Dir, p)
		if m, err := bc.ignore.MatchesOrParentMatches(filepath.ToSlash(r)); err == nil && !m {
			found = true
			return filepath.SkipAll
		}
		return nil
	})
	return !found
}

// contextVFS lets securejoin resolve paths in the context as BuildKit sees
// them: ignored entries do not exist.
type contextVFS struct{ bc *buildContext }

func (v contextVFS) Lstat(name string) (os.FileInfo, error) {
	fi, err := os.Lstat(name)
	if err != nil {
		return nil, err
	}
	if rel, ok := v.bc.rel(name); ok && v.bc.hidden(rel, fi.IsDir()) {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: syscall.ENOENT}
	}
	return fi, nil
}

func (v contextVFS) Readlink(name string) (string, error) { return os.Readlink(name) }

// rel turns a path under bc.Dir into a slash-separated context path.
func (bc *buildContext) rel(p string) (string, bool) {
	r, err := filepath.Rel(bc.Dir, p)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", false
	}
	return path.Clean(filepath.ToSlash(r)), true
}

// exceptionBelow reports whether a "!" pattern could re-include something
// below the ignored directory rel. Like fsutil's walker, it answers without
// a walk when every exception is a plain path: only one under rel counts.
func (bc *buildContext) exceptionBelow(rel string) bool {
	for _, p := range bc.ignore.Patterns() {
		if !p.Exclusion() {
			continue
		}
		s := filepath.ToSlash(p.String())
		s = strings.TrimSuffix(strings.TrimSuffix(s, "/**"), "/*")
		if strings.ContainsAny(s, `*[]?^\`) || strings.HasPrefix(s+"/", rel+"/") {
			return true
		}
	}
	return false
}
