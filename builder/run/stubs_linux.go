package run

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// mountTarget is one mount point of the sandbox inside the root filesystem.
type mountTarget struct {
	Path string // as the step sees it, e.g. "/etc/hosts"
	Rel  string // resolved inside the root, symlinks included: "etc/hosts"
	Dir  bool
}

// stubs records the files and directories the sandbox created in the root
// filesystem as mount points, so that they can be removed after the run.
type stubs struct {
	created []stubEntry // in creation order
	parents []parentTimes
}

type stubEntry struct {
	rel string
	dir bool
}

// parentTimes are the timestamps of a directory the sandbox created a stub
// in, restored after the stub is removed (BuildKit #3148).
type parentTimes struct {
	rel  string
	atim unix.Timespec
	mtim unix.Timespec
}

// prepareTargets resolves the targets inside root (opened O_PATH at
// rootPath) and creates the missing ones and their missing parents.
func prepareTargets(root *os.File, rootPath string, targets []mountTarget) ([]mountTarget, *stubs, error) {
	s := &stubs{}
	out := make([]mountTarget, 0, len(targets))
	for _, t := range targets {
		full, err := securejoin.SecureJoin(rootPath, t.Path)
		if err != nil {
			return nil, s, fmt.Errorf("mount target %s: %w", t.Path, err)
		}
		rel, err := filepath.Rel(rootPath, full)
		if err != nil || rel == "." || strings.HasPrefix(rel, "../") {
			return nil, s, fmt.Errorf("mount target %s resolves to the root directory", t.Path)
		}
		for _, prev := range out {
			if prev.Dir && (rel == prev.Rel || strings.HasPrefix(rel, prev.Rel+"/")) {
				return nil, s, fmt.Errorf("mount target %s resolves to /%s, inside the mount at %s", t.Path, rel, prev.Path)
			}
		}
		if err := s.create(int(root.Fd()), rel, t.Dir); err != nil {
			return nil, s, fmt.Errorf("mount target %s (/%s): %w", t.Path, rel, err)
		}
		out = append(out, mountTarget{Path: t.Path, Rel: rel, Dir: t.Dir})
	}
	return out, s, nil
}

// create walks rel below rootfd without following symlinks and creates the
// missing components: directories, and an empty file as the last one
// unless dir.
func (s *stubs) create(rootfd int, rel string, dir bool) error {
	parts := strings.Split(rel, "/")
	cur, err := unix.Openat(rootfd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer func() { unix.Close(cur) }()
	for i, name := range parts {
		last := i == len(parts)-1
		var st unix.Stat_t
		err := unix.Fstatat(cur, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			if err := s.noteParent(cur, strings.Join(parts[:i], "/")); err != nil {
				return err
			}
			if err := createStub(cur, name, dir || !last); err != nil {
				return err
			}
			s.created = append(s.created, stubEntry{rel: strings.Join(parts[:i+1], "/"), dir: dir || !last})
			err = unix.Fstatat(cur, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			return err
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			return fmt.Errorf("%s is a symlink", strings.Join(parts[:i+1], "/"))
		case (!last || dir) && !isDir:
			return fmt.Errorf("/%s is not a directory", strings.Join(parts[:i+1], "/"))
		case last && !dir && isDir:
			return fmt.Errorf("/%s is a directory", rel)
		case last:
			return nil
		}
		next, err := unix.Openat(cur, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		unix.Close(cur)
		cur = next
	}
	return nil
}

func createStub(dirfd int, name string, dir bool) error {
	if dir {
		if err := unix.Mkdirat(dirfd, name, 0o755); err != nil {
			return err
		}
		return unix.Fchmodat(dirfd, name, 0o755, 0) // not subject to the umask
	}
	fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// noteParent records the timestamps of the directory dirfd (rel) before
// the first stub is created in it.
func (s *stubs) noteParent(dirfd int, rel string) error {
	if rel == "" {
		rel = "."
	}
	for _, p := range s.parents {
		if p.rel == rel {
			return nil
		}
	}
	for _, c := range s.created {
		if c.rel == rel {
			return nil // a stub itself: removed, its times do not matter
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(dirfd, &st); err != nil {
		return err
	}
	s.parents = append(s.parents, parentTimes{rel: rel, atim: st.Atim, mtim: st.Mtim})
	return nil
}

// cleanup removes the stubs that are still what the sandbox created (empty
// directories, empty regular files), newest first, never following a
// symlink, and restores the timestamps of their parents. Stubs that a step
// replaced, filled or moved stay. It returns the relative paths of the
// stubs it removed.
func (s *stubs) cleanup(root *os.File) ([]string, error) {
	var removed []string
	var errs []error
	for i := len(s.created) - 1; i >= 0; i-- {
		ok, err := removeStub(int(root.Fd()), s.created[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("removing mount stub /%s: %w", s.created[i].rel, err))
		}
		if ok {
			removed = append(removed, s.created[i].rel)
		}
	}
	for i := len(s.parents) - 1; i >= 0; i-- {
		p := s.parents[i]
		fd, err := openBeneath(int(root.Fd()), p.rel, true)
		if err != nil {
			continue // gone or replaced by a symlink: nothing to restore
		}
		ts := []unix.Timespec{p.atim, p.mtim}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, procFdPath(fd), ts, 0); err != nil {
			errs = append(errs, fmt.Errorf("restoring times of /%s: %w", p.rel, err))
		}
		unix.Close(fd)
	}
	return removed, errors.Join(errs...)
}

func removeStub(rootfd int, st stubEntry) (bool, error) {
	parent, name := filepath.Split(st.rel)
	pfd, err := openBeneath(rootfd, strings.TrimSuffix(parent, "/"), true)
	if err != nil {
		return false, nil // a parent is gone or is now a symlink: leave it
	}
	defer unix.Close(pfd)
	var fi unix.Stat_t
	if err := unix.Fstatat(pfd, name, &fi, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false, nil
	}
	switch {
	case st.dir && fi.Mode&unix.S_IFMT == unix.S_IFDIR:
		err := unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR)
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return false, nil // the step put files in it: they belong to the layer
		}
		return err == nil, err
	case !st.dir && fi.Mode&unix.S_IFMT == unix.S_IFREG && fi.Size == 0:
		err := unix.Unlinkat(pfd, name, 0)
		return err == nil, err
	}
	return false, nil
}

// openBeneath opens rel ("" or "." is dirfd itself) below dirfd one
// component at a time without following any symlink, as an O_PATH fd.
func openBeneath(dirfd int, rel string, dir bool) (int, error) {
	cur, err := unix.Openat(dirfd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if rel == "" || rel == "." {
		return cur, nil
	}
	parts := strings.Split(rel, "/")
	for i, name := range parts {
		if name == "" || name == "." || name == ".." {
			unix.Close(cur)
			return -1, fmt.Errorf("bad path component %q in %s", name, rel)
		}
		flags := unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if dir || i < len(parts)-1 {
			flags |= unix.O_DIRECTORY
		}
		next, err := unix.Openat(cur, name, flags, 0)
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = next
	}
	var st unix.Stat_t
	if err := unix.Fstat(cur, &st); err != nil || st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(cur)
		return -1, fmt.Errorf("%s is a symlink", rel)
	}
	return cur, nil
}

func procFdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }
