package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder/run"
)

// cacheMountsDir is the directory of the store's root that holds the
// directories of RUN --mount=type=cache, one directory per cache key:
//
//	cache-mounts/            0700: what steps leave there (setuid files,
//	  <sha256(key)[:32]>/    device nodes) is out of reach of host users
//	    key                  the key, for humans
//	    create.lock          flock(2): held while an instance is created
//	    N.lock, N/           instance N and its lock: shared by
//	                         sharing=shared users, exclusive for locked and
//	                         private ones; private users take the first
//	                         instance no one holds, or a new one
//
// Caches persist across builds and are shared by the processes using the
// store; PruneCacheMounts (imgbuild prune --all) removes those not in use.
const cacheMountsDir = "cache-mounts"

// cacheMount mounts a persistent cache directory, as BuildKit's cache
// mounts: its key is the id (default: the target as written), plus the
// stage or image it is seeded from= and the mode/uid/gid it is created
// with, when given.
func (r *stageRun) cacheMount(ctx context.Context, sm *stepMounts, m *instructions.Mount) error {
	target, err := r.mountTarget(m)
	if err != nil {
		return err
	}
	id := m.CacheID
	if id == "" {
		id = path.Clean(m.Target)
	}
	key := "id=" + id
	src := path.Join("/", m.Source)
	var from *stageResult
	if m.From != "" {
		if from, err = r.fromResult(ctx, m.From); err != nil {
			return err
		}
		chain, err := layerChain(from)
		if err != nil {
			return err
		}
		key += "\nfrom=" + chain + "\nsource=" + src
	}
	perm := m.Mode != nil || m.UID != nil || m.GID != nil
	mode, uid, gid := uint64(0o755), uint64(0), uint64(0)
	for _, v := range []struct{ dst, src *uint64 }{{&mode, m.Mode}, {&uid, m.UID}, {&gid, m.GID}} {
		if v.src != nil {
			*v.dst = *v.src
		}
	}
	if perm {
		key += fmt.Sprintf("\nperm=%o:%d:%d", mode, uid, gid)
	}
	seed := func(ctx context.Context, dir string) error {
		if from != nil {
			if err := r.seedCache(ctx, from, m.From, src, dir); err != nil {
				return err
			}
			if !perm {
				return nil
			}
		}
		if err := os.Lchown(dir, int(uid), int(gid)); err != nil && os.Geteuid() == 0 {
			return err
		}
		return unix.Chmod(dir, uint32(mode)&0o7777)
	}
	dir, err := sm.cacheDir(ctx, filepath.Join(r.b.opts.Store.Root(), cacheMountsDir), key, m.CacheSharing, seed)
	if err != nil {
		return fmt.Errorf("cache %s: %w", id, err)
	}
	source := "/"
	if from == nil && src != "/" { // a subdirectory of the cache
		if err := pathrs.MkdirAll(dir, src, 0o755); err != nil {
			return fmt.Errorf("cache %s: source %s: %w", id, src, err)
		}
		source = src
	}
	sm.mounts = append(sm.mounts, run.Mount{Type: run.MountBind, Target: target, Source: source, SourceRoot: dir, ReadOnly: m.ReadOnly})
	return nil
}

