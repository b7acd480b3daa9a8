package builder

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
)

// CacheStats is what a build did with remote caches (Result.Cache).
type CacheStats struct {
	// Imported is the number of step records read from the --cache-from
	// caches that could be read.
	Imported int
	// Hits is the number of steps taken from a --cache-from cache (steps
	// the local cache had are not counted).
	Hits int
	// BytesDownloaded counts the bytes read from the --cache-from caches
	// during the build: their manifests and configs, and the layer blobs
	// of Hits that the build read (a later step that runs needs the layers
	// below it; an output other than a push needs them all). Layers a push
	// mounts are never read, and never a whole cache.
	BytesDownloaded int64
	// Exported is the number of step records written to the last
	// --cache-to destination.
	Exported int
}

// remoteCache is a build's use of remote caches: the --cache-from caches
// it reads, and the steps each stage used or produced, for --cache-to.
// Its methods do nothing on a nil *remoteCache.
type remoteCache struct {
	warn     func(string)
	caches   []*registry.Cache
	imported int
	meta     int64 // manifest and config bytes read
	hits     atomic.Int64
	fetched  atomic.Int64 // layer bytes downloaded

	mu       sync.Mutex
	steps    map[*stage][]registry.CacheStep // in the stage's order
	fetching map[v1.Hash]*sync.Mutex         // one download per blob at a time
}

// importCaches opens the --cache-from caches (their manifests and configs
// only), all at once. One that cannot be read is a warning, not an error.
func (b *build) importCaches(ctx context.Context) *remoteCache {
	rc := &remoteCache{warn: b.opts.Warn, steps: map[*stage][]registry.CacheStep{}, fetching: map[v1.Hash]*sync.Mutex{}}
	if b.opts.NoCache {
		return rc // no step would look
	}
	caches := make([]*registry.Cache, len(b.opts.CacheFrom))
	errs := make([]error, len(b.opts.CacheFrom))
	var wg sync.WaitGroup
	for i, spec := range b.opts.CacheFrom {
		wg.Add(1)
		go func() {
			defer wg.Done()
			caches[i], errs[i] = openCache(ctx, spec, b.opts.Registry)
		}()
	}
	wg.Wait()
	for i, c := range caches { // in the order given: the first cache wins
		if errs[i] != nil {
			if ctx.Err() == nil {
				rc.warnf("--cache-from %s: %v; building without it", describeCache(b.opts.CacheFrom[i], false), errs[i])
			}
			continue
		}
		rc.caches = append(rc.caches, c)
		rc.imported += c.Len()
		rc.meta += c.MetadataBytes
	}
	return rc
}

func openCache(ctx context.Context, spec CacheSpec, opts registry.Options) (*registry.Cache, error) {
	switch spec.Type {
	case CacheRegistry:
		return registry.PullCache(ctx, spec.Ref, opts)
	case CacheLocal:
		return registry.ReadCacheLayout(ctx, spec.Dir)
	}
	return nil, fmt.Errorf("unknown cache type %q", spec.Type)
}

func describeCache(spec CacheSpec, export bool) string {
	switch {
	case spec.Type == CacheLocal && export:
		return "type=local,dest=" + spec.Dir
	case spec.Type == CacheLocal:
		return "type=local,src=" + spec.Dir
	}
	return "type=" + spec.Type + ",ref=" + spec.Ref
}

func (rc *remoteCache) warnf(format string, args ...any) {
	if rc.warn != nil {
		rc.warn(fmt.Sprintf(format, args...))
	}
}

// remoteHit looks key up in the --cache-from caches after a local miss.
// On a hit the step is recorded in the local cache under key. The layer
// blob of a registry cache stays lazy (see layers.Store.AddBlobSource): it
// is fetched only if a later step or an output reads it, and a push to the
// same registry mounts it. A layout directory's blob is copied into the
// store. A blob that cannot be copied or does not verify is a warning and a
// miss: the step runs.
func (r *stageRun) remoteHit(ctx context.Context, key v1.Hash, createdBy string) (l v1.Layer, next v1.Hash, ok bool) {
	rc := r.b.remote
	if rc == nil {
		return nil, v1.Hash{}, false
	}
	for _, c := range rc.caches {
		hit, ok := c.Lookup(key)
		if !ok {
			continue
		}
		l, err := rc.fetch(ctx, r.b, c, hit, createdBy)
		if err != nil {
			if ctx.Err() == nil {
				step := r.ev.Instruction
				if step == "" {
					step = createdBy
				}
				rc.warnf("--cache-from %s: %s: %v; running the step", c.Source, step, err)
			}
			continue
		}
		rc.hits.Add(1)
		return l, hit.Next, true
	}
	return nil, v1.Hash{}, false
}

