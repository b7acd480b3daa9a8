//go:build linux

package layers

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// copySnapshotter gives each step a private copy of its rootfs: the parent
// layers applied into a scratch directory, plus a metadata snapshot of it.
// Commit walks the tree, compares it with the snapshot and writes what
// differs:
//
//   - an entry is written when it is new, or its type, mode, owner, size,
//     inode number, device number, mtime or ctime (nanoseconds) changed;
//     ctime catches content and xattr changes that keep mtime and size;
//   - a directory whose identity changed (inode number or birth time), or
//     that replaces a non-directory, was deleted and recreated: it is
//     written with an opaque marker and its whole content, as overlayfs
//     marks a directory created over a whiteout opaque (BuildKit's
//     overlay differ gives the same layer);
//   - a deleted path gets a whiteout unless its parent was deleted or
//     recreated too;
//   - every parent directory of a written entry or whiteout is written
//     (overlayfs copies them up), in ComparePaths order as WriteTar does.
//
// The committed tree is parked, keyed by the chain ID of its layers, so
// that the next step's Prepare takes it over instead of extracting again.
type copySnapshotter struct {
	store  *Store
	opts   SnapshotOptions
	mu     sync.Mutex
	parked []*parkedTree // oldest first
}

// maxParked bounds the trees a copy snapshotter keeps between steps.
const maxParked = 4

type parkedTree struct {
	chain   v1.Hash
	scratch *scratchDir
	dir     string
	snap    []snapEntry
}

func newCopySnapshotter(store *Store, opts SnapshotOptions) (Snapshotter, error) {
	return &copySnapshotter{store: store, opts: opts}, nil
}

func (c *copySnapshotter) Kind() string { return SnapshotterCopy }

func (c *copySnapshotter) Prepare(ctx context.Context, parent []v1.Layer) (*Mount, error) {
	parent, err := nonEmpty(parent)
	if err != nil {
		return nil, fmt.Errorf("preparing copy: %w", err)
	}
	ids, err := diffIDsOf(parent)
	if err != nil {
		return nil, fmt.Errorf("preparing copy: %w", err)
	}
	lease, err := c.store.Lease(ctx)
	if err != nil {
		return nil, fmt.Errorf("preparing copy: %w", err)
	}
	m := &Mount{diffIDs: ids, lease: lease}
	if t := c.take(chainID(ids)); t != nil {
		m.scratch, m.Dir, m.snap = t.scratch, t.dir, t.snap
		return m, nil
	}
	if err := c.prepare(ctx, m, parent); err != nil {
		m.release()
		return nil, fmt.Errorf("preparing copy: %w", err)
	}
	return m, nil
}

