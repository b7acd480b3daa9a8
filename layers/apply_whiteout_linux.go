package layers

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// whiteout applies an OCI whiteout entry base in dir.
func (a *applier) whiteout(dir, base string) error {
	if base == whOpaque {
		p, err := a.parent(dir)
		if err != nil {
			return err
		}
		if err := a.pruneChildren(p); err != nil {
			return fmt.Errorf("opaque directory: %w", err)
		}
		return nil
	}
	if strings.HasPrefix(base, whMetaPrefix) {
		return nil // AUFS metadata such as .wh..wh.plnk: nothing to apply
	}
	name := strings.TrimPrefix(base, whPrefix)
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("%w: whiteout of %q", errInvalidEntry, name)
	}
	p, err := a.lookup(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // nothing below a missing directory to remove
	}
	if err != nil {
		return err
	}
	if _, err := a.prune(p.fd(), p.key(name), false); err != nil {
		return fmt.Errorf("whiteout: %w", err)
	}
	return nil
}

// pruneChildren removes everything in p that this layer did not write
// (opaque directory).
func (a *applier) pruneChildren(p *dirHandle) error {
	names, err := readDirNames(p.fd(), ".")
	if err != nil {
		return err
	}
	for _, n := range names {
		if _, err := a.prune(p.fd(), p.key(n), true); err != nil {
			return err
		}
	}
	return nil
}

// prune removes the entry k.name of directory dfd unless this layer wrote it,
// and reports whether anything of it is kept. Below a whiteout or opaque
// marker (underOpaque) only what the layer wrote survives: directories are
// descended, pre-existing children removed, and a directory the layer did not
// write is removed too unless it holds something the layer wrote. Nothing is
// ever followed.
func (a *applier) prune(dfd int, k dirent, underOpaque bool) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, k.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	_, written := a.written[k]
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if written && (!underOpaque || !isDir) {
		return true, nil
	}
	if !isDir {
		a.invalidate()
		return false, unix.Unlinkat(dfd, k.name, 0)
	}
	kept, err := a.pruneDir(dfd, k.name)
	if err != nil || kept || written {
		return true, err
	}
	a.invalidate()
	return false, unix.Unlinkat(dfd, k.name, unix.AT_REMOVEDIR)
}

// pruneDir prunes every child of the directory name in dfd.
func (a *applier) pruneDir(dfd int, name string) (bool, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, err
	}
	names, err := readDirNames(fd, ".")
	if err != nil {
		return false, err
	}
	kept := false
	for _, n := range names {
		k, err := a.prune(fd, dirent{uint64(st.Dev), st.Ino, n}, true)
		if err != nil {
			return false, err
		}
		kept = kept || k
	}
	return kept, nil
}

// removeAllAt removes name in dfd, recursively for directories, never
// following symlinks.
func removeAllAt(dfd int, name string) error {
	err := unix.Unlinkat(dfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readDirNames(fd, ".")
	if err == nil {
		for _, n := range names {
			if err = removeAllAt(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR)
}

// readDirNames lists the directory name in dfd.
func readDirNames(dfd int, name string) ([]string, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return f.Readdirnames(-1)
}
