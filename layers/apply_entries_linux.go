package layers

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// prepare clears the way for a new entry base in p without following it. An
// existing directory is kept when the new entry is a directory too (it then
// reports true); anything else is removed, directories recursively.
func (a *applier) prepare(p *dirHandle, base string, dir bool) (bool, error) {
	var st unix.Stat_t
	err := unix.Fstatat(p.fd(), base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat existing entry: %w", err)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if isDir && dir {
		return true, nil
	}
	a.invalidate()
	if isDir {
		err = removeAllAt(p.fd(), base)
	} else {
		err = unix.Unlinkat(p.fd(), base, 0)
	}
	if err != nil {
		return false, fmt.Errorf("replacing existing entry: %w", err)
	}
	return false, nil
}

// regular writes a regular file: created exclusively (never through an
// existing symlink), data streamed, then owner, xattrs, mode and times.
func (a *applier) regular(ctx context.Context, p *dirHandle, base string, hdr *tar.Header, r io.Reader) error {
	if _, err := a.prepare(p, base, false); err != nil {
		return err
	}
	fd, err := unix.Openat(p.fd(), base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating file: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	a.markWritten(p, base)
	err = a.writeFile(ctx, f, hdr, r)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing file: %w", cerr)
	}
	return err
}

func (a *applier) writeFile(ctx context.Context, f *os.File, hdr *tar.Header, r io.Reader) error {
	if _, err := io.Copy(f, ctxReader{ctx: ctx, r: r}); err != nil {
		return fmt.Errorf("writing file data: %w", err)
	}
	fd := int(f.Fd())
	if err := a.fdMetadata(fd, hdr); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, modeBits(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return futimes(fd, hdr)
}

// directory creates base in p or keeps the existing directory, sets its owner
// and xattrs now and defers its mode and times to finish. New directories are
// created 0700 so that an unprivileged extractor can fill them whatever their
// final mode.
func (a *applier) directory(p *dirHandle, base string, hdr *tar.Header) error {
	exists, err := a.prepare(p, base, true)
	if err != nil {
		return err
	}
	if !exists {
		if err := unix.Mkdirat(p.fd(), base, 0o700); err != nil {
			return fmt.Errorf("creating directory: %w", err)
		}
	}
	a.markWritten(p, base)
	fd, err := unix.Openat(p.fd(), base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening directory: %w", err)
	}
	defer unix.Close(fd)
	return a.dirEntryMetadata(fd, joinPath(p.path, base), hdr)
}

// rootEntry applies a directory entry naming root itself ("./").
func (a *applier) rootEntry(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("%w: non-directory entry for the root", errInvalidEntry)
	}
	return a.dirEntryMetadata(a.rootDir.fd(), "", hdr)
}

func (a *applier) dirEntryMetadata(fd int, path string, hdr *tar.Header) error {
	if err := a.fdMetadata(fd, hdr); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat directory: %w", err)
	}
	atime, mtime := times(hdr)
	m := dirMeta{
		path: path, dev: uint64(st.Dev), ino: st.Ino,
		mode: modeBits(hdr), atime: atime, mtime: mtime,
	}
	id := [2]uint64{m.dev, m.ino}
	if i, ok := a.dirIndex[id]; ok { // listed again: the last entry wins
		a.dirs[i] = m
		return nil
	}
	a.dirIndex[id] = len(a.dirs)
	a.dirs = append(a.dirs, m)
	return nil
}

// symlink creates a symlink; its target is stored verbatim and only ever
// interpreted inside root by later entries.
func (a *applier) symlink(p *dirHandle, base string, hdr *tar.Header) error {
	if len(hdr.Linkname) > maxPathLen {
		return fmt.Errorf("%w: symlink target longer than %d bytes", errInvalidEntry, maxPathLen)
	}
	if _, err := a.prepare(p, base, false); err != nil {
		return err
	}
	if err := unix.Symlinkat(hdr.Linkname, p.fd(), base); err != nil {
		return fmt.Errorf("creating symlink: %w", err)
	}
	a.markWritten(p, base)
	return a.atMetadata(p, base, hdr, false)
}

// hardlink links base in p to the entry named by hdr.Linkname, resolved like
// an entry name (chroot semantics, symlinked parents resolved inside root).
// The target itself is not followed: a hardlink to a symlink links the
// symlink. Hardlinks get no metadata of their own.
func (a *applier) hardlink(p *dirHandle, base string, hdr *tar.Header) error {
	target, err := cleanPath(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hardlink target: %w", err)
	}
	tdir, tbase := splitPath(target)
	if tbase == "" {
		return fmt.Errorf("%w: hardlink to the root", errInvalidEntry)
	}
	td := &a.rootDir
	if tdir != "" {
		f, err := a.openDir(tdir, false)
		if err != nil {
			return fmt.Errorf("hardlink target %q: %w", truncName(hdr.Linkname), err)
		}
		defer f.Close()
		td = &dirHandle{f: f, path: tdir}
	}
	if same, err := sameEntry(td.fd(), tbase, p.fd(), base); err != nil || same {
		return err
	}
	if _, err := a.prepare(p, base, false); err != nil {
		return err
	}
	if err := unix.Linkat(td.fd(), tbase, p.fd(), base, 0); err != nil {
		return fmt.Errorf("hardlink to %q: %w", truncName(hdr.Linkname), err)
	}
	a.markWritten(p, base)
	return nil
}

// sameEntry reports whether two entries exist and are the same inode, in which
// case a hardlink between them is already in place.
func sameEntry(dfd1 int, name1 string, dfd2 int, name2 string) (bool, error) {
	var st1, st2 unix.Stat_t
	if err := unix.Fstatat(dfd1, name1, &st1, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false, fmt.Errorf("hardlink target: %w", err)
	}
	if err := unix.Fstatat(dfd2, name2, &st2, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false, nil
	}
	return st1.Dev == st2.Dev && st1.Ino == st2.Ino, nil
}

// special creates FIFOs, and device nodes when privileged.
func (a *applier) special(p *dirHandle, base string, hdr *tar.Header) error {
	mode := uint32(unix.S_IFIFO)
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode = unix.S_IFCHR
	case tar.TypeBlock:
		mode = unix.S_IFBLK
	}
	device := mode != unix.S_IFIFO
	if device && !a.privileged {
		return nil
	}
	if _, err := a.prepare(p, base, false); err != nil {
		return err
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	err := unix.Mknodat(p.fd(), base, mode|0o600, int(dev))
	if device && errors.Is(err, unix.EPERM) {
		return nil // root without CAP_MKNOD (user namespace): skip, as rootless builders do
	}
	if err != nil {
		return fmt.Errorf("mknod: %w", err)
	}
	a.markWritten(p, base)
	return a.atMetadata(p, base, hdr, true)
}

func joinPath(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// ctxReader stops a long copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