func (c *copySnapshotter) prepare(ctx context.Context, m *Mount, parent []v1.Layer) error {
	var err error
	if m.scratch, err = c.store.newScratch(ctx); err != nil {
		return err
	}
	m.Dir = filepath.Join(m.scratch.path, "root")
	if err := os.Mkdir(m.Dir, 0o755); err != nil {
		return err
	}
	for i, l := range parent {
		if err := applyVerified(ctx, m.Dir, l, m.diffIDs[i], ApplyOptions{NoChown: c.opts.NoChown}); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	if m.snap, err = walkTree(ctx, m.Dir); err != nil {
		return err
	}
	return waitPastCtimes(ctx, m.snap)
}

func (c *copySnapshotter) Commit(ctx context.Context, m *Mount, opts CommitOptions) (v1.Layer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.startCommit(); err != nil {
		return nil, err
	}
	cur, err := walkTree(ctx, m.Dir)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	changes := diffSnapshots(m.snap, cur)
	if err := restoreDirTimes(m.Dir, m.snap, cur, changes); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if len(changes) == 0 {
		c.park(m, m.diffIDs, cur)
		return nil, nil
	}
	l, err := c.store.WriteLayer(ctx, func(w io.Writer) error {
		return writeChanges(ctx, w, m.Dir, changes, opts.SourceDateEpoch)
	}, opts.Layer)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	diffID, err := l.DiffID()
	if err != nil {
		return nil, err
	}
	if cur, err = settleChanges(m.Dir, cur, changes, opts.SourceDateEpoch); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if err := waitPastCtimes(ctx, cur); err != nil {
		return nil, err
	}
	if diffID.Hex == emptyTarDiffID { // only sockets changed
		c.park(m, m.diffIDs, cur)
		return nil, nil
	}
	c.park(m, append(slices.Clone(m.diffIDs), diffID), cur)
	return l, nil
}

func (c *copySnapshotter) Release(ctx context.Context, m *Mount) error {
	return m.release()
}

func (c *copySnapshotter) Close() error {
	c.mu.Lock()
	parked := c.parked
	c.parked = nil
	c.mu.Unlock()
	var first error
	for _, t := range parked {
		if err := t.scratch.remove(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// take hands over the parked tree of chain, if any.
func (c *copySnapshotter) take(chain v1.Hash) *parkedTree {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.parked) - 1; i >= 0; i-- {
		if t := c.parked[i]; t.chain == chain {
			c.parked = slices.Delete(c.parked, i, i+1)
			return t
		}
	}
	return nil
}

// park keeps m's tree (the result of layers ids) for a later Prepare; m's
// Release then leaves it alone. The oldest trees beyond maxParked go.
func (c *copySnapshotter) park(m *Mount, ids []v1.Hash, snap []snapEntry) {
	t := &parkedTree{chain: chainID(ids), scratch: m.scratch, dir: m.Dir, snap: snap}
	m.scratch = nil
	c.mu.Lock()
	c.parked = append(c.parked, t)
	var evicted []*parkedTree
	if n := len(c.parked) - maxParked; n > 0 {
		evicted = slices.Clone(c.parked[:n])
		c.parked = slices.Delete(c.parked, 0, n)
	}
	c.mu.Unlock()
	for _, t := range evicted {
		t.scratch.remove()
	}
}

// walkTree lists root's tree (root itself excluded) in ComparePaths order,
// never following symlinks.
func walkTree(ctx context.Context, root string) ([]snapEntry, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("walking %s: %w", root, err)
	}
	defer unix.Close(fd)
	var out []snapEntry
	if err := walkDir(ctx, fd, "", &out); err != nil {
		return nil, fmt.Errorf("walking %s: %w", root, err)
	}
	return out, nil
}

func walkDir(ctx context.Context, dfd int, rel string, out *[]snapEntry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	names, err := readDirNames(dfd, ".")
	if err != nil {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	sort.Strings(names)
	for _, n := range names {
		p := path.Join(rel, n)
		var sx unix.Statx_t
		err := unix.Statx(dfd, n, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &sx)
		if err != nil {
			return fmt.Errorf("statx /%s: %w", p, err)
		}
		e := snapEntry{
			path: p, mode: uint32(sx.Mode), uid: sx.Uid, gid: sx.Gid, ino: sx.Ino,
			rdev: unix.Mkdev(sx.Rdev_major, sx.Rdev_minor), size: int64(sx.Size), nlink: sx.Nlink,
			mtime: nanos(sx.Mtime), ctime: nanos(sx.Ctime),
		}
		if sx.Mask&unix.STATX_BTIME != 0 {
			e.btime = nanos(sx.Btime)
		}
		*out = append(*out, e)
		if !e.isDir() {
			continue
		}
		cfd, err := unix.Openat(dfd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening /%s: %w", p, err)
		}
		err = walkDir(ctx, cfd, p, out)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

func nanos(t unix.StatxTimestamp) int64 { return t.Sec*1e9 + int64(t.Nsec) }

// change is one entry of a copy commit: the entry at path (cur[idx]),
// possibly marked opaque, or a whiteout of path.
type change struct {
	key      string // ComparePaths key: path, or dir/.wh.name for whiteouts
	path     string
	idx      int
	whiteout bool
	opaque   bool
}

// diffSnapshots lists the changes from old to cur (both in ComparePaths
// order), sorted by key (see copySnapshotter).
func diffSnapshots(old, cur []snapEntry) []change {
	relinked := relinkedInodes(old, cur)
	kept := map[string]bool{"": true} // directories that are the same directory
	fresh := map[string]bool{}        // directories written with all their content
	dirs := map[string]int{}          // directory path -> index in cur
	var out []change
	add := func(j int, opaque bool) {
		out = append(out, change{key: cur[j].path, path: cur[j].path, idx: j, opaque: opaque})
		if cur[j].isDir() && (opaque || !kept[cur[j].path]) {
			fresh[cur[j].path] = true
		}
	}
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		cmp := 0
		switch {
		case i == len(old):
			cmp = 1
		case j == len(cur):
			cmp = -1
		default:
			cmp = ComparePaths(old[i].path, cur[j].path)
		}
		switch {
		case cmp < 0: // deleted
			if p := old[i].path; kept[parentOf(p)] {
				dir, base := splitPath(p)
				out = append(out, change{key: path.Join(dir, whPrefix+base), path: p, idx: -1, whiteout: true})
			}
			i++
			continue
		case cmp > 0: // added
			if cur[j].isDir() {
				dirs[cur[j].path] = j
			}
			add(j, false)
			j++
			continue
		}
		o, n := &old[i], &cur[j]
		i, j = i+1, j+1
		if n.isDir() {
			dirs[n.path] = j - 1
		}
		switch {
		case fresh[parentOf(n.path)]:
			add(j-1, false)
		case n.isDir() && (!o.isDir() || o.recreated(n)):
			add(j-1, true)
		case n.isDir():
			// As BuildKit's differ: a directory whose mode and owner are
			// unchanged is written only as the parent of other changes.
			kept[n.path] = true
			if !o.sameDir(n) {
				add(j-1, false)
			}
		case !o.same(n, relinked[n.ino]):
			add(j-1, false)
		}
	}
	return withParents(out, dirs)
}

// relinkedInodes are the inodes of non-directories that gained or lost a
// name from old to cur.
func relinkedInodes(old, cur []snapEntry) map[uint64]bool {
	names := func(es []snapEntry) map[string]uint64 {
		m := map[string]uint64{}
		for i := range es {
			if !es[i].isDir() && es[i].nlink > 1 {
				m[es[i].path] = es[i].ino
			}
		}
		return m
	}
	before, after := names(old), names(cur)
	out := map[uint64]bool{}
	for p, ino := range before {
		if after[p] != ino {
			out[ino] = true
		}
	}
	for p, ino := range after {
		if before[p] != ino {
			out[ino] = true
		}
	}
	return out
}

// withParents adds the parent directories of every change and sorts.
func withParents(out []change, dirs map[string]int) []change {
	have := make(map[string]bool, len(out))
	for _, c := range out {
		if !c.whiteout {
			have[c.path] = true
		}
	}
	for _, c := range out {
		for d := parentOf(c.path); d != "" && !have[d]; d = parentOf(d) {
			have[d] = true
			out = append(out, change{key: d, path: d, idx: dirs[d]})
		}
	}
	sort.Slice(out, func(a, b int) bool { return ComparePaths(out[a].key, out[b].key) < 0 })
	return out
}

// parentOf is the parent of a relative path ("" for the root).
func parentOf(p string) string {
	dir, _ := splitPath(p)
	return dir
}

// writeChanges writes the tar of changes to w.
func writeChanges(ctx context.Context, w io.Writer, root string, changes []change, epoch *time.Time) error {
	tw := NewTarWriter(w, root, TarOptions{SourceDateEpoch: epoch})
	for _, c := range changes {
		var err error
		if c.whiteout {
			err = tw.WriteWhiteout(c.path)
		} else if err = tw.WriteEntry(ctx, c.path); err == nil && c.opaque {
			err = tw.WriteOpaque(c.path)
		}
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// settleChanges makes the written entries of root what extracting the
// layer gives (settleOne: sockets removed, times of the tar entries) and
// returns cur updated to match.
func settleChanges(root string, cur []snapEntry, changes []change, epoch *time.Time) ([]snapEntry, error) {
	settled := map[int]bool{} // index in cur -> removed (a socket)
	for _, c := range changes {
		if !c.whiteout {
			settled[c.idx] = cur[c.idx].mode&unix.S_IFMT == unix.S_IFSOCK
		}
	}
	if err := splitLinks(root, cur, settled); err != nil {
		return nil, err
	}
	// Sockets first: removing them changes their directory's times.
	for _, sockets := range []bool{true, false} {
		for idx, socket := range settled {
			if socket != sockets {
				continue
			}
			e := &cur[idx]
			st := unix.Stat_t{Mode: e.mode, Mtim: unix.Timespec{Sec: e.mtime / 1e9}}
			if err := settleOne(filepath.Join(root, e.path), &st, "", epoch); err != nil {
				return nil, err
			}
		}
	}
	out := cur[:0]
	for i := range cur {
		e := cur[i]
		removed, written := settled[i]
		if removed {
			continue
		}
		if written {
			var sx unix.Statx_t
			p := filepath.Join(root, e.path)
			if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &sx); err != nil {
				return nil, fmt.Errorf("statx %s: %w", p, err)
			}
			e.mtime, e.ctime, e.size = nanos(sx.Mtime), nanos(sx.Ctime), int64(sx.Size)
			e.ino, e.nlink = sx.Ino, sx.Nlink
		}
		out = append(out, e)
	}
	return out, nil
}

// restoreDirTimes resets the mtime of the directories that only their
// entries' creation or removal touched and that the layer therefore does
// not hold (see diffSnapshots), so that the parked tree is what extracting
// the layers gives.
func restoreDirTimes(root string, old, cur []snapEntry, changes []change) error {
	written := make(map[string]bool, len(changes))
	for _, c := range changes {
		written[c.path] = true
	}
	before := make(map[string]*snapEntry)
	for i := range old {
		if old[i].isDir() {
			before[old[i].path] = &old[i]
		}
	}
	for j := range cur {
		e := &cur[j]
		o := before[e.path]
		if !e.isDir() || written[e.path] || o == nil || o.mtime == e.mtime {
			continue
		}
		p := filepath.Join(root, e.path)
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(o.mtime)}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("restoring times of %s: %w", p, err)
		}
		var sx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &sx); err != nil {
			return fmt.Errorf("statx %s: %w", p, err)
		}
		e.mtime, e.ctime = nanos(sx.Mtime), nanos(sx.Ctime)
	}
	return nil
}

// splitLinks gives the written names of a hard-linked file their own inode
// when other names of it were not written: extracting the layer does not
// link them to the names below, so the parked tree must not either.
func splitLinks(root string, cur []snapEntry, written map[int]bool) error {
	byIno := map[uint64][]int{}
	for i := range cur {
		if cur[i].mode&unix.S_IFMT == unix.S_IFREG && cur[i].nlink > 1 {
			byIno[cur[i].ino] = append(byIno[cur[i].ino], i)
		}
	}
	for _, names := range byIno {
		var w []int
		for _, i := range names {
			if _, ok := written[i]; ok {
				w = append(w, i)
			}
		}
		if len(w) == 0 || len(w) == len(names) {
			continue
		}
		first := filepath.Join(root, cur[w[0]].path)
		if err := copyOver(first); err != nil {
			return err
		}
		for _, i := range w[1:] {
			p := filepath.Join(root, cur[i].path)
			tmp := p + ".imgbuild-link"
			if err := os.Link(first, tmp); err != nil {
				return err
			}
			if err := os.Rename(tmp, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyOver replaces the file p by a copy of itself (content, mode, owner,
// xattrs and times), a new inode.
func copyOver(p string) error {
	tmp := p + ".imgbuild-copy"
	if err := copyRegular(p, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, p)
}

// waitPastCtimes waits until the clock is past the newest ctime of snap by
// more than the granularity of file timestamps (a coarse clock tick, or a
// second on filesystems without sub-second times), so that any later
// change of a file gives it a later ctime than the one recorded.
func waitPastCtimes(ctx context.Context, snap []snapEntry) error {
	var newest int64
	coarse := len(snap) > 0
	for i := range snap {
		newest = max(newest, snap[i].ctime)
		coarse = coarse && snap[i].ctime%1e9 == 0
	}
	margin := 20 * time.Millisecond
	if coarse {
		margin = time.Second
	}
	d := time.Until(time.Unix(0, newest).Add(margin))
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
