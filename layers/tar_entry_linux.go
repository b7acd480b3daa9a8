//go:build linux

package layers

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const paxXattr = "SCHILY.xattr."

// writeEntry writes the entry for rel and returns its lstat result, or nil
// for files that have no entry (sockets). Ancestors are not checked.
func (t *TarWriter) writeEntry(ctx context.Context, rel string) (*unix.Stat_t, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	full := t.hostPath(rel)
	st := new(unix.Stat_t)
	if err := unix.Lstat(full, st); err != nil {
		return nil, fmt.Errorf("tar entry: %w", &os.PathError{Op: "lstat", Path: full, Err: err})
	}
	hdr, err := t.header(rel, full, st)
	if err != nil || hdr == nil {
		return nil, err
	}
	opaque := false
	if hdr.Typeflag == tar.TypeDir && t.opts.Overlay {
		opaque = hdr.PAXRecords[paxXattr+t.prefix+"opaque"] == "y"
	}
	// overlayfs links its whiteouts to one shared inode: never hard links.
	whiteout := t.opts.Overlay && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
	if hdr.Typeflag != tar.TypeDir && !whiteout && st.Nlink > 1 {
		id := fileID{dev: st.Dev, ino: st.Ino}
		if first, ok := t.links[id]; ok {
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			hdr.Size = 0
			hdr.PAXRecords = nil
		} else {
			t.links[id] = hdr.Name
		}
	}
	if t.opts.Overlay {
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, paxXattr+t.prefix) {
				delete(hdr.PAXRecords, k)
			}
		}
	}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("writing tar header %s: %w", hdr.Name, err)
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		if err := t.copyContent(full, st, hdr.Size); err != nil {
			return nil, fmt.Errorf("tar entry %s: %w", rel, err)
		}
	}
	if opaque {
		if err := t.WriteOpaque(rel); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// header builds the tar header for rel; nil means no entry.
func (t *TarWriter) header(rel, full string, st *unix.Stat_t) (*tar.Header, error) {
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: t.clamp(time.Unix(st.Mtim.Sec, 0)),
		Format:  tar.FormatPAX,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
	case unix.S_IFLNK:
		target, err := os.Readlink(full)
		if err != nil {
			return nil, fmt.Errorf("tar entry: %w", err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	case unix.S_IFCHR:
		if t.opts.Overlay && st.Rdev == 0 {
			return t.whiteoutHeader(rel), nil
		}
		hdr.Typeflag = tar.TypeChar
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case unix.S_IFBLK:
		hdr.Typeflag = tar.TypeBlock
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default: // sockets and anything unknown have no place in an image
		return nil, nil
	}
	xattrs, err := readXattrs(full)
	if err != nil {
		return nil, fmt.Errorf("tar entry %s: %w", rel, err)
	}
	if len(xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(xattrs))
		for k, v := range xattrs {
			hdr.PAXRecords[paxXattr+k] = v
		}
	}
	return hdr, nil
}

func (t *TarWriter) whiteoutHeader(rel string) *tar.Header {
	return &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     path.Join(path.Dir(rel), WhiteoutPrefix+path.Base(rel)),
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}
}

func (t *TarWriter) clamp(mt time.Time) time.Time {
	if e := t.opts.SourceDateEpoch; e != nil && mt.After(*e) {
		return e.Truncate(time.Second)
	}
	return mt
}

// copyContent copies exactly size bytes of the regular file at full, which
// must still be the inode st describes.
func (t *TarWriter) copyContent(full string, st *unix.Stat_t, size int64) error {
	f, err := os.OpenFile(full, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if fst.Dev != st.Dev || fst.Ino != st.Ino {
		return errors.New("file replaced while archiving")
	}
	if t.buf == nil {
		t.buf = make([]byte, 1<<20)
	}
	n, err := io.CopyBuffer(t.tw, io.LimitReader(onlyReader{f}, size), t.buf)
	if err != nil {
		return fmt.Errorf("copying content: %w", err)
	}
	if n != size {
		return fmt.Errorf("file shrank while archiving (%d of %d bytes)", n, size)
	}
	return nil
}

// onlyReader hides io.WriterTo so that CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }

// skipXattr reports whether xattr name stays out of layers: SELinux labels
// belong to the build host, system.* holds ACLs and filesystem internals.
func skipXattr(name string) bool {
	return name == "security.selinux" || strings.HasPrefix(name, "system.")
}

// readXattrs returns the extended attributes of the file at p (not
// following symlinks), except those skipXattr excludes.
func readXattrs(p string) (map[string]string, error) {
	names, err := listXattrs(p)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	sort.Strings(names)
	out := make(map[string]string, len(names))
	for _, name := range names {
		if skipXattr(name) {
			continue
		}
		v, err := getXattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("reading xattr %s: %w", name, err)
		}
		out[name] = string(v)
	}
	return out, nil
}

func listXattrs(p string) ([]string, error) {
	for {
		n, err := unix.Llistxattr(p, nil)
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing xattrs: %w", err)
		}
		if n == 0 {
			return nil, nil
		}
		buf := make([]byte, n)
		n, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // grew meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("listing xattrs: %w", err)
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

func getXattr(p, name string) ([]byte, error) {
	for {
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		n, err = unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
