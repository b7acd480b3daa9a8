package layers

import (
	"archive/tar"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const paxXattrPrefix = "SCHILY.xattr."

// modeBits are the permission bits of hdr, with setuid, setgid and sticky.
func modeBits(hdr *tar.Header) uint32 { return uint32(hdr.Mode) & 0o7777 }

// times returns the access and modification times of hdr; a missing access
// time is the modification time.
func times(hdr *tar.Header) (atime, mtime unix.Timespec) {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	return timespec(at), timespec(hdr.ModTime)
}

func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// futimes sets the times of hdr on an open file or directory.
func futimes(fd int, hdr *tar.Header) error {
	atime, mtime := times(hdr)
	return futimesTS(fd, []unix.Timespec{atime, mtime})
}

// fdMetadata sets the owner then the xattrs of an open file or directory.
func (a *applier) fdMetadata(fd int, hdr *tar.Header) error {
	if !a.opts.NoChown {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown %d:%d: %w", hdr.Uid, hdr.Gid, err)
		}
	}
	return a.xattrs(hdr, func(name string, value []byte) error {
		return unix.Fsetxattr(fd, name, value, 0)
	})
}

// atMetadata sets owner, xattrs, mode (when chmod) and times of base in p
// without following it; it serves symlinks, FIFOs and device nodes, which
// cannot be opened safely.
func (a *applier) atMetadata(p *dirHandle, base string, hdr *tar.Header, chmod bool) error {
	if !a.opts.NoChown {
		if err := unix.Fchownat(p.fd(), base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("lchown %d:%d: %w", hdr.Uid, hdr.Gid, err)
		}
	}
	// lsetxattr does not follow base; /proc/self/fd/N is the parent we hold.
	procPath := "/proc/self/fd/" + strconv.Itoa(p.fd()) + "/" + base
	err := a.xattrs(hdr, func(name string, value []byte) error {
		return unix.Lsetxattr(procPath, name, value, 0)
	})
	if err != nil {
		return err
	}
	if chmod { // never a symlink here: the entry was just created by mknod
		if err := unix.Fchmodat(p.fd(), base, modeBits(hdr), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	atime, mtime := times(hdr)
	err = unix.UtimesNanoAt(p.fd(), base, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// xattrs sets the SCHILY.xattr.* records of hdr with set, in name order.
func (a *applier) xattrs(hdr *tar.Header, set func(name string, value []byte) error) error {
	var names []string
	for k := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, paxXattrPrefix); ok && name != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		err := set(name, []byte(hdr.PAXRecords[paxXattrPrefix+name]))
		if err != nil && !a.ignoreXattrErr(name, err) {
			return fmt.Errorf("setting xattr %s: %w", name, err)
		}
	}
	return nil
}

// ignoreXattrErr reports whether a failure to set xattr name is expected of
// an unprivileged extraction: trusted.*, security.* and the like need
// privileges or filesystem support an unprivileged builder may lack. user.*
// failures always count.
func (a *applier) ignoreXattrErr(name string, err error) bool {
	unprivileged := !a.privileged || a.opts.NoChown
	if !unprivileged || strings.HasPrefix(name, "user.") {
		return false
	}
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOTSUP)
}

// dirMetadata applies the deferred mode and times of a directory, provided
// the path still names the directory this layer created or updated (a later
// entry may have replaced it).
func (a *applier) dirMetadata(d dirMeta) error {
	ts := []unix.Timespec{d.atime, d.mtime}
	if d.path == "" {
		fd := a.rootDir.fd()
		if err := unix.Fchmod(fd, d.mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
		return futimesTS(fd, ts)
	}
	dir, base := splitPath(d.path)
	p, err := a.lookup(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return nil
	}
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(p.fd(), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || uint64(st.Dev) != d.dev || st.Ino != d.ino {
		return nil
	}
	// Not a symlink (checked just above), so fchmodat cannot be redirected.
	if err := unix.Fchmodat(p.fd(), base, d.mode, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if err := unix.UtimesNanoAt(p.fd(), base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

func futimesTS(fd int, ts []unix.Timespec) error {
	err := unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EINVAL) {
		err = unix.UtimesNanoAt(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), ts, 0)
	}
	if err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}
