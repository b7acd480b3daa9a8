package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/patternmatcher"
	"golang.org/x/sys/unix"
)

// copier holds the state of one copyFiles call.
type copier struct {
	op         *copyOp
	root       string // DestRoot: absolute, symlink-free
	srcRoot    string // SrcRoot: absolute, symlink-free ("" for the context)
	euid, egid int
	own        *owner     // --chown ids; nil keeps the default owner
	chmod      *chmodSpec // --chmod; nil keeps source modes
	excludes   *patternmatcher.PatternMatcher
	inodes     map[[2]uint64]string // source (dev, inode) -> first written path (hardlinks)
	changed    map[string]struct{}  // written entries, relative to root
	pending    []pendingDir         // source dirs not yet created (--parents)
	tmp        []string             // temporary files to remove (heredocs, downloads)
}

type owner struct{ uid, gid int }

// pendingDir is a directory on the current walk that is created only when
// something below it is included (fsutil's delayed parent creation).
type pendingDir struct {
	src, dst string
	done     bool // exists at dst (included, or created for a descendant)
	made     bool // created by createPending
}

// walkState carries pattern-matching results from a directory to its
// children.
type walkState struct {
	include, exclude patternmatcher.MatchInfo
}

func newCopier(op *copyOp) (*copier, error) {
	if op.DestRoot == "" {
		return nil, errors.New("copy: no destination root")
	}
	root, err := cleanRoot(op.DestRoot)
	if err != nil {
		return nil, fmt.Errorf("destination root: %w", err)
	}
	c, err := newSourceCopier(op)
	if err != nil {
		return nil, err
	}
	c.root = root
	if op.Chown != "" {
		uid, gid, err := lookupChown(op.UserRoot, op.Chown)
		if err != nil {
			return nil, err
		}
		c.own = &owner{uid, gid}
	}
	return c, nil
}

// newSourceCopier prepares the source side of op only (source root,
// --chmod, --exclude): enough to select the sources, not to write them.
func newSourceCopier(op *copyOp) (*copier, error) {
	c := &copier{
		op: op, euid: os.Geteuid(), egid: os.Getegid(),
		inodes: map[[2]uint64]string{}, changed: map[string]struct{}{},
	}
	var err error
	if op.SrcRoot != "" {
		if c.srcRoot, err = cleanRoot(op.SrcRoot); err != nil {
			return nil, fmt.Errorf("source root: %w", err)
		}
	} else if op.Context == nil && len(op.Sources) > 0 && !allRemote(op.Sources) {
		return nil, errors.New("copy: no build context")
	}
	if c.chmod, err = parseChmod(op.Chmod); err != nil {
		return nil, err
	}
	if c.excludes, err = newExcludeMatcher(op.Excludes); err != nil {
		return nil, err
	}
	return c, nil
}

func allRemote(srcs []string) bool {
	for _, s := range srcs {
		if !isHTTPSource(s) && !isGitSource(s) {
			return false
		}
	}
	return true
}

func cleanRoot(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

func (c *copier) cleanup() {
	for _, p := range c.tmp {
		os.RemoveAll(p)
	}
}

// join resolves an image path inside the destination root (chroot
// semantics: every symlink, the last component included, is followed and
// confined to the root).
func (c *copier) join(imagePath string) (string, error) {
	p, err := securejoin.SecureJoin(c.root, imagePath)
	if err != nil {
		return "", fmt.Errorf("resolving %s: %w", imagePath, err)
	}
	return p, nil
}

// mkdirAll creates the image directory imagePath (resolved inside the root)
// and its missing parents, and returns its resolved path.
func (c *copier) mkdirAll(imagePath string) (string, error) {
	p, err := c.join(imagePath)
	if err != nil {
		return "", err
	}
	return c.mkdirResolved(p)
}

// mkdirResolved creates the missing directories of p, a path under the root
// whose existing components are known to be symlink-free, with BuildKit's
// mode for created destination directories and the --chown owner (0:0 by
// default).
func (c *copier) mkdirResolved(p string) (string, error) {
	return c.mkdirMode(p, c.chmod.dirMode())
}

// mkdirMode is mkdirResolved with an explicit mode for created directories.
func (c *copier) mkdirMode(p string, m os.FileMode) (string, error) {
	rel, err := filepath.Rel(c.root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("path %s escapes the root", p)
	}
	cur := c.root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if part == "." || part == "" {
			continue
		}
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err == nil {
			if !fi.IsDir() {
				return "", fmt.Errorf("mkdir %s: %w", c.imagePath(cur), syscall.ENOTDIR)
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if err := os.Mkdir(cur, m|0o700); err != nil {
			return "", fmt.Errorf("mkdir %s: %w", c.imagePath(cur), err)
		}
		if err := c.setOwner(cur, nil); err != nil {
			return "", err
		}
		if err := os.Chmod(cur, m); err != nil {
			return "", err
		}
		if err := c.record(cur); err != nil {
			return "", err
		}
	}
	return p, nil
}

// copyEntry copies src (with rel, its path relative to the item's root) to
// target, recursively for directories, as fsutil's copier does: include
// (--parents) and exclude patterns, delayed parent creation, merging into
// existing directories, replacing existing non-directories.
func (c *copier) copyEntry(ctx context.Context, it *srcItem, src, rel, target string, overwrite bool, parent walkState) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copying %s: %w", it.display(rel), err)
	}
	sel, err := c.selectEntry(it, rel, fi, parent)
	if err != nil || sel.skip {
		return err
	}
	if sel.include {
		if err := c.createPending(it); err != nil {
			return err
		}
	}
	if fi.IsDir() {
		return c.copyDir(ctx, it, src, rel, target, fi, overwrite, sel.include, sel.excluded, sel.st)
	}
	if err := ensureEmptyFileTarget(target); err != nil {
		return err
	}
	if err := c.writeNonDir(it, src, target, fi); err != nil {
		return err
	}
	if err := c.copyInfo(it, src, fi, target); err != nil {
		return err
	}
	return c.record(target)
}

