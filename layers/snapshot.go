package layers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// Snapshotter kinds, as given to NewSnapshotter (the --snapshotter flag).
const (
	SnapshotterAuto    = "auto"    // overlay when an overlay mount works here, else copy
	SnapshotterOverlay = "overlay" // overlayfs: lowers shared from the store, commit walks the upperdir
	SnapshotterCopy    = "copy"    // private copy of the rootfs, commit compares it with a metadata snapshot
)

// A Snapshotter gives a step a writable root filesystem on top of a stack of
// layers and turns what the step changed into a new layer.
//
// The lifecycle of one step is Prepare, changes under Mount.Dir, then
// Commit (or not, when the step failed), then always Release. Both kinds
// write the same layer bytes for the same changes (see the conformance suite
// in snapshot_test.go, and the gaps documented on NewSnapshotter). A
// Snapshotter is safe for concurrent use; every Mount is used by one
// goroutine at a time.
type Snapshotter interface {
	// Kind is SnapshotterOverlay or SnapshotterCopy.
	Kind() string
	// Prepare returns a writable view of parent (lowest layer first).
	Prepare(ctx context.Context, parent []v1.Layer) (*Mount, error)
	// Commit writes what changed under m.Dir since Prepare as a layer (OCI
	// whiteouts for deletions, opaque markers for directories deleted and
	// recreated) through Store.WriteLayer and returns it; nil when nothing
	// changed. m.Dir is not usable after Commit (overlay unmounts it), but
	// a Prepare of parent plus the returned layer is cheap: the committed
	// tree is kept (overlay: as the layer's extracted tree in the store;
	// copy: parked for the next Prepare of that chain).
	Commit(ctx context.Context, m *Mount, opts CommitOptions) (v1.Layer, error)
	// Release unmounts m and removes its scratch data. It is idempotent
	// and must be called for every Mount, committed or not.
	Release(ctx context.Context, m *Mount) error
	// Close removes what the snapshotter keeps between steps (the copy
	// snapshotter's parked trees). Mounts not yet released stay valid.
	Close() error
}

// SnapshotOptions configure NewSnapshotter. The zero value suits a build
// running as root.
type SnapshotOptions struct {
	// NoChown extracts layers without setting owners (see
	// ApplyOptions.NoChown): for unprivileged processes.
	NoChown bool
	// MaxLowers caps the number of lower directories of an overlay mount.
	// The bottom layers of a deeper parent are merged into one extracted
	// tree (kept in the store, keyed by their chain ID). 0 means 128,
	// about Docker's limit; the kernel allows at most 500.
	MaxLowers int
}

// CommitOptions control Commit. The zero value writes a gzip layer with
// the files' own modification times.
type CommitOptions struct {
	Layer LayerOptions
	// SourceDateEpoch, when non-nil, clamps every timestamp of the layer
	// (TarOptions.SourceDateEpoch).
	SourceDateEpoch *time.Time
}

// Mount is a writable root filesystem prepared by a Snapshotter.
type Mount struct {
	// Dir is the root filesystem to run the step in (absolute).
	Dir string

	mu       sync.Mutex
	diffIDs  []v1.Hash // of the parent, lowest first
	lease    func()
	scratch  *scratchDir
	upper    string      // overlay upperdir
	lowers   []string    // overlay lowerdirs, lowest first
	work     string      // overlay workdir
	mounted  bool        // overlay: Dir is mounted
	snap     []snapEntry // copy: metadata of Dir as prepared
	done     bool        // committed: no further Commit
	released bool
}