func (rc *remoteCache) fetch(ctx context.Context, b *build, c *registry.Cache, hit registry.CacheHit, createdBy string) (v1.Layer, error) {
	defer rc.lock(hit.Layer.Digest)()
	return b.opts.Store.CacheImport(ctx, layers.CacheImportOptions{
		Key: hit.Key, Next: hit.Next, Layer: hit.Layer, DiffID: hit.DiffID, CreatedBy: createdBy,
		Repository: c.Repository, // a registry cache's blobs stay there until needed
		// A blob left lazy must be there when read or mounted: a cache
		// that lost it is a miss now (a warning), not a failed fetch later.
		Check: func(ctx context.Context) error { return c.CheckLayer(ctx, hit.Layer) },
		Open: func(ctx context.Context) (io.ReadCloser, error) {
			body, err := c.OpenLayer(ctx, hit.Layer)
			if err != nil {
				return nil, err
			}
			return &countingReader{ReadCloser: body, n: &rc.fetched}, nil
		}})
}

// countFetch counts the bytes of lazy layers fetched from a --cache-from
// registry (registry.NewFetcher's count).
func (b *build) countFetch(repo string, n int) {
	rc := b.remote
	if rc == nil {
		return
	}
	for _, c := range rc.caches {
		if c.Repository == repo {
			rc.fetched.Add(int64(n))
			return
		}
	}
}

// lock serializes the fetches of one blob, so that two stages hitting the
// same layer download it once.
func (rc *remoteCache) lock(d v1.Hash) (unlock func()) {
	rc.mu.Lock()
	m, ok := rc.fetching[d]
	if !ok {
		m = &sync.Mutex{}
		rc.fetching[d] = m
	}
	rc.mu.Unlock()
	m.Lock()
	return m.Unlock
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// collect notes that stage st used (from a cache) or produced the layer l
// under key, for --cache-to.
func (rc *remoteCache) collect(st *stage, key v1.Hash, l v1.Layer, createdBy string) {
	rc.collectNext(st, key, v1.Hash{}, l, createdBy)
}

// collectNext is collect for a record with CacheRecord.Next (zero: none).
func (rc *remoteCache) collectNext(st *stage, key, next v1.Hash, l v1.Layer, createdBy string) {
	if rc == nil {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.steps[st] = append(rc.steps[st], registry.CacheStep{Key: key, Layer: l, CreatedBy: createdBy, Next: next})
}

// stepsFor lists the steps to export in mode: "max" every stage built, in
// Dockerfile order; "min" (or "") the target stage and the stages it is
// built FROM, whose steps make the result's layers.
func (rc *remoteCache) stepsFor(p *plan, mode string) []registry.CacheStep {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var stages []*stage
	if mode == "max" {
		stages = p.stages
	} else {
		for s := p.target; s != nil; s = s.base {
			stages = append([]*stage{s}, stages...)
		}
	}
	var out []registry.CacheStep
	for _, s := range stages {
		out = append(out, rc.steps[s]...)
	}
	return out
}

// exportCaches writes the --cache-to caches after a successful build and
// fills res.Cache. A failed export fails the build, as BuildKit's, unless
// the spec says ignore-error=true (a warning then).
func (b *build) exportCaches(ctx context.Context, res *Result) error {
	rc := b.remote
	if rc == nil {
		return nil
	}
	res.Cache = CacheStats{Imported: rc.imported, Hits: int(rc.hits.Load()), BytesDownloaded: rc.meta + rc.fetched.Load()}
	for _, spec := range b.opts.CacheTo {
		steps := rc.stepsFor(b.plan, spec.Mode)
		var err error
		switch spec.Type {
		case CacheRegistry:
			err = registry.PushCache(ctx, spec.Ref, steps, b.opts.Registry)
		case CacheLocal:
			err = registry.WriteCacheLayout(ctx, spec.Dir, steps)
		default:
			err = fmt.Errorf("unknown cache type %q", spec.Type)
		}
		if err != nil && spec.IgnoreError {
			rc.warnf("--cache-to %s: exporting the build cache: %v (ignore-error=true)", describeCache(spec, true), err)
			continue
		}
		if err != nil {
			return fmt.Errorf("exporting the build cache (--cache-to %s): %w", describeCache(spec, true), err)
		}
		res.Cache.Exported = len(unique(steps))
	}
	return nil
}

// unique drops the steps whose key came earlier (CacheArtifact does too).
func unique(steps []registry.CacheStep) []registry.CacheStep {
	seen := map[v1.Hash]bool{}
	var out []registry.CacheStep
	for _, s := range steps {
		if !seen[s.Key] {
			seen[s.Key] = true
			out = append(out, s)
		}
	}
	return out
}
