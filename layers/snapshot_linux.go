//go:build linux

package layers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// unmount unmounts target, retrying while it is busy and detaching it
// (MNT_DETACH) as a last resort. A target that is not mounted is fine.
func unmount(target string) error {
	for i := 0; ; i++ {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && i < 20:
			time.Sleep(5 * time.Millisecond)
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmounting %s: %w", target, err)
			}
			return nil
		default:
			return fmt.Errorf("unmounting %s: %w", target, err)
		}
	}
}

// unmountBelow unmounts every mount at or below dir, deepest first.
func unmountBelow(dir string) error {
	points, err := mountPoints()
	if err != nil {
		return err
	}
	var below []string
	for _, p := range points {
		if p == dir || strings.HasPrefix(p, dir+"/") {
			below = append(below, p)
		}
	}
	sort.Slice(below, func(i, j int) bool { return len(below[i]) > len(below[j]) })
	for _, p := range below {
		if err := unmount(p); err != nil {
			return err
		}
	}
	return nil
}

// mountPoints lists the mount points of the process's mount namespace.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescapeMountinfo(fields[4]))
		}
	}
	return out, sc.Err()
}

// unescapeMountinfo decodes the octal escapes (\040 for a space) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// syncTree flushes the filesystem holding tree (syncfs), so that a tree
// renamed into the layer cache survives a crash complete.
func syncTree(tree string) error {
	fd, err := unix.Open(tree, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", tree, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncing %s: %w", tree, err)
	}
	return nil
}

// convertWhiteouts turns the OCI whiteout files of a layer extracted with
// ApplyOptions.NoWhiteouts into overlayfs whiteouts: ".wh.NAME" becomes a
// 0/0 character device NAME, ".wh..wh..opq" the opaqueXattr="y" attribute
// of its directory, other ".wh..wh." entries (AUFS metadata) go. When the
// layer also writes NAME itself, a directory NAME becomes opaque (Apply
// would prune the lower one's content) and anything else stays as is.
// Nothing is followed; directories keep the times Apply gave them.
func convertWhiteouts(ctx context.Context, root, opaqueXattr string) error {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("converting whiteouts: %w", err)
	}
	defer unix.Close(fd)
	return convertDir(ctx, fd, "", opaqueXattr)
}

func convertDir(ctx context.Context, dfd int, rel, opaqueXattr string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(dfd, &st); err != nil {
		return fmt.Errorf("converting whiteouts in /%s: %w", rel, err)
	}
	names, err := readDirNames(dfd, ".")
	if err != nil {
		return fmt.Errorf("converting whiteouts in /%s: %w", rel, err)
	}
	present := make(map[string]bool, len(names))
	for _, n := range names {
		present[n] = true
	}
	changed := false
	for _, n := range names {
		if !strings.HasPrefix(n, whPrefix) {
			continue
		}
		changed = true
		err := removeAllAt(dfd, n)
		if err == nil {
			err = whiteoutAt(dfd, n, present, opaqueXattr)
		}
		if err != nil {
			return fmt.Errorf("converting whiteout /%s: %w", path.Join(rel, n), err)
		}
	}
	for _, n := range names {
		if strings.HasPrefix(n, whPrefix) {
			continue
		}
		cfd, err := unix.Openat(dfd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			continue
		}
		if err != nil {
			return fmt.Errorf("converting whiteouts in /%s: %w", path.Join(rel, n), err)
		}
		err = convertDir(ctx, cfd, path.Join(rel, n), opaqueXattr)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	if changed {
		return unix.UtimesNanoAt(dfd, ".", []unix.Timespec{st.Atim, st.Mtim}, 0)
	}
	return nil
}

// whiteoutAt writes the overlay form of the OCI whiteout n in dfd.
func whiteoutAt(dfd int, n string, present map[string]bool, opaqueXattr string) error {
	switch {
	case n == whOpaque:
		return unix.Fsetxattr(dfd, opaqueXattr, []byte("y"), 0)
	case strings.HasPrefix(n, whMetaPrefix):
		return nil
	}
	target := strings.TrimPrefix(n, whPrefix)
	if target == "" || target == "." || target == ".." {
		return fmt.Errorf("%w: whiteout of %q", errInvalidEntry, target)
	}
	if present[target] {
		cfd, err := unix.Openat(dfd, target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil // not a directory: it replaces the lower entry anyway
		}
		defer unix.Close(cfd)
		return unix.Fsetxattr(cfd, opaqueXattr, []byte("y"), 0)
	}
	return unix.Mknodat(dfd, target, unix.S_IFCHR, 0)
}

// settleTree makes a committed upperdir what extracting its layer gives:
// sockets (not in layers) go, overlayfs's private xattrs other than
// <prefix>opaque go, and every entry gets the modification time its tar
// entry has (seconds, clamped to epoch) as access and modification time.
// Children come before their directory, whose time is read first.
func settleTree(ctx context.Context, root, prefix string, epoch *time.Time) error {
	names, err := readDirNames(unix.AT_FDCWD, root)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := settleEntry(ctx, filepath.Join(root, n), prefix, epoch); err != nil {
			return err
		}
	}
	return stripPrivateXattrs(root, prefix)
}

func settleEntry(ctx context.Context, p, prefix string, epoch *time.Time) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := ctx.Err(); err != nil {
			return err
		}
		names, err := readDirNames(unix.AT_FDCWD, p)
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := settleEntry(ctx, filepath.Join(p, n), prefix, epoch); err != nil {
				return err
			}
		}
	}
	return settleOne(p, &st, prefix, epoch)
}

// settleOne settles the entry p, whose lstat before any change is st.
func settleOne(p string, st *unix.Stat_t, prefix string, epoch *time.Time) error {
	if st.Mode&unix.S_IFMT == unix.S_IFSOCK {
		if err := unix.Unlink(p); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing socket %s: %w", p, err)
		}
		return nil
	}
	if prefix != "" {
		if err := stripPrivateXattrs(p, prefix); err != nil {
			return err
		}
	}
	t := unix.Timespec{Sec: tarSeconds(st.Mtim.Sec, epoch)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times of %s: %w", p, err)
	}
	return nil
}

// stripPrivateXattrs removes the overlayfs xattrs (prefix) of p but the
// opaque marker.
func stripPrivateXattrs(p, prefix string) error {
	names, err := listXattrs(p)
	if err != nil {
		return err
	}
	for _, n := range names {
		if strings.HasPrefix(n, prefix) && n != prefix+"opaque" {
			if err := unix.Lremovexattr(p, n); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("removing xattr %s of %s: %w", n, p, err)
			}
		}
	}
	return nil
}
