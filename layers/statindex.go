package layers

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// The stat index lives at Root()/cache/statindex; Save holds an flock(2)
// on Root()/cache/statindex.lock while it merges and replaces the file.
const (
	statIndexDir   = "cache"
	statIndexName  = "statindex"
	statIndexLock  = "statindex.lock"
	statIndexMagic = "IMGBSTX1"
)

const (
	// StatIndexMaxAge is how long Save keeps an entry that no FileDigest
	// call used.
	StatIndexMaxAge = 30 * 24 * time.Hour
	// StatIndexMaxEntries caps the entries Save writes (the most recently
	// used are kept), so a root used for many contexts keeps a small index.
	StatIndexMaxEntries = 200_000
	// StatIndexRacyWindow: a file whose mtime or ctime is this close to the
	// time it was hashed is not recorded, because a change within the same
	// timestamp tick could leave its stat unchanged ("racy git").
	StatIndexRacyWindow = time.Second
	// usedGranularity is how stale an entry's last-use time may get before
	// a hit refreshes it (and makes Save write), so that a no-op rebuild
	// does not rewrite the index.
	usedGranularity = 24 * time.Hour
)

// StatIndex is a persistent map from host file paths to the sha256 of their
// content. An entry is trusted while lstat(2) reports the same size, mtime,
// ctime, inode and device as when the content was hashed; anything else and
// the file is read again. It lets a rebuild with unchanged files read only
// metadata. A StatIndex is safe for concurrent use; processes sharing a
// store each load the index, and Save merges what the others saved before
// replacing the file atomically.
type StatIndex struct {
	dir        string                                 // Root()/cache
	write      func(dir, name string, b []byte) error // atomic replace
	now        func() time.Time
	maxAge     time.Duration
	maxEntries int
	racy       time.Duration

	mu      sync.Mutex
	entries map[string]statEntry
	changes int64 // bumped by every change to entries
	saved   int64 // changes at the last load or successful Save
	hashed  atomic.Int64
}

// fileStamp is what lstat says about a file's state.
type fileStamp struct {
	size, mtime, ctime int64 // bytes, ns since the epoch
	ino, dev           uint64
}

func stampOfStat(st *unix.Stat_t) fileStamp {
	return fileStamp{size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), ino: st.Ino, dev: uint64(st.Dev)}
}

type statEntry struct {
	stamp  fileStamp
	digest [sha256.Size]byte
	used   int64 // last use, seconds since the epoch
}

// OpenStatIndex loads the store's stat index. A missing, unreadable or
// corrupt index file is ignored: the index starts empty and is rebuilt.
func OpenStatIndex(ctx context.Context, s *Store) (*StatIndex, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	x := &StatIndex{
		dir:        filepath.Join(s.root, statIndexDir),
		write:      s.writeFileAtomic,
		now:        time.Now,
		maxAge:     StatIndexMaxAge,
		maxEntries: StatIndexMaxEntries,
		racy:       StatIndexRacyWindow,
		entries:    map[string]statEntry{},
	}
	if m, err := readStatIndex(filepath.Join(x.dir, statIndexName)); err == nil {
		x.entries = m
	}
	return x, nil
}

// Hashed is how many files FileDigest has read since the index was opened.
func (x *StatIndex) Hashed() int64 { return x.hashed.Load() }

// Len is the number of entries in memory.
func (x *StatIndex) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.entries)
}

// FileDigest returns the sha256 of the content of the regular file p (an
// absolute host path; a symlink is not followed and is an error). The
// content is read only when the index has no entry for p matching its
// current lstat.
func (x *StatIndex) FileDigest(p string) (v1.Hash, error) {
	if !filepath.IsAbs(p) {
		return v1.Hash{}, fmt.Errorf("hashing %s: not an absolute path", p)
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return v1.Hash{}, fmt.Errorf("hashing %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return v1.Hash{}, fmt.Errorf("hashing %s: not a regular file", p)
	}
	if d, ok := x.lookup(p, stampOfStat(&st)); ok {
		return sha256Hash(d), nil
	}
	d, stamp, stable, err := hashRegular(p)
	x.hashed.Add(1)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("hashing %s: %w", p, err)
	}
	if stable && !x.isRacy(stamp) {
		x.mu.Lock()
		x.entries[p] = statEntry{stamp: stamp, digest: d, used: x.now().Unix()}
		x.changes++
		x.mu.Unlock()
	}
	return sha256Hash(d), nil
}

// lookup returns p's recorded digest when its entry matches stamp,
// refreshing the entry's last-use time once per usedGranularity.
func (x *StatIndex) lookup(p string, stamp fileStamp) ([sha256.Size]byte, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.entries[p]
	if !ok || e.stamp != stamp {
		return [sha256.Size]byte{}, false
	}
	if now := x.now().Unix(); now-e.used >= int64(usedGranularity/time.Second) {
		e.used = now
		x.entries[p] = e
		x.changes++
	}
	return e.digest, true
}

// isRacy reports whether a file with this stamp, hashed just now, may
// change again without its stamp changing.
func (x *StatIndex) isRacy(s fileStamp) bool {
	now := x.now().UnixNano()
	w := x.racy.Nanoseconds()
	near := func(t int64) bool { return t > now-w && t < now+w }
	return near(s.mtime) || near(s.ctime)
}

