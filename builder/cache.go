package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// cacheKeyVersion changes whenever what a key covers changes.
const cacheKeyVersion = "imgbuild-step-v1"

// A step's cache key covers the key of the step before it (the chain down
// to the base image's manifest digest, or scratch), the build-wide inputs
// that change layer bytes (compression, SOURCE_DATE_EPOCH), the kind of
// step and its expanded input: for COPY/ADD the expanded instruction, the
// WORKDIR and the digest of exactly the selected sources; for RUN the
// argv, the environment (the ENV and the ARGs in scope: an ARG changes
// the key of the RUN steps after it, not of the steps before or of a COPY
// that does not use it), USER, WORKDIR, network and mounts; for WORKDIR
// the path and USER. Metadata instructions have no key: they run again,
// instantly, on every build, and what they change enters the keys of the
// filesystem steps through these inputs.
func (r *stageRun) stepKey(kind string, input any) (v1.Hash, error) {
	b, err := json.Marshal(input)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("cache key: %w", err)
	}
	lo := r.b.opts.Layer
	epoch := ""
	if r.b.epoch != nil {
		epoch = r.b.epoch.String()
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%d\n%s\n%s\n", cacheKeyVersion, r.key, lo.Compression, lo.Level, epoch, kind)
	h.Write(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}, nil
}

// baseKey is the key a stage's chain starts from.
func baseKey(what string, plat v1.Platform) v1.Hash {
	sum := sha256.Sum256([]byte(cacheKeyVersion + "\nbase\n" + what + "\n" + plat.String()))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// useCache reports whether this stage's steps may be taken from the cache
// (--no-cache, --no-cache-filter).
func (r *stageRun) useCache() bool {
	o := r.b.opts
	if o.NoCache {
		return false
	}
	return !slices.ContainsFunc(o.NoCacheFilter, func(s string) bool { return r.st.matches(s) })
}

// cached looks key up; on a hit the step's layer is added as if it had run.
func (r *stageRun) cached(ctx context.Context, key v1.Hash, msg string) (bool, error) {
	if !r.useCache() {
		return false, nil
	}
	l, next, ok, err := r.b.opts.Store.CacheLookup(ctx, key)
	if err == nil && !ok {
		l, next, ok = r.remoteHit(ctx, key, msg) // --cache-from (cache_remote.go)
	}
	if err != nil || !ok {
		return false, err
	}
	r.addLayer(l, msg)
	r.key = key
	if next != (v1.Hash{}) {
		r.key = next
	}
	r.hit = true
	r.b.remote.collectNext(r.st, key, next, l, msg)
	if next != (v1.Hash{}) { // the content-keyed record too, for --cache-to
		r.b.remote.collectNext(r.st, next, v1.Hash{}, l, msg)
	}
	return true, nil
}

// rememberNext records l under key with CacheRecord.Next next, the key
// the following steps chain from.
func (r *stageRun) rememberNext(ctx context.Context, key, next v1.Hash, l v1.Layer, msg string) error {
	if err := r.b.opts.Store.CachePutNext(ctx, key, next, l, msg); err != nil {
		return fmt.Errorf("caching the step: %w", err)
	}
	r.b.remote.collectNext(r.st, key, next, l, msg)
	return nil
}

// remember records the layer a step committed under its key.
func (r *stageRun) remember(ctx context.Context, key v1.Hash, l v1.Layer, msg string) error {
	r.key = key
	if err := r.b.opts.Store.CachePut(ctx, key, l, msg); err != nil {
		return fmt.Errorf("caching the step: %w", err)
	}
	r.b.remote.collect(r.st, key, l, msg)
	return nil
}

// copyInput is the cache input of a COPY or ADD from the build context:
// the expanded instruction, the WORKDIR and the digest of exactly the
// selected sources (through the store's stat index, so unchanged files
// are not read; an ADD URL without --checksum by the content downloaded
// before the lookup, as BuildKit keys HTTP sources). Nil (always run) for
// sources that cannot be known (errUncacheable).
func (r *stageRun) copyInput(ctx context.Context, cmd any, op copyOp) (any, error) {
	idx, err := r.b.statIndex(ctx)
	if err != nil {
		return nil, err
	}
	d, err := sourcesDigest(ctx, op, idx)
	if errors.Is(err, errUncacheable) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return struct {
		Cmd          any
		Workdir, Src string
	}{cmd, op.Workdir, d.String()}, nil
}
