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
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// OCI whiteout names.
const (
	whPrefix     = ".wh."
	whMetaPrefix = ".wh..wh."
	whOpaque     = ".wh..wh..opq"
)

// maxPathLen caps entry names and link targets after cleaning. Linux cannot
// address longer paths in one call (PATH_MAX) and no image needs them.
const maxPathLen = 4096

// errInvalidEntry marks tar entries Apply refuses (bad whiteouts, non-directory
// entries for the root, unknown types, over-long names).
var errInvalidEntry = errors.New("invalid layer entry")

// dirent identifies a directory entry: the directory's inode and a name in it.
type dirent struct {
	dev, ino uint64
	name     string
}

// dirHandle is an open directory resolved inside root.
type dirHandle struct {
	f        *os.File
	path     string // cleaned, relative to root ("" is root itself)
	dev, ino uint64
}

func (d *dirHandle) fd() int { return int(d.f.Fd()) }

// key names base inside d.
func (d *dirHandle) key(base string) dirent { return dirent{d.dev, d.ino, base} }

// dirMeta is a directory whose mode and times are applied once the whole
// layer is written.
type dirMeta struct {
	path     string
	dev, ino uint64
	mode     uint32
	atime    unix.Timespec
	mtime    unix.Timespec
}

// applier holds the state of one Apply call.
type applier struct {
	opts       ApplyOptions
	privileged bool      // euid 0: device nodes may be created
	rootPath   string    // absolute, trusted
	root       *os.File  // O_PATH handle of rootPath
	rootDir    dirHandle // a readable handle of root, never closed early
	cache      *dirHandle
	stale      bool                // cache must not be reused (something was removed)
	written    map[dirent]struct{} // entries written by this layer
	dirs       []dirMeta
	dirIndex   map[[2]uint64]int // dev, ino -> index in dirs
}

func applyTar(ctx context.Context, root string, r io.Reader, opts ApplyOptions) error {
	a, err := newApplier(root, opts)
	if err != nil {
		return err
	}
	defer a.close()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading layer tar: %w", err)
		}
		if err := a.entry(ctx, hdr, tr); err != nil {
			return fmt.Errorf("applying layer entry %q: %w", truncName(hdr.Name), err)
		}
	}
	return a.finish(ctx)
}

func newApplier(root string, opts ApplyOptions) (*applier, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("applying layer: %w", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("applying layer: %w", err)
	}
	rootFile, err := os.OpenFile(abs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("applying layer: %w", err)
	}
	dir, err := pathrs.Reopen(rootFile, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		rootFile.Close()
		return nil, fmt.Errorf("applying layer: opening %s: %w", abs, err)
	}
	a := &applier{
		opts:       opts,
		privileged: os.Geteuid() == 0,
		rootPath:   abs,
		root:       rootFile,
		written:    make(map[dirent]struct{}),
		dirIndex:   make(map[[2]uint64]int),
	}
	a.rootDir = dirHandle{f: dir}
	if err := a.rootDir.stat(); err != nil {
		a.close()
		return nil, fmt.Errorf("applying layer: %w", err)
	}
	return a, nil
}

func (a *applier) close() {
	a.dropCache()
	a.rootDir.f.Close()
	a.root.Close()
}

func (d *dirHandle) stat() error {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd(), &st); err != nil {
		return fmt.Errorf("stat /%s: %w", d.path, err)
	}
	d.dev, d.ino = uint64(st.Dev), st.Ino
	return nil
}

// entry applies one tar entry.
func (a *applier) entry(ctx context.Context, hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	}
	name, err := cleanPath(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := splitPath(name)
	if !a.opts.NoWhiteouts && strings.HasPrefix(base, whPrefix) {
		return a.whiteout(dir, base)
	}
	if base == "" {
		return a.rootEntry(hdr)
	}
	p, err := a.parent(dir)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse:
		return a.regular(ctx, p, base, hdr, r)
	case tar.TypeDir:
		return a.directory(p, base, hdr)
	case tar.TypeSymlink:
		return a.symlink(p, base, hdr)
	case tar.TypeLink:
		return a.hardlink(p, base, hdr)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return a.special(p, base, hdr)
	default:
		return fmt.Errorf("%w: unsupported type %q", errInvalidEntry, hdr.Typeflag)
	}
}

// cleanPath turns an untrusted tar name into a path relative to root with
// chroot semantics: "../a", "/a" and "x/../a" are all "a"; root itself is "".
func cleanPath(name string) (string, error) {
	if len(name) > maxPathLen {
		return "", fmt.Errorf("%w: name longer than %d bytes", errInvalidEntry, maxPathLen)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: NUL byte in name", errInvalidEntry)
	}
	return strings.TrimPrefix(path.Clean("/"+name), "/"), nil
}

// splitPath splits a cleaned path into its directory and final component.
func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// truncName keeps error messages short for huge hostile names.
func truncName(name string) string {
	const max = 256
	if len(name) <= max {
		return name
	}
	return name[:max] + "..."
}

// parent returns the directory dir (cleaned, relative to root), resolved
// inside root and created (0755) where missing. The handle stays valid until
// the next parent or lookup call or invalidate; callers must not close it.
func (a *applier) parent(dir string) (*dirHandle, error) {
	return a.dir(dir, true)
}

// lookup is parent without creating anything.
func (a *applier) lookup(dir string) (*dirHandle, error) {
	return a.dir(dir, false)
}

func (a *applier) dir(dir string, create bool) (*dirHandle, error) {
	if dir == "" {
		return &a.rootDir, nil
	}
	if a.cache != nil && !a.stale && a.cache.path == dir {
		return a.cache, nil
	}
	a.dropCache()
	f, err := a.openDir(dir, create)
	if err != nil {
		return nil, err
	}
	d := &dirHandle{f: f, path: dir}
	if err := d.stat(); err != nil {
		f.Close()
		return nil, err
	}
	a.cache = d
	return d, nil
}

func (a *applier) openDir(dir string, create bool) (*os.File, error) {
	if create {
		f, err := pathrs.MkdirAllHandle(a.root, dir, 0o755)
		if err != nil {
			return nil, fmt.Errorf("creating parent /%s: %w", dir, err)
		}
		return f, nil
	}
	h, err := pathrs.OpenatInRoot(a.root, dir)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("opening /%s: %w", dir, err)
	}
	return f, nil
}

// invalidate forbids reusing the cached directory handle for later entries.
// Every removal calls it: removing or replacing an entry may change how later
// paths resolve. The handle stays open for the entry being applied.
func (a *applier) invalidate() { a.stale = true }

func (a *applier) dropCache() {
	if a.cache != nil {
		a.cache.f.Close()
		a.cache = nil
	}
	a.stale = false
}

// markWritten records that this layer wrote base in d, so that whiteouts and
// opaque markers of the same layer leave it alone.
func (a *applier) markWritten(d *dirHandle, base string) {
	a.written[d.key(base)] = struct{}{}
}

// finish applies deferred directory modes and times, last listed first.
func (a *applier) finish(ctx context.Context) error {
	for i := len(a.dirs) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := a.dirMetadata(a.dirs[i]); err != nil {
			return fmt.Errorf("applying layer entry %q: %w", truncName(a.dirs[i].path), err)
		}
	}
	return nil
}