// copyDir copies a directory: created (or, below the top level, its mode
// overwritten) when included, then its children; its metadata is set after
// the children are written.
func (c *copier) copyDir(ctx context.Context, it *srcItem, src, rel, target string, fi os.FileInfo, overwrite, include, excluded bool, st walkState) error {
	created := false
	if include {
		var err error
		if created, err = copyDirectoryOnly(target, fi, overwrite); err != nil {
			return err
		}
	}
	c.pending = append(c.pending, pendingDir{src: src, dst: target, done: include})
	defer func() { c.pending = c.pending[:len(c.pending)-1] }()

	if c.walkExcluded(excluded) {
		entries, err := os.ReadDir(src)
		if err != nil {
			return fmt.Errorf("copying %s: %w", it.display(rel), err)
		}
		for _, e := range entries {
			if err := c.copyEntry(ctx, it, filepath.Join(src, e.Name()), path.Join(rel, e.Name()),
				filepath.Join(target, e.Name()), true, st); err != nil {
				return err
			}
		}
	}
	top := c.pending[len(c.pending)-1]
	switch {
	case include && (overwrite || created):
		if err := c.copyInfo(it, src, fi, target); err != nil {
			return err
		}
		return c.record(target)
	case include:
		// The top-level destination directory existed: fsutil keeps its
		// owner and mode but sets its times from the source directory.
		if err := c.setTimes(it, fi, target); err != nil {
			return err
		}
		return c.record(target)
	case top.made:
		// A delayed parent created for an included descendant: its
		// children changed its times, set them again.
		return c.setTimes(it, fi, target)
	}
	return nil
}

// createPending creates the delayed parent directories of the entry about to
// be copied, with their source metadata.
func (c *copier) createPending(it *srcItem) error {
	for i := range c.pending {
		d := &c.pending[i]
		if d.done {
			continue
		}
		fi, err := os.Stat(d.src)
		if err != nil {
			return err
		}
		made, err := copyDirectoryOnly(d.dst, fi, true)
		if err != nil {
			return err
		}
		d.done, d.made = true, made
		if made {
			if err := c.copyInfo(it, d.src, fi, d.dst); err != nil {
				return err
			}
		} else if err := os.Chmod(d.dst, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return err
		}
		if err := c.record(d.dst); err != nil {
			return err
		}
	}
	return nil
}

// copyDirectoryOnly creates dst with the source directory's mode (owner
// writable until its metadata is set), or, when overwrite is set, gives an
// existing directory the source's mode. A non-directory at dst is an error.
func copyDirectoryOnly(dst string, fi os.FileInfo, overwrite bool) (bool, error) {
	st, err := os.Lstat(dst)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dst, fi.Mode().Perm()|0o700); err != nil {
			return false, fmt.Errorf("failed to mkdir %s: %w", dst, err)
		}
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if !st.IsDir() {
		return false, fmt.Errorf("cannot copy to non-directory: %s", dst)
	}
	if overwrite {
		if err := os.Chmod(dst, fi.Mode().Perm()|0o700); err != nil {
			return false, fmt.Errorf("failed to chmod on %s: %w", dst, err)
		}
	}
	return false, nil
}

// ensureEmptyFileTarget removes a non-directory at dst, so that a file,
// symlink or device replaces it instead of being written through it.
func ensureEmptyFileTarget(dst string) error {
	fi, err := os.Lstat(dst)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to lstat file target: %w", err)
	}
	if fi.IsDir() {
		return fmt.Errorf("cannot replace to directory %s with file", dst)
	}
	return os.Remove(dst)
}

