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
	"syscall"
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
	statIndexMagic = "IMGBSTX2"
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
	digest [sha256.Size]byte // content
	xattrs [sha256.Size]byte // extended attributes (xattrsDigest)
	used   int64             // last use, seconds since the epoch
}

func (e statEntry) sum() FileSum {
	return FileSum{Content: sha256Hash(e.digest), Xattrs: sha256Hash(e.xattrs)}
}

// noXattrs is the xattrs digest of a file without extended attributes.
var noXattrs = sha256.Sum256(nil)

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

// Hashed is how many files FileDigest and Sum have read since the index
// was opened.
func (x *StatIndex) Hashed() int64 {
	if x == nil {
		return 0
	}
	return x.hashed.Load()
}

// Len is the number of entries in memory.
func (x *StatIndex) Len() int {
	if x == nil {
		return 0
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.entries)
}

// FileSum is what the index knows about a regular file.
type FileSum struct {
	Content v1.Hash // sha256 of the content
	Xattrs  v1.Hash // XattrsDigest of its extended attributes
}

// FileDigest returns the sha256 of the content of the regular file p (an
// absolute host path; a symlink is not followed and is an error). The
// content is read only when the index has no entry for p matching its
// current lstat.
func (x *StatIndex) FileDigest(p string) (v1.Hash, error) {
	s, err := x.Sum(p, nil)
	return s.Content, err
}

// Sum is FileDigest plus the file's extended attributes, which are cached
// with the content (setting or removing one changes the ctime). fi, when
// not nil, is the caller's fresh lstat of p, saving a system call per file
// on a walk. A nil *StatIndex reads every file.
func (x *StatIndex) Sum(p string, fi os.FileInfo) (FileSum, error) {
	stamp, err := lstamp(p, fi)
	if err != nil {
		return FileSum{}, fmt.Errorf("hashing %s: %w", p, err)
	}
	if e, ok := x.lookup(p, stamp); ok {
		return e.sum(), nil
	}
	e, stable, err := hashRegular(p)
	if x == nil {
		return e.sum(), err
	}
	x.hashed.Add(1)
	if err != nil {
		return FileSum{}, fmt.Errorf("hashing %s: %w", p, err)
	}
	if stable && !x.isRacy(e.stamp) {
		e.used = x.now().Unix()
		x.mu.Lock()
		x.entries[p] = e
		x.changes++
		x.mu.Unlock()
	}
	return e.sum(), nil
}

// lstamp is the stamp of the regular file p, from fi when given.
func lstamp(p string, fi os.FileInfo) (fileStamp, error) {
	if !filepath.IsAbs(p) {
		return fileStamp{}, errors.New("not an absolute path")
	}
	if fi == nil {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fileStamp{}, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fileStamp{}, errors.New("not a regular file")
		}
		return stampOfStat(&st), nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return fileStamp{}, errors.New("not a regular file")
	}
	return fileStamp{size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), ino: st.Ino, dev: uint64(st.Dev)}, nil
}

// lookup returns p's entry when it matches stamp, refreshing its last-use
// time once per usedGranularity.
func (x *StatIndex) lookup(p string, stamp fileStamp) (statEntry, bool) {
	if x == nil {
		return statEntry{}, false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.entries[p]
	if !ok || e.stamp != stamp {
		return statEntry{}, false
	}
	if now := x.now().Unix(); now-e.used >= int64(usedGranularity/time.Second) {
		e.used = now
		x.entries[p] = e
		x.changes++
	}
	return e, true
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
// blocking on a fifo swapped in, and returns its entry (stamp when opened,
// content and extended attribute digests) and whether its stamp was the
// same after the read.
func hashRegular(p string) (e statEntry, stable bool, err error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return e, false, err
	}
	defer f.Close()
	fd := int(f.Fd())
	var before, after unix.Stat_t
	if err := unix.Fstat(fd, &before); err != nil {
		return e, false, err
	}
	if before.Mode&unix.S_IFMT != unix.S_IFREG {
		return e, false, errors.New("not a regular file")
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return e, false, err
	}
	h.Sum(e.digest[:0])
	e.xattrs = xattrsDigest(func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(name string, b []byte) (int, error) { return unix.Fgetxattr(fd, name, b) })
	if err := unix.Fstat(fd, &after); err != nil {
		return e, false, err
	}
	e.stamp = stampOfStat(&before)
	return e, e.stamp == stampOfStat(&after), nil
}

// XattrsDigest is the sha256 of p's extended attributes (not following a
// symlink): for each attribute that can be read, sorted by name, its
// name and value, each preceded by its length as a uvarint. No attribute
// gives the sha256 of nothing.
func XattrsDigest(p string) v1.Hash {
	return sha256Hash(xattrsDigest(func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		func(name string, b []byte) (int, error) { return unix.Lgetxattr(p, name, b) }))
}

func xattrsDigest(list func([]byte) (int, error), get func(string, []byte) (int, error)) [sha256.Size]byte {
	h := sha256.New()
	size, err := list(nil)
	if err != nil || size <= 0 {
		return sha256.Sum256(nil)
	}
	buf := make([]byte, size)
	if size, err = list(buf); err != nil {
		return sha256.Sum256(nil)
	}
	names := strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00")
	slices.Sort(names)
	var rec []byte
	for _, name := range names {
		if name == "" {
			continue
		}
		n, err := get(name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, n)
		if n, err = get(name, val); err != nil {
			continue
		}
		rec = binary.AppendUvarint(rec[:0], uint64(len(name)))
		rec = append(rec, name...)
		rec = binary.AppendUvarint(rec, uint64(n))
		rec = append(rec, val[:n]...)
		h.Write(rec)
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
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
// varint last use, 32-byte content digest, a byte 0 (no extended
// attributes) or 1 followed by the 32-byte xattrs digest; then the sha256 of all the preceding
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
		if e.xattrs == noXattrs {
			b = append(b, 0)
		} else {
			b = append(b, 1)
			b = append(b, e.xattrs[:]...)
		}
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
		switch flag := r.bytes(1); flag[0] {
		case 0:
			e.xattrs = noXattrs
		case 1:
			copy(e.xattrs[:], r.bytes(sha256.Size))
		default:
			return nil, errBadStatIndex
		}
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
