package layers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// pruneUpper removes from an overlay upperdir what overlayfs copied up
// without a change, so that the layer holds only real changes, as
// BuildKit's overlay differ (util/overlay.Changes) records them: a
// directory whose mode, owner and capabilities equal those it has in the
// lower layers is no change by itself (its mtime moves with every file
// created or removed in it), and it is kept only as the parent of other
// changes; a regular file copied up and left as it was (same mode, owner,
// size, capabilities and mtime, and the same content when the mtime has no
// sub-second part, as BuildKit's) is no change either.
// This keeps, for example, a /etc copied up for a mount stub of the RUN
// sandbox out of the layer. lowers are the lower directories, lowest first.
func pruneUpper(ctx context.Context, upper string, lowers []string, xattrPrefix string) error {
	b := baseView{lowers: lowers, opaque: xattrPrefix + "opaque"}
	_, err := b.prune(ctx, upper, "")
	return err
}

type baseView struct {
	lowers []string
	opaque string
}

// prune prunes the entries of directory rel of upper and reports whether it
// is empty afterwards.
func (b *baseView) prune(ctx context.Context, upper, rel string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	dir := filepath.Join(upper, rel)
	names, err := readDirNames(unix.AT_FDCWD, dir)
	if err != nil {
		return false, err
	}
	left := len(names)
	for _, name := range names {
		p := path.Join(rel, name)
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(upper, p), &st); err != nil {
			return false, err
		}
		removed, err := b.pruneEntry(ctx, upper, p, &st)
		if err != nil {
			return false, err
		}
		if removed {
			left--
		}
	}
	return left == 0, nil
}

// pruneEntry removes upper/p when it is an unchanged copy-up.
func (b *baseView) pruneEntry(ctx context.Context, upper, p string, st *unix.Stat_t) (bool, error) {
	full := filepath.Join(upper, p)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if v, _ := getXattr(full, b.opaque); string(v) == "y" {
			return false, nil
		}
		empty, err := b.prune(ctx, upper, p)
		if err != nil || !empty {
			return false, err
		}
	case unix.S_IFREG:
	default:
		return false, nil
	}
	base, basePath, ok := b.lookup(p)
	if !ok || !sameCopyUp(st, base, full, basePath) {
		return false, nil
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return true, unix.Rmdir(full)
	}
	return true, unix.Unlink(full)
}

// sameCopyUp compares an upper entry with its base as BuildKit's
// sameDirent does.
func sameCopyUp(st, base *unix.Stat_t, full, basePath string) bool {
	if st.Mode != base.Mode || st.Uid != base.Uid || st.Gid != base.Gid || st.Rdev != base.Rdev {
		return false
	}
	c1, err1 := getXattr(full, "security.capability")
	c2, err2 := getXattr(basePath, "security.capability")
	if !bytes.Equal(c1, c2) || (err1 != nil) != (err2 != nil) {
		return false
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return true
	}
	if st.Size != base.Size || st.Mtim != base.Mtim {
		return false
	}
	// A timestamp truncated to seconds (as extracted from a tar) proves
	// nothing: compare the content.
	return st.Mtim.Nsec != 0 || st.Size == 0 || sameContent(full, basePath)
}

func sameContent(a, b string) bool {
	fa, err := os.Open(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if ea != nil || eb != nil {
			return (ea == io.EOF || ea == io.ErrUnexpectedEOF) && (eb == io.EOF || eb == io.ErrUnexpectedEOF)
		}
	}
}

// lookup finds p in the merged view of the lower directories: the
// topmost lower holding it, unless a whiteout or an opaque or non-directory
// ancestor above hides it.
func (b *baseView) lookup(p string) (*unix.Stat_t, string, bool) {
	for i := len(b.lowers) - 1; i >= 0; i-- {
		full := filepath.Join(b.lowers[i], p)
		var st unix.Stat_t
		err := unix.Lstat(full, &st)
		if err == nil {
			if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
				return nil, "", false // whiteout
			}
			return &st, full, true
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			return nil, "", false
		}
		if b.hides(b.lowers[i], p) {
			return nil, "", false
		}
	}
	return nil, "", false
}

// hides reports whether an ancestor of p in lower hides the layers below:
// an opaque directory, a whiteout or a non-directory.
func (b *baseView) hides(lower, p string) bool {
	for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
		full := filepath.Join(lower, d)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return true
		}
		if v, _ := getXattr(full, b.opaque); string(v) == "y" {
			return true
		}
	}
	return false
}

// copyRegular copies the regular file src to the new file dst with its
// content, owner, mode, xattrs and times.
func copyRegular(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(in.Fd()), &st); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	fd := int(out.Fd())
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EPERM) {
		return err
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777); err != nil {
		return err
	}
	names, err := listXattrs(src)
	if err != nil {
		return err
	}
	for _, n := range names {
		v, err := getXattr(src, n)
		if err == nil {
			err = unix.Fsetxattr(fd, n, v, 0)
		}
		if err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("xattr %s: %w", n, err)
		}
	}
	return futimesTS(fd, []unix.Timespec{st.Atim, st.Mtim})
}
