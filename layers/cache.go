package layers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// cacheDir holds the step cache: one record file per key under steps/.
const cacheDir = "cache"

// CacheRecord is one cached build step: the layer it committed, found by
// the step's cache key (see package builder).
type CacheRecord struct {
	Key       v1.Hash       `json:"key"`
	Layer     v1.Descriptor `json:"layer"` // digest, size, media type of the blob
	DiffID    v1.Hash       `json:"diffID"`
	CreatedBy string        `json:"createdBy,omitempty"`
	// Next, when set, is the key the steps after this one chain from
	// instead of Key: a step found by an input-based key records its
	// content-based key there (COPY --from).
	Next     *v1.Hash        `json:"next,omitempty"`
	Created  time.Time       `json:"created"`
	LastUsed time.Time       `json:"lastUsed"`
	Blob     *blobStamp      `json:"blob,omitempty"` // the blob file when its digest was last verified
	Extra    json.RawMessage `json:"extra,omitempty"`
}

// blobStamp identifies a blob file's state: while lstat gives the same
// values the content verified then is trusted without reading it again.
type blobStamp struct {
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime"`
	Ctime int64  `json:"ctime"`
	Ino   uint64 `json:"ino"`
}

func stampOf(p string) (*blobStamp, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, err
	}
	return &blobStamp{Size: st.Size, Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano(), Ino: st.Ino}, nil
}

func (s *Store) cacheRecordPath(key v1.Hash) (string, error) {
	if key.Algorithm != "sha256" || len(key.Hex) != 64 || !isHex(key.Hex) {
		return "", fmt.Errorf("invalid cache key %q", key)
	}
	return filepath.Join(s.root, cacheDir, "steps", key.Hex), nil
}

// CachePut records that the step with key committed l.
func (s *Store) CachePut(ctx context.Context, key v1.Hash, l v1.Layer, createdBy string) error {
	return s.CachePutNext(ctx, key, v1.Hash{}, l, createdBy)
}

// CachePutNext is CachePut with CacheRecord.Next.
func (s *Store) CachePutNext(ctx context.Context, key, next v1.Hash, l v1.Layer, createdBy string) error {
	p, err := s.cacheRecordPath(key)
	if err != nil {
		return err
	}
	dgst, err := l.Digest()
	if err != nil {
		return err
	}
	diffID, err := l.DiffID()
	if err != nil {
		return err
	}
	size, err := l.Size()
	if err != nil {
		return err
	}
	mt, err := l.MediaType()
	if err != nil {
		return err
	}
	desc := v1.Descriptor{MediaType: mt, Size: size, Digest: dgst}
	if _, ok := s.lazyLayer(desc, diffID); !ok {
		return fmt.Errorf("caching step: layer %s is not in the store", dgst)
	}
	now := time.Now().UTC()
	rec := CacheRecord{Key: key, Layer: desc,
		DiffID: diffID, CreatedBy: createdBy, Created: now, LastUsed: now}
	if next != (v1.Hash{}) {
		rec.Next = &next
	}
	bp, _ := s.blobPath(dgst)
	rec.Blob, _ = stampOf(bp) // written by this process: verified (nil: lazy)
	return s.writeRecord(p, &rec)
}

func (s *Store) writeRecord(p string, rec *CacheRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("caching step: %w", err)
	}
	return s.writeFileAtomic(filepath.Dir(p), filepath.Base(p), b)
}

// CacheGet returns the layer cached for key, or ok false. A record whose
// blob is missing, truncated or corrupt is deleted and reported as a miss,
// never used: the blob's digest is verified again whenever its file is not
// in the state recorded at the last verification (size, times, inode).
func (s *Store) CacheGet(ctx context.Context, key v1.Hash) (l v1.Layer, ok bool, err error) {
	l, _, ok, err = s.CacheLookup(ctx, key)
	return l, ok, err
}

// CacheLookup is CacheGet that also returns the record's Next.
func (s *Store) CacheLookup(ctx context.Context, key v1.Hash) (l v1.Layer, next v1.Hash, ok bool, err error) {
	l, rec, ok, err := s.cacheLookup(ctx, key)
	if ok && rec.Next != nil {
		next = *rec.Next
	}
	return l, next, ok, err
}

