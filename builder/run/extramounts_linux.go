package run

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// extraMount is a Mount as the init receives it: its target resolved.
type extraMount struct {
	Type               string
	Path               string // Mount.Target, for messages
	Target             string // resolved, relative to Rootfs
	Dir                bool
	Source, SourceRoot string
	ReadOnly           bool
	Size               int64
	Data               []byte
	Mode               uint32
	UID, GID           int
}

// stagingName is the directory of the run directory on which the init
// mounts the tmpfs holding the file mounts' contents (in its own mount
// namespace: on the host it stays an empty directory).
const stagingName = "files"

// extraTargets are the mount points of mounts, in order: a bind mount's
// is a directory when its source is one.
func extraTargets(mounts []Mount) ([]mountTarget, error) {
	out := make([]mountTarget, 0, len(mounts))
	for _, m := range mounts {
		t := mountTarget{Path: m.Target, Dir: m.Type == MountTmpfs}
		if m.Type == MountBind {
			fd, err := openSource(m.SourceRoot, m.Source)
			if err != nil {
				return nil, fmt.Errorf("mount at %s: source %s: %w", m.Target, m.Source, err)
			}
			var st unix.Stat_t
			err = unix.Fstat(fd, &st)
			unix.Close(fd)
			if err != nil {
				return nil, fmt.Errorf("mount at %s: source %s: %w", m.Target, m.Source, err)
			}
			if st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return nil, fmt.Errorf("mount at %s: source %s is a symlink", m.Target, m.Source)
			}
			t.Dir = st.Mode&unix.S_IFMT == unix.S_IFDIR
		}
		out = append(out, t)
	}
	return out, nil
}

// extraMounts pairs mounts with their resolved targets, the last
// len(mounts) of targets, after checking that no two targets nest, and
// creates the staging directory in rd when a file mount needs it.
func extraMounts(rd *runDir, mounts []Mount, targets []mountTarget) ([]extraMount, string, error) {
	first := len(targets) - len(mounts)
	for i := first; i < len(targets); i++ {
		t := targets[i]
		for _, prev := range targets[:i] {
			if t.Rel == prev.Rel || prev.Dir && strings.HasPrefix(t.Rel, prev.Rel+"/") {
				return nil, "", fmt.Errorf("mount target %s resolves to /%s, the mount at %s", t.Path, t.Rel, prev.Path)
			}
			if t.Dir && strings.HasPrefix(prev.Rel, t.Rel+"/") {
				return nil, "", fmt.Errorf("mount target %s (/%s) would cover the mount at %s", t.Path, t.Rel, prev.Path)
			}
		}
	}
	var out []extraMount
	staging := ""
	for i, m := range mounts {
		t := targets[first+i]
		out = append(out, extraMount{Type: m.Type, Path: m.Target, Target: t.Rel, Dir: t.Dir,
			Source: m.Source, SourceRoot: m.SourceRoot, ReadOnly: m.ReadOnly, Size: m.Size,
			Data: m.Data, Mode: m.Mode, UID: m.UID, GID: m.GID})
		if m.Type == MountFile && staging == "" {
			staging = filepath.Join(rd.path, stagingName)
			if err := os.Mkdir(staging, 0o700); err != nil {
				return nil, "", fmt.Errorf("creating the file mounts' directory: %w", err)
			}
		}
	}
	return out, staging, nil
}

// openSource opens a bind mount's source as an O_PATH fd: inside root
// with chroot semantics, or a host path whose last component is not
// followed.
func openSource(root, source string) (int, error) {
	if root == "" {
		return openHost(source)
	}
	f, err := pathrs.OpenInRoot(root, source)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	return unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
}

// mountExtras mounts cfg.Mounts below root, in order. It runs in the
// init, before pivot_root.
func mountExtras(root int, cfg *initConfig) error {
	staging := -1
	defer func() {
		if staging >= 0 {
			unix.Close(staging)
		}
	}()
	for i, m := range cfg.Mounts {
		var err error
		switch m.Type {
		case MountBind:
			err = mountBind(root, m)
		case MountTmpfs:
			err = mountTmpfs(root, m)
		case MountFile:
			if staging < 0 {
				if staging, err = mountStaging(cfg.Staging); err != nil {
					return err
				}
			}
			err = mountFile(root, staging, strconv.Itoa(i), m)
		default:
			err = fmt.Errorf("unknown mount type %q", m.Type)
		}
		if err != nil {
			return fmt.Errorf("mount at %s: %w", m.Path, err)
		}
	}
	return nil
}

func mountBind(root int, m extraMount) error {
	src, err := openSource(m.SourceRoot, m.Source)
	if err != nil {
		return fmt.Errorf("source %s: %w", m.Source, err)
	}
	defer unix.Close(src)
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return fmt.Errorf("source %s: %w", m.Source, err)
	}
	if isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR; isDir != m.Dir || st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("source %s changed type", m.Source)
	}
	// Not recursive: mounts below the source stay out of the sandbox.
	fd, err := mountAt(root, m.Target, m.Dir, procFdPath(src), "", unix.MS_BIND, "")
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	flags := uintptr(unix.MS_NODEV)
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	return remount(fd, flags)
}

func mountTmpfs(root int, m extraMount) error {
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	data := ""
	if m.Size > 0 {
		data = "size=" + strconv.FormatInt(m.Size, 10)
	}
	fd, err := mountAt(root, m.Target, true, "tmpfs", "tmpfs", flags, data)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// mountStaging mounts a private tmpfs on the host directory dir and
// returns it open. pivot_root detaches it with the old root; the file
// mounts made from it keep their files.
func mountStaging(dir string) (int, error) {
	if dir == "" {
		return -1, errors.New("no directory for file mounts")
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("file mounts: %w", err)
	}
	err = unix.Mount("tmpfs", procFdPath(fd), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=700")
	unix.Close(fd)
	if err != nil {
		return -1, fmt.Errorf("mounting the file mounts' tmpfs: %w", err)
	}
	fd, err = unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("file mounts: %w", err)
	}
	return fd, nil
}

// mountFile writes m's file as name in staging and bind-mounts it,
// read-only, on its target.
func mountFile(root, staging int, name string, m extraMount) error {
	fd, err := unix.Openat(staging, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	werr := writeAll(fd, m.Data)
	if werr == nil {
		werr = unix.Fchown(fd, m.UID, m.GID)
	}
	if werr == nil {
		werr = unix.Fchmod(fd, m.Mode) // after chown, which clears setuid bits
	}
	unix.Close(fd)
	if werr != nil {
		return werr
	}
	src, err := unix.Openat(staging, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(src)
	return bindAt(root, m.Target, false, src, roFlags)
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