// NewSnapshotter returns the snapshotter of the given kind working in
// store: "overlay", "copy", or "auto" ("" is the same), which probes an
// overlay mount in the store and falls back to copy when it fails (no
// privileges, a store on overlayfs as in an unprivileged container, no
// overlay support). It removes the scratch directories of snapshotters of
// dead processes, unmounting what they left mounted.
//
// Layout in Root(): layers/<diffID hex> are extracted layer trees in
// overlay format (whiteouts as 0/0 character devices, opaque directories
// marked with trusted.overlay.opaque; "-u" suffixed trees use
// user.overlay.opaque, for mounts with userxattr in a user namespace),
// layers/c-<chain ID hex> are merged stacks of bottom layers, and
// snapshots/ holds one scratch directory per Mount (upper, work, merged
// for overlay; the private tree for copy), each locked by its owner.
//
// Both kinds record what BuildKit's differs record: a directory whose mode
// and owner did not change is written only as the parent of other changes,
// and overlay drops what it copied up unchanged (same metadata and
// content). Known differences between the kinds: changing a file in place
// through one of several hard-linked names breaks the link under overlay
// (index=off, as Docker's overlay2: only that name is in the layer) while
// copy writes every name; and copy, which has no copy of the content
// before the step, detects changes by inode number, size, mode, owner,
// mtime and ctime in nanoseconds, so it also writes a file whose metadata
// was set again to the same values (chmod or chown to the same mode or
// owner, a rename there and back), where overlay compares and drops it.
// The ctime is what catches an in-place rewrite that restores the mtime
// (kaniko and buildah compare mtimes and sizes only); a ctime moved by a
// hard link added or removed elsewhere is not a change. Prepare and Commit
// wait until the clock has moved past the ctimes they recorded, so any
// later change gets a later ctime.
//
// An overlay Mount.Dir is mounted in the caller's mount namespace, below
// Root()/snapshots.
func NewSnapshotter(ctx context.Context, store *Store, kind string, opts SnapshotOptions) (Snapshotter, error) {
	switch kind {
	case SnapshotterAuto, "", SnapshotterOverlay, SnapshotterCopy:
	default:
		return nil, fmt.Errorf("unknown snapshotter %q (want auto, overlay or copy)", kind)
	}
	if opts.MaxLowers == 0 {
		opts.MaxLowers = 128
	}
	if opts.MaxLowers < 2 || opts.MaxLowers > 500 {
		return nil, fmt.Errorf("snapshotter: MaxLowers %d out of range 2-500", opts.MaxLowers)
	}
	if err := store.cleanScratch(ctx); err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	if _, err := store.cleanTemp(); err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	switch kind {
	case SnapshotterOverlay:
		return newOverlaySnapshotter(ctx, store, opts)
	case SnapshotterCopy:
		return newCopySnapshotter(store, opts)
	}
	if s, err := newOverlaySnapshotter(ctx, store, opts); err == nil {
		return s, nil
	}
	return newCopySnapshotter(store, opts)
}

// emptyTarDiffID is the diffID of a tar with no entry (1024 zero bytes).
const emptyTarDiffID = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"

// nonEmpty drops the layers whose tar has no entries (BuildKit's empty
// layers, e.g. of a RUN that changed nothing): they change no filesystem,
// so a Prepare with or without them is the same view.
func nonEmpty(ls []v1.Layer) ([]v1.Layer, error) {
	out := make([]v1.Layer, 0, len(ls))
	for _, l := range ls {
		empty, err := isEmptyTar(l)
		if err != nil {
			return nil, err
		}
		if !empty {
			out = append(out, l)
		}
	}
	return out, nil
}

// diffIDsOf returns the diffIDs of ls.
func diffIDsOf(ls []v1.Layer) ([]v1.Hash, error) {
	out := make([]v1.Hash, len(ls))
	for i, l := range ls {
		h, err := l.DiffID()
		if err != nil {
			return nil, fmt.Errorf("layer %d: diffID: %w", i, err)
		}
		if h.Algorithm != "sha256" || len(h.Hex) != 64 || !isHex(h.Hex) {
			return nil, fmt.Errorf("layer %d: unsupported diffID %q", i, h)
		}
		out[i] = h
	}
	return out, nil
}

// chainID is the OCI chain ID of diffIDs (lowest first): the diffID of a
// single layer, sha256("<chain below> <diffID>") above it. The empty chain
// has the zero Hash.
func chainID(diffIDs []v1.Hash) v1.Hash {
	var c v1.Hash
	for i, d := range diffIDs {
		if i == 0 {
			c = d
			continue
		}
		c = sha256Of([]byte(c.String() + " " + d.String()))
	}
	return c
}

// Store directories of the snapshotters.
const (
	extractedDir = "layers"
	scratchRoot  = "snapshots"
	scratchLock  = ".lock" // in scratchRoot: shared while creating, exclusive while cleaning
	ownerLock    = "lock"  // in each scratch dir: held by its owner
)

// scratchDir is a private directory under Root()/snapshots, locked by its
// owner for as long as it is in use.
type scratchDir struct {
	path   string
	unlock func()
}

