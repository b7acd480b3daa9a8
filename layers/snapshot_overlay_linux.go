//go:build linux

package layers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// overlaySnapshotter mounts overlayfs: the parent's layers, each extracted
// once into the store's layer cache, as lowerdirs; a fresh upperdir per
// Mount. Commit writes the upperdir (O(changed files)) and then adopts it
// as the extracted tree of the new layer.
//
// Mount options: index=off (no inode index: lowers are shared by many
// mounts), redirect_dir=off and metacopy=off (the upperdir holds whole
// files and renamed directories are copied, so that it is a complete layer
// on its own; with userxattr in a user namespace, which implies no
// redirects and no metacopy). Lower directories are passed
// as file descriptor numbers resolved relative to /proc/self/fd by a thread
// with its own working directory (as containerd passes relative paths), so
// the one-page limit of mount options fits about 800 layers; the kernel
// takes at most 500 and MaxLowers caps the stack further by merging the
// bottom layers.
type overlaySnapshotter struct {
	store     *Store
	cache     *layerCache
	opts      SnapshotOptions
	userxattr bool
}

func newOverlaySnapshotter(ctx context.Context, store *Store, opts SnapshotOptions) (Snapshotter, error) {
	o := &overlaySnapshotter{store: store, opts: opts, userxattr: inUserNamespace()}
	suffix := ""
	if o.userxattr {
		suffix = "-u"
	}
	o.cache = &layerCache{
		s:      store,
		suffix: suffix,
		apply:  ApplyOptions{NoChown: opts.NoChown},
		convert: func(ctx context.Context, root string) error {
			return convertWhiteouts(ctx, root, o.xattrPrefix()+"opaque")
		},
	}
	if err := o.probe(ctx); err != nil {
		return nil, fmt.Errorf("overlay snapshotter: %w", err)
	}
	return o, nil
}

func (o *overlaySnapshotter) Kind() string { return SnapshotterOverlay }

func (o *overlaySnapshotter) Close() error { return nil }

func (o *overlaySnapshotter) xattrPrefix() string {
	if o.userxattr {
		return "user.overlay."
	}
	return DefaultOverlayXattrPrefix
}