// layerChain identifies a stage's filesystem by its layers' diffIDs.
func layerChain(res *stageResult) (string, error) {
	h := sha256.New()
	for _, l := range res.layers {
		d, err := l.DiffID()
		if err != nil {
			return "", err
		}
		fmt.Fprintln(h, d)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// seedCache copies the directory src of from's filesystem into dir.
func (r *stageRun) seedCache(ctx context.Context, from *stageResult, name, src, dir string) error {
	snap, err := r.b.snapshotter(ctx)
	if err != nil {
		return err
	}
	view, err := snap.Prepare(ctx, from.layers)
	if err != nil {
		return fmt.Errorf("from=%s: %w", name, err)
	}
	defer snap.Release(context.WithoutCancel(ctx), view)
	host, err := securejoin.SecureJoin(view.Dir, src)
	if err != nil {
		return err
	}
	if fi, err := os.Lstat(host); err != nil || !fi.IsDir() {
		return fmt.Errorf("source %s is not a directory in %s", src, name)
	}
	if err := copyTree(ctx, host, nil, dir); err != nil {
		return fmt.Errorf("seeding from %s: %w", name, err)
	}
	return copyDirMeta(host, dir)
}

// cacheDir returns the directory of the cache with key under base, held
// as sharing says until sm is released, and created with seed when new.
// A key already held by sm is not locked again.
func (sm *stepMounts) cacheDir(ctx context.Context, base, key string, sharing instructions.ShareMode, seed func(context.Context, string) error) (string, error) {
	if dir, ok := sm.caches[key]; ok {
		return dir, nil
	}
	if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	sum := sha256.Sum256([]byte(key))
	kdir := filepath.Join(base, hex.EncodeToString(sum[:16]))
	if err := os.Mkdir(kdir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	var (
		inst    int
		release func()
		err     error
	)
	switch sharing {
	case "", instructions.MountSharingShared:
		release, err = flockWait(ctx, filepath.Join(kdir, "0.lock"), unix.LOCK_SH)
	case instructions.MountSharingLocked:
		release, err = flockWait(ctx, filepath.Join(kdir, "0.lock"), unix.LOCK_EX)
	case instructions.MountSharingPrivate:
		for inst = 0; ; inst++ {
			release, err = flockTry(filepath.Join(kdir, strconv.Itoa(inst)+".lock"))
			if release != nil || err != nil {
				break
			}
		}
	default:
		err = fmt.Errorf("unknown sharing mode %q", sharing)
	}
	if err != nil {
		return "", err
	}
	dir := filepath.Join(kdir, strconv.Itoa(inst))
	if err := createCache(ctx, kdir, dir, key, seed); err != nil {
		release()
		return "", err
	}
	if sm.caches == nil {
		sm.caches = map[string]string{}
	}
	sm.caches[key] = dir
	sm.releases = append(sm.releases, release)
	return dir, nil
}

// createCache creates the instance dir of the cache in kdir when it is
// missing: seeded in a temporary directory, then renamed, under kdir's
// creation lock (which also makes leftovers of dead processes safe to
// remove).
func createCache(ctx context.Context, kdir, dir, key string, seed func(context.Context, string) error) error {
	unlock, err := flockWait(ctx, filepath.Join(kdir, "create.lock"), unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Lstat(dir); err == nil {
		return nil
	}
	ents, _ := os.ReadDir(kdir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".new-") {
			os.RemoveAll(filepath.Join(kdir, e.Name()))
		}
	}
	if err := os.WriteFile(filepath.Join(kdir, "key"), []byte(key+"\n"), 0o600); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(kdir, ".new-")
	if err != nil {
		return err
	}
	err = unix.Chmod(tmp, 0o755)
	if err == nil {
		err = seed(ctx, tmp)
	}
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		os.RemoveAll(tmp)
	}
	return err
}

// flockWait takes a flock(2) lock (how is LOCK_SH or LOCK_EX) on the file
// p, created if needed, waiting until it is granted or ctx is done.
func flockWait(ctx context.Context, p string, how int) (func(), error) {
	delay := time.Millisecond
	for {
		release, err := flockHow(p, how)
		if release != nil || err != nil {
			return release, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %s: %w", filepath.Base(p), ctx.Err())
		case <-time.After(delay):
		}
		if delay < 100*time.Millisecond {
			delay *= 2
		}
	}
}

// flockTry takes an exclusive flock(2) lock on p if no one holds one; nil
// release and nil error mean someone does.
func flockTry(p string) (func(), error) { return flockHow(p, unix.LOCK_EX) }

func flockHow(p string, how int) (func(), error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
	if err == nil {
		return func() { f.Close() }, nil // closing the file drops the lock
	}
	f.Close()
	if errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
		return nil, nil
	}
	return nil, fmt.Errorf("flock %s: %w", filepath.Base(p), err)
}