// hashRegular reads the regular file p without following a symlink or
// blocking on a fifo swapped in, and returns its sha256, its stamp when
// opened, and whether the stamp was the same after the read.
func hashRegular(p string) (d [sha256.Size]byte, stamp fileStamp, stable bool, err error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return d, stamp, false, err
	}
	defer f.Close()
	var before, after unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &before); err != nil {
		return d, stamp, false, err
	}
	if before.Mode&unix.S_IFMT != unix.S_IFREG {
		return d, stamp, false, errors.New("not a regular file")
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return d, stamp, false, err
	}
	if err := unix.Fstat(int(f.Fd()), &after); err != nil {
		return d, stamp, false, err
	}
	h.Sum(d[:0])
	stamp = stampOfStat(&before)
	return d, stamp, stamp == stampOfStat(&after), nil
}

func sha256Hash(d [sha256.Size]byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(d[:])}
}

// Save writes the index when it changed since it was loaded or last saved:
// under the index lock it merges the entries other processes saved
// meanwhile (this index's entry wins for a path both have), drops entries
// unused for StatIndexMaxAge, keeps at most StatIndexMaxEntries (most
// recently used first), and replaces the file atomically.
func (x *StatIndex) Save(ctx context.Context) error {
	x.mu.Lock()
	if x.changes == x.saved {
		x.mu.Unlock()
		return nil
	}
	snap := make(map[string]statEntry, len(x.entries))
	for p, e := range x.entries {
		snap[p] = e
	}
	gen := x.changes
	x.mu.Unlock()

	if err := os.MkdirAll(x.dir, 0o755); err != nil {
		return fmt.Errorf("saving stat index: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(x.dir, statIndexLock), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("saving stat index: %w", err)
	}
	defer unlock()
	if disk, err := readStatIndex(filepath.Join(x.dir, statIndexName)); err == nil {
		for p, e := range disk {
			if _, ok := snap[p]; !ok {
				snap[p] = e
			}
		}
	}
	b := encodeStatIndex(x.trim(snap))
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := x.write(x.dir, statIndexName, b); err != nil {
		return fmt.Errorf("saving stat index: %w", err)
	}
	x.mu.Lock()
	x.saved = max(x.saved, gen)
	x.mu.Unlock()
	return nil
}

// trim drops expired entries and, past maxEntries, the least recently used.
func (x *StatIndex) trim(m map[string]statEntry) map[string]statEntry {
	cutoff := x.now().Add(-x.maxAge).Unix()
	for p, e := range m {
		if e.used < cutoff {
			delete(m, p)
		}
	}
	if len(m) <= x.maxEntries {
		return m
	}
	paths := make([]string, 0, len(m))
	for p := range m {
		paths = append(paths, p)
	}
	slices.SortFunc(paths, func(a, b string) int {
		if c := cmp.Compare(m[b].used, m[a].used); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for _, p := range paths[x.maxEntries:] {
		delete(m, p)
	}
	return m
}

// The file: magic, uvarint count, then per entry (sorted by path) uvarint
// path length, path, varint size, mtime, ctime, uvarint inode, device,
// varint last use, 32-byte digest; then the sha256 of all the preceding
// bytes.
func encodeStatIndex(m map[string]statEntry) []byte {
	paths := make([]string, 0, len(m))
	for p := range m {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	b := make([]byte, 0, len(statIndexMagic)+len(m)*120+sha256.Size)
	b = append(b, statIndexMagic...)
	b = binary.AppendUvarint(b, uint64(len(m)))
	for _, p := range paths {
		e := m[p]
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
		b = binary.AppendVarint(b, e.stamp.size)
		b = binary.AppendVarint(b, e.stamp.mtime)
		b = binary.AppendVarint(b, e.stamp.ctime)
		b = binary.AppendUvarint(b, e.stamp.ino)
		b = binary.AppendUvarint(b, e.stamp.dev)
		b = binary.AppendVarint(b, e.used)
		b = append(b, e.digest[:]...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

var errBadStatIndex = errors.New("corrupt stat index")

func readStatIndex(p string) (map[string]statEntry, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return decodeStatIndex(b)
}

func decodeStatIndex(b []byte) (map[string]statEntry, error) {
	if len(b) < len(statIndexMagic)+sha256.Size || !bytes.HasPrefix(b, []byte(statIndexMagic)) {
		return nil, errBadStatIndex
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, errBadStatIndex
	}
	r := statReader{b: body[len(statIndexMagic):]}
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		return nil, errBadStatIndex
	}
	m := make(map[string]statEntry, n)
	for range n {
		l := r.uvarint()
		if l > uint64(len(r.b)) {
			return nil, errBadStatIndex
		}
		p := string(r.bytes(int(l)))
		var e statEntry
		e.stamp.size, e.stamp.mtime, e.stamp.ctime = r.varint(), r.varint(), r.varint()
		e.stamp.ino, e.stamp.dev = r.uvarint(), r.uvarint()
		e.used = r.varint()
		copy(e.digest[:], r.bytes(sha256.Size))
		if r.err {
			return nil, errBadStatIndex
		}
		m[p] = e
	}
	if r.err || len(r.b) != 0 {
		return nil, errBadStatIndex
	}
	return m, nil
}

// statReader decodes the index body; err sticks after the first short read.
type statReader struct {
	b   []byte
	err bool
}

func (r *statReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err, r.b = true, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *statReader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err, r.b = true, nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *statReader) bytes(n int) []byte {
	if n > len(r.b) {
		r.err, r.b = true, nil
		return make([]byte, n)
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}