// writeNonDir creates target as a copy of the regular file, symlink, device
// or fifo src. Hardlinked sources stay hardlinked within one copyFiles
// call; sockets become empty regular files (as in BuildKit).
func (c *copier) writeNonDir(it *srcItem, src, target string, fi os.FileInfo) error {
	switch m := fi.Mode(); {
	case m.IsRegular():
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := c.inodes[key]; ok {
				if err := os.Link(first, target); err != nil {
					return fmt.Errorf("failed to create hard link: %w", err)
				}
				return nil
			}
			c.inodes[key] = target
		}
		return copyFileData(src, target)
	case m&os.ModeSymlink != 0:
		link, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("failed to read link %s: %w", it.display(""), err)
		}
		return os.Symlink(link, target)
	case m&os.ModeSocket != 0:
		return copyFileData("", target)
	case m&(os.ModeDevice|os.ModeNamedPipe) != 0:
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("copying %s: unsupported file type", it.display(""))
		}
		if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
			return fmt.Errorf("failed to create device %s: %w", filepath.Base(target), err)
		}
		return nil
	}
	return fmt.Errorf("copying %s: unsupported file type %s", it.display(""), fi.Mode().Type())
}

// copyFileData copies the regular file src (or nothing when src is "") to
// a new file target, never following a symlink at either end.
func copyFileData(src, target string) error {
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("failed to open target: %w", err)
	}
	if src != "" {
		in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		if err != nil {
			out.Close()
			return fmt.Errorf("failed to open source: %w", err)
		}
		_, err = io.Copy(out, in)
		in.Close()
		if err != nil {
			out.Close()
			return fmt.Errorf("failed to copy files: %w", err)
		}
	}
	return out.Close()
}

// copyInfo sets the owner, mode and times of a copied entry (fsutil's
// copyFileInfo): owner from --chown, else 0:0 for context, heredoc and
// downloaded sources, else the source's; mode from --chmod applied to the
// source mode (not for symlinks); extended attributes and times from the
// source.
func (c *copier) copyInfo(it *srcItem, src string, fi os.FileInfo, target string) error {
	if err := c.setOwner(target, ownerOf(it, fi)); err != nil {
		return err
	}
	copyXattrs(src, target)
	if fi.Mode()&os.ModeSymlink == 0 {
		m := c.chmod.apply(fi.Mode())
		if err := os.Chmod(target, m.Perm()|m&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return fmt.Errorf("failed to chmod %s: %w", c.imagePath(target), err)
		}
	}
	return c.setTimes(it, fi, target)
}

// ownerOf is the source owner kept for COPY --from entries; nil means 0:0.
func ownerOf(it *srcItem, fi os.FileInfo) *owner {
	if !it.keepOwner {
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return &owner{int(st.Uid), int(st.Gid)}
	}
	return nil
}

// setOwner lchowns p to --chown, else to def (nil = 0:0).
func (c *copier) setOwner(p string, def *owner) error {
	o := owner{}
	switch {
	case c.own != nil:
		o = *c.own
	case def != nil:
		o = *def
	}
	return c.lchown(p, o.uid, o.gid)
}

// lchown changes the owner of p without following symlinks. Without root,
// ownership cannot change: ids equal to the process's are left alone,
// anything else is an error.
func (c *copier) lchown(p string, uid, gid int) error {
	if c.euid != 0 {
		if uid == c.euid && gid == c.egid {
			return nil
		}
		return fmt.Errorf("cannot set owner %d:%d on %s: changing file ownership requires root (running as uid %d)",
			uid, gid, c.imagePath(p), c.euid)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		return fmt.Errorf("failed to chown %s: %w", c.imagePath(p), err)
	}
	return nil
}

// setTimes gives target the source's access and modification times.
func (c *copier) setTimes(it *srcItem, fi os.FileInfo, target string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	ts := []unix.Timespec{
		{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("failed to utime %s: %w", c.imagePath(target), err)
	}
	return nil
}

// clampMtime lowers the access and modification times of p to epoch.
func clampMtime(p string, epoch time.Time) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.ModTime().After(epoch) {
		return nil
	}
	ts, err := unix.TimeToTimespec(epoch)
	if err != nil {
		return err
	}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// record notes that the entry at p (under the root) was written.
func (c *copier) record(p string) error {
	rel, err := filepath.Rel(c.root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("path %s escapes the root", p)
	}
	if rel == "." {
		rel = ""
	}
	c.changed[filepath.ToSlash(rel)] = struct{}{}
	return nil
}

// imagePath shows a path under the root as the image sees it.
func (c *copier) imagePath(p string) string {
	rel, err := filepath.Rel(c.root, p)
	if err != nil {
		return p
	}
	return path.Clean("/" + filepath.ToSlash(rel))
}

// copyXattrs copies src's extended attributes to dst without following
// symlinks. As in BuildKit (fsutil with an ignoring error handler), an
// attribute that cannot be read or set is skipped.
func copyXattrs(src, dst string) {
	if src == "" {
		return
	}
	size, err := unix.Llistxattr(src, nil)
	if err != nil || size <= 0 {
		return
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(src, buf); err != nil {
		return
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		n, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, n)
		if n, err = unix.Lgetxattr(src, name, val); err != nil {
			continue
		}
		_ = unix.Lsetxattr(dst, name, val[:n], 0)
	}
}