func (s *Store) cacheLookup(ctx context.Context, key v1.Hash) (l v1.Layer, rec *CacheRecord, ok bool, err error) {
	p, err := s.cacheRecordPath(key)
	if err != nil {
		return nil, nil, false, err
	}
	rec, err = readRecord(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, false, nil
	}
	if err != nil { // unreadable record: drop it
		os.Remove(p)
		return nil, nil, false, nil
	}
	bp, err := s.blobPath(rec.Layer.Digest)
	if err != nil {
		os.Remove(p)
		return nil, nil, false, nil
	}
	st, err := stampOf(bp)
	if errors.Is(err, fs.ErrNotExist) {
		// A lazy blob (from a registry cache or base image) is used
		// while the store knows where to fetch it.
		if l, ok := s.lazyLayer(rec.Layer, rec.DiffID); ok {
			s.touchRecord(p, rec, false)
			return l, rec, true, nil
		}
	}
	if err != nil || st.Size != rec.Layer.Size {
		os.Remove(p)
		return nil, nil, false, nil
	}
	dirty := false
	if rec.Blob == nil || *rec.Blob != *st {
		if err := s.verifyBlob(ctx, rec.Layer.Digest, rec.Layer.Size); err != nil {
			os.Remove(bp) // corrupt: rebuilt by the step, never used
			os.Remove(p)
			return nil, nil, false, nil
		}
		rec.Blob, dirty = st, true
	}
	s.touchRecord(p, rec, dirty)
	return &storeLayer{s: s, digest: rec.Layer.Digest, diffID: rec.DiffID, size: rec.Layer.Size,
		mediaType: types.MediaType(rec.Layer.MediaType)}, rec, true, nil
}

// touchRecord updates the record's LastUsed, which orders prune
// --keep-storage and --filter until: to the minute is enough, and a no-op
// rebuild then writes no record (unless dirty).
func (s *Store) touchRecord(p string, rec *CacheRecord, dirty bool) {
	if now := time.Now().UTC(); dirty || now.Sub(rec.LastUsed) > time.Minute {
		rec.LastUsed = now
		_ = s.writeRecord(p, rec) // best effort
	}
}

func readRecord(p string) (*CacheRecord, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var rec CacheRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	if rec.Layer.Digest.Algorithm != "sha256" || rec.DiffID.Algorithm != "sha256" {
		return nil, fmt.Errorf("cache record %s: incomplete", p)
	}
	return &rec, nil
}

// verifyBlob reads a blob through to its end, checking its digest.
func (s *Store) verifyBlob(ctx context.Context, h v1.Hash, size int64) error {
	rc, err := s.openBlob(h, size)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}

// CacheRecords lists the step cache, in no particular order. Unreadable
// records are skipped.
func (s *Store) CacheRecords(ctx context.Context) ([]CacheRecord, error) {
	dir := filepath.Join(s.root, cacheDir, "steps")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the build cache: %w", err)
	}
	var out []CacheRecord
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rec, err := readRecord(filepath.Join(dir, e.Name()))
		if err == nil {
			out = append(out, *rec)
		}
	}
	return out, nil
}

// CacheDelete removes the records of keys (their blobs go at the next
// Prune unless an image or another record uses them).
func (s *Store) CacheDelete(ctx context.Context, keys ...v1.Hash) error {
	for _, k := range keys {
		p, err := s.cacheRecordPath(k)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting cache record: %w", err)
		}
	}
	return nil
}

// CachePruneOptions select the step cache records PruneCache deletes.
type CachePruneOptions struct {
	// All deletes every record.
	All bool
	// Until, when > 0, deletes the records not used for that long.
	Until time.Duration
	// KeepStorage, when > 0, deletes the least recently used records until
	// the layers the remaining ones reference total at most this many bytes.
	KeepStorage int64
}

// PruneCache deletes step cache records as opts say and returns how many.
// Their blobs are deleted by the next Prune unless still referenced. The
// small records of PutCacheMeta go with All, and with Until when older.
func (s *Store) PruneCache(ctx context.Context, opts CachePruneOptions) (int, error) {
	recs, err := s.CacheRecords(ctx)
	if err != nil {
		return 0, err
	}
	slices.SortFunc(recs, func(a, b CacheRecord) int { return b.LastUsed.Compare(a.LastUsed) }) // newest first
	var del []v1.Hash
	var total int64
	seen := map[v1.Hash]bool{}
	now := time.Now()
	for _, r := range recs {
		drop := opts.All || (opts.Until > 0 && now.Sub(r.LastUsed) > opts.Until)
		if !drop && !seen[r.Layer.Digest] {
			if opts.KeepStorage > 0 && total+r.Layer.Size > opts.KeepStorage {
				drop = true
			} else {
				seen[r.Layer.Digest] = true
				total += r.Layer.Size
			}
		}
		if drop {
			del = append(del, r.Key)
		}
	}
	if err := s.pruneMeta(opts.All, opts.Until); err != nil {
		return 0, fmt.Errorf("pruning the build cache: %w", err)
	}
	return len(del), s.CacheDelete(ctx, del...)
}