func (s *Store) newScratch(ctx context.Context) (*scratchDir, error) {
	base := filepath.Join(s.root, scratchRoot)
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("making scratch directory: %w", err)
	}
	creating, err := lockFile(ctx, filepath.Join(base, scratchLock), unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("making scratch directory: %w", err)
	}
	defer creating()
	d, err := os.MkdirTemp(base, "s")
	if err != nil {
		return nil, fmt.Errorf("making scratch directory: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(d, ownerLock), unix.LOCK_EX)
	if err != nil {
		os.Remove(d)
		return nil, fmt.Errorf("making scratch directory: %w", err)
	}
	return &scratchDir{path: d, unlock: unlock}, nil
}

// remove unmounts what is mounted below the scratch directory, removes it
// and drops its lock.
func (d *scratchDir) remove() error {
	if d == nil {
		return nil
	}
	err := unmountBelow(d.path)
	if err == nil {
		err = removeTree(d.path)
	}
	d.unlock()
	return err
}

// cleanScratch removes the scratch directories whose owner is gone.
func (s *Store) cleanScratch(ctx context.Context) error {
	base := filepath.Join(s.root, scratchRoot)
	ents, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleaning scratch directories: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(base, scratchLock), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("cleaning scratch directories: %w", err)
	}
	defer unlock()
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(base, e.Name())
		release, err := tryLock(filepath.Join(p, ownerLock))
		if errors.Is(err, unix.EWOULDBLOCK) {
			continue // in use
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cleaning scratch directory %s: %w", p, err)
		}
		// No lock file: its creator died before making it (creators hold
		// scratchLock shared, which this holds exclusive).
		d := &scratchDir{path: p, unlock: func() {}}
		if release != nil {
			d.unlock = release
		}
		if err := d.remove(); err != nil {
			return fmt.Errorf("cleaning scratch directory %s: %w", p, err)
		}
	}
	return nil
}

// removeTree removes p recursively, making directories writable when an
// unprivileged process meets read-only ones.
func removeTree(p string) error {
	if err := os.RemoveAll(p); err == nil {
		return nil
	}
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o700)
		}
		return nil
	})
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("removing %s: %w", p, err)
	}
	return nil
}

// treeSize sums the sizes of the regular files below p.
func treeSize(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// tarSeconds is the modification time (seconds) TarWriter writes for a
// file modified at mtimeSec.
func tarSeconds(mtimeSec int64, epoch *time.Time) int64 {
	if epoch != nil && time.Unix(mtimeSec, 0).After(*epoch) {
		return epoch.Truncate(time.Second).Unix()
	}
	return mtimeSec
}

// isEmptyTar reports whether a layer's diffID is that of a tar with no
// entries.
func isEmptyTar(l v1.Layer) (bool, error) {
	h, err := l.DiffID()
	if err != nil {
		return false, err
	}
	return h.Hex == emptyTarDiffID, nil
}

// tryLock takes an exclusive flock(2) on the existing file p without
// waiting; the error wraps EWOULDBLOCK when it is locked.
func tryLock(p string) (release func(), err error) {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("flock %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

// release unmounts m, removes its scratch directory unless another owner
// took it over, and drops its lease.
func (m *Mount) release() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.released {
		return nil
	}
	if m.mounted {
		if err := unmount(m.Dir); err != nil {
			return fmt.Errorf("releasing %s: %w", m.Dir, err)
		}
		m.mounted = false
	}
	if err := m.scratch.remove(); err != nil {
		return fmt.Errorf("releasing %s: %w", m.Dir, err)
	}
	m.scratch = nil
	m.released = true
	if m.lease != nil {
		m.lease()
	}
	return nil
}

// startCommit marks m committed; it fails for a Mount committed or
// released already.
func (m *Mount) startCommit() error {
	if m.done || m.released {
		return errors.New("commit: mount already committed or released")
	}
	m.done = true
	return nil
}

// snapEntry is the metadata of one path of a tree (times in nanoseconds;
// btime 0 when the filesystem does not report birth times).
type snapEntry struct {
	path                string
	mode                uint32 // type and permission bits
	uid, gid            uint32
	ino, rdev           uint64
	nlink               uint32
	size                int64
	mtime, ctime, btime int64
}

func (e *snapEntry) isDir() bool { return e.mode&unix.S_IFMT == unix.S_IFDIR }

// same reports whether nothing the snapshot records differs.
// relinked says that names of o's inode were added or removed: a ctime
// that moved then is a link made or removed elsewhere, not a change of
// this name (BuildKit's differs ignore ctimes).
func (e *snapEntry) same(o *snapEntry, relinked bool) bool {
	return e.mode == o.mode && e.uid == o.uid && e.gid == o.gid && e.ino == o.ino &&
		e.rdev == o.rdev && e.size == o.size && e.mtime == o.mtime &&
		(e.ctime == o.ctime || relinked || e.nlink != o.nlink)
}

// sameDir reports whether directory o has e's mode and owner.
func (e *snapEntry) sameDir(o *snapEntry) bool {
	return e.mode == o.mode && e.uid == o.uid && e.gid == o.gid
}

// recreated reports whether directory o is not directory e any more.
func (e *snapEntry) recreated(o *snapEntry) bool {
	return e.ino != o.ino || (e.btime != 0 && o.btime != 0 && e.btime != o.btime)
}