// probe mounts a small overlay in the store and checks that deleting a
// lower file leaves a whiteout and that a directory recreated over a lower
// one is marked opaque.
func (o *overlaySnapshotter) probe(ctx context.Context) error {
	sd, err := o.store.newScratch(ctx)
	if err != nil {
		return err
	}
	defer sd.remove()
	p := func(name string) string { return filepath.Join(sd.path, name) }
	for _, d := range []string{"lower/d", "upper", "work", "merged"} {
		if err := os.MkdirAll(p(d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(p("lower/f"), nil, 0o644); err != nil {
		return err
	}
	if err := mountOverlay([]string{p("lower")}, p("upper"), p("work"), p("merged"), o.userxattr); err != nil {
		return err
	}
	defer unmount(p("merged"))
	if err := os.Remove(p("merged/f")); err != nil {
		return err
	}
	if err := os.Remove(p("merged/d")); err != nil {
		return err
	}
	if err := os.Mkdir(p("merged/d"), 0o755); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(p("upper/f"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		return fmt.Errorf("deleting a lower file left no whiteout in the upperdir (%v)", err)
	}
	v, err := getXattr(p("upper/d"), o.xattrPrefix()+"opaque")
	if err != nil || string(v) != "y" {
		return fmt.Errorf("a recreated directory is not marked opaque (%v)", err)
	}
	return unmount(p("merged"))
}

func (o *overlaySnapshotter) Prepare(ctx context.Context, parent []v1.Layer) (*Mount, error) {
	parent, err := nonEmpty(parent)
	if err != nil {
		return nil, fmt.Errorf("preparing overlay: %w", err)
	}
	ids, err := diffIDsOf(parent)
	if err != nil {
		return nil, fmt.Errorf("preparing overlay: %w", err)
	}
	lease, err := o.store.Lease(ctx)
	if err != nil {
		return nil, fmt.Errorf("preparing overlay: %w", err)
	}
	m := &Mount{diffIDs: ids, lease: lease}
	if err := o.prepare(ctx, m, parent); err != nil {
		m.release()
		return nil, fmt.Errorf("preparing overlay: %w", err)
	}
	return m, nil
}

func (o *overlaySnapshotter) prepare(ctx context.Context, m *Mount, parent []v1.Layer) error {
	lowers, err := o.lowers(ctx, parent, m.diffIDs)
	if err != nil {
		return err
	}
	if m.scratch, err = o.store.newScratch(ctx); err != nil {
		return err
	}
	m.upper = filepath.Join(m.scratch.path, "upper")
	m.work = filepath.Join(m.scratch.path, "work")
	m.Dir = filepath.Join(m.scratch.path, "merged")
	for _, d := range []string{m.upper, m.work, m.Dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if len(lowers) == 0 { // FROM scratch: overlay wants a lowerdir
		empty := filepath.Join(m.scratch.path, "empty")
		if err := os.Mkdir(empty, 0o755); err != nil {
			return err
		}
		lowers = []string{empty}
	}
	if err := copyRootMeta(lowers[len(lowers)-1], m.upper); err != nil {
		return err
	}
	if err := mountOverlay(lowers, m.upper, m.work, m.Dir, o.userxattr); err != nil {
		return err
	}
	m.lowers = lowers
	m.mounted = true
	return nil
}

// lowers returns the extracted trees of parent, lowest first. A layer
// found again higher in the stack is mounted at its topmost place only
// (overlayfs refuses a directory twice; applying the same tar again above
// gives the same result whatever it did below). When more than MaxLowers
// layers remain, the bottom ones are merged into one tree.
func (o *overlaySnapshotter) lowers(ctx context.Context, parent []v1.Layer, ids []v1.Hash) ([]string, error) {
	var keep []int // indices of the layers mounted on their own, lowest first
	seen := map[v1.Hash]bool{}
	for i := len(ids) - 1; i >= 0; i-- {
		if !seen[ids[i]] {
			seen[ids[i]] = true
			keep = append([]int{i}, keep...)
		}
	}
	var out []string
	if len(keep) > o.opts.MaxLowers {
		keep = keep[len(keep)-o.opts.MaxLowers+1:]
		dir, err := o.cache.chain(ctx, parent[:keep[0]], ids[:keep[0]])
		if err != nil {
			return nil, err
		}
		out = append(out, dir)
	}
	for _, i := range keep {
		dir, err := o.cache.layer(ctx, parent[i], ids[i])
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		out = append(out, dir)
	}
	return out, nil
}

// copyRootMeta gives the upperdir (the root of the merged view) the mode
// and owner of the top lower's root.
func copyRootMeta(from, to string) error {
	var st unix.Stat_t
	if err := unix.Stat(from, &st); err != nil {
		return err
	}
	if err := os.Lchown(to, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EPERM) {
		return err
	}
	return unix.Chmod(to, st.Mode&0o7777)
}

func (o *overlaySnapshotter) Commit(ctx context.Context, m *Mount, opts CommitOptions) (v1.Layer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.startCommit(); err != nil {
		return nil, err
	}
	if m.mounted { // nothing may write the upperdir any more
		if err := unmount(m.Dir); err != nil {
			return nil, fmt.Errorf("commit: %w", err)
		}
		m.mounted = false
	}
	prefix := o.xattrPrefix()
	if err := pruneUpper(ctx, m.upper, m.lowers, prefix); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if names, err := readDirNames(unix.AT_FDCWD, m.upper); err != nil || len(names) == 0 {
		return nil, err
	}
	l, err := o.store.WriteLayer(ctx, func(w io.Writer) error {
		return WriteTar(ctx, w, m.upper, TarOptions{
			Overlay:            true,
			OverlayXattrPrefix: prefix,
			SourceDateEpoch:    opts.SourceDateEpoch,
		})
	}, opts.Layer)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if empty, err := isEmptyTar(l); err != nil || empty {
		return nil, err
	}
	diffID, err := l.DiffID()
	if err != nil {
		return nil, err
	}
	if err := settleTree(ctx, m.upper, prefix, opts.SourceDateEpoch); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if err := o.cache.adopt(ctx, diffID.Hex+o.cache.suffix, m.upper); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return l, nil
}

func (o *overlaySnapshotter) Release(ctx context.Context, m *Mount) error {
	return m.release()
}

// mountOverlay mounts an overlay of lowers (lowest first), upper and work on
// target. Every directory is passed as the number of an O_PATH descriptor,
// resolved relative to /proc/self/fd.
func mountOverlay(lowers []string, upper, work, target string, userxattr bool) error {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	open := func(p string) (string, error) {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", &os.PathError{Op: "open", Path: p, Err: err}
		}
		fds = append(fds, fd)
		return strconv.Itoa(fd), nil
	}
	var b strings.Builder
	b.WriteString("lowerdir=")
	for i := len(lowers) - 1; i >= 0; i-- {
		fd, err := open(lowers[i])
		if err != nil {
			return err
		}
		if i < len(lowers)-1 {
			b.WriteByte(':')
		}
		b.WriteString(fd)
	}
	uf, err := open(upper)
	if err != nil {
		return err
	}
	wf, err := open(work)
	if err != nil {
		return err
	}
	fmt.Fprintf(&b, ",upperdir=%s,workdir=%s,index=off", uf, wf)
	if userxattr {
		// userxattr implies redirect_dir=nofollow (no redirects) and
		// metacopy=off, and refuses other values.
		b.WriteString(",userxattr")
	} else {
		b.WriteString(",redirect_dir=off,metacopy=off")
	}
	if b.Len() >= os.Getpagesize() {
		return fmt.Errorf("mounting overlay: options of %d layers exceed a page", len(lowers))
	}
	if err := mountIn("/proc/self/fd", target, b.String()); err != nil {
		return fmt.Errorf("mounting overlay of %d layers on %s: %w", len(lowers), target, err)
	}
	return nil
}

// mountIn mounts an overlay with options data on target from a thread whose
// working directory is dir. The thread unshares its filesystem attributes
// first, so that its chdir is its own; it is never unlocked, so the Go
// runtime ends it instead of reusing it.
func mountIn(dir, target, data string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- fmt.Errorf("chdir %s: %w", dir, err)
			return
		}
		errc <- unix.Mount("overlay", target, "overlay", 0, data)
	}()
	return <-errc
}

// inUserNamespace reports whether the process runs in a user namespace
// other than the initial one.
func inUserNamespace() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
}
