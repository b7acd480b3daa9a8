package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"

	"github.com/imgbuild/imgbuild/builder/run"
	"github.com/imgbuild/imgbuild/layers"
)

// stepMounts are the RUN --mount mounts of one step, with what the step
// needs them for: secret environment variables and resources to release
// when the step is over.
type stepMounts struct {
	mounts   []run.Mount
	env      []string          // secrets with env=NAME, NAME=VALUE
	caches   map[string]string // cache key -> directory held
	releases []func()
}

// release frees what the mounts held (stage views, copies, cache locks),
// newest first.
func (sm *stepMounts) release() {
	for i := len(sm.releases) - 1; i >= 0; i-- {
		sm.releases[i]()
	}
	sm.releases = nil
}

// withEnv is env with the secrets' variables set, overriding variables of
// the same name as BuildKit's.
func (sm *stepMounts) withEnv(env []string) []string {
	for _, kv := range sm.env {
		k, v, _ := strings.Cut(kv, "=")
		env = setEnv(env, k, v)
	}
	return env
}

// runMounts prepares the --mount flags of c, as BuildKit's Dockerfile
// frontend does: bind (the build context, a stage or an image; read-only
// unless rw, and then writes are discarded), cache (a directory of the
// store kept across steps and builds, never in a layer), tmpfs and secret.
// The caller releases the result once the step is over.
func (r *stageRun) runMounts(ctx context.Context, c *instructions.RunCommand) (*stepMounts, error) {
	sm := &stepMounts{}
	for _, m := range instructions.GetMounts(c) {
		var err error
		switch m.Type {
		case instructions.MountTypeBind:
			err = r.bindMount(ctx, sm, m)
		case instructions.MountTypeCache:
			err = r.cacheMount(ctx, sm, m)
		case instructions.MountTypeTmpfs:
			var target string
			if target, err = r.mountTarget(m); err == nil {
				sm.mounts = append(sm.mounts, run.Mount{Type: run.MountTmpfs, Target: target, Size: m.SizeLimit, ReadOnly: m.ReadOnly})
			}
		case instructions.MountTypeSecret:
			err = r.secretMount(sm, m)
		case instructions.MountTypeSSH:
			sm.release()
			return nil, errors.New("RUN --mount=type=ssh is not supported: imgbuild does not forward an SSH agent")
		default:
			err = errors.New("unknown mount type")
		}
		if err != nil {
			sm.release()
			return nil, fmt.Errorf("--mount=type=%s: %w", m.Type, err)
		}
	}
	return sm, nil
}

// mountTarget is the absolute target of m: relative targets are relative
// to the working directory, as BuildKit's.
func (r *stageRun) mountTarget(m *instructions.Mount) (string, error) {
	target := m.Target
	if !path.IsAbs(path.Clean(target)) {
		target = path.Join("/", r.workdirOrRoot(), target)
	}
	if target = path.Clean(target); target == "/" {
		return "", fmt.Errorf("invalid mount target %q", target)
	}
	return target, nil
}

// bindMount mounts a path of the build context or of a stage or image.
func (r *stageRun) bindMount(ctx context.Context, sm *stepMounts, m *instructions.Mount) error {
	target, err := r.mountTarget(m)
	if err != nil {
		return err
	}
	src := path.Join("/", m.Source)
	if m.From == "" {
		return r.contextBind(ctx, sm, src, target, m.ReadOnly)
	}
	root, _, err := r.mountFrom(ctx, sm, m.From)
	if err != nil {
		return err
	}
	f, err := pathrs.OpenInRoot(root, src)
	if err != nil {
		return fmt.Errorf("source %s not found in %s", src, m.From)
	}
	f.Close()
	// A view of the stage is private to this step: rw writes go to it and
	// are dropped with it.
	sm.mounts = append(sm.mounts, run.Mount{Type: run.MountBind, Target: target, Source: src, SourceRoot: root, ReadOnly: m.ReadOnly})
	return nil
}

// mountFrom prepares a view of the filesystem of a stage or image named by
// from= and returns its root and layers; the view goes with sm.
func (r *stageRun) mountFrom(ctx context.Context, sm *stepMounts, from string) (string, *stageResult, error) {
	res, err := r.fromResult(ctx, from)
	if err != nil {
		return "", nil, err
	}
	snap, err := r.b.snapshotter(ctx)
	if err != nil {
		return "", nil, err
	}
	view, err := snap.Prepare(ctx, res.layers)
	if err != nil {
		return "", nil, fmt.Errorf("from=%s: %w", from, err)
	}
	sm.releases = append(sm.releases, func() { snap.Release(context.WithoutCancel(ctx), view) })
	return view.Dir, res, nil
}

// fromResult is the result of the stage or image named by from=.
func (r *stageRun) fromResult(ctx context.Context, from string) (*stageResult, error) {
	st, err := r.b.plan.lookupStage(from, r.st)
	if err != nil {
		return nil, fmt.Errorf("from=%s: %w", from, err)
	}
	var res *stageResult
	if st != nil {
		res, err = r.b.stageResult(ctx, st)
	} else {
		res, err = r.b.fromImage(ctx, from, r.plat)
	}
	if err != nil {
		return nil, fmt.Errorf("from=%s: %w", from, err)
	}
	return res, nil
}

// contextBind mounts src of the build context on target. The context is
// bound directly when the mount is read-only and .dockerignore hides
// nothing below src; otherwise the step gets a copy of what the context
// shows there (without the ignored entries), which a rw mount may change
// and which goes with the step.
func (r *stageRun) contextBind(ctx context.Context, sm *stepMounts, src, target string, readOnly bool) error {
	bc := r.b.bctx
	host, err := securejoin.SecureJoinVFS(bc.Dir, src, contextVFS{bc})
	if err != nil {
		return fmt.Errorf("source %s: %w", src, err)
	}
	fi, err := contextVFS{bc}.Lstat(host) // what .dockerignore hides does not exist
	if err != nil {
		return fmt.Errorf("source %s not found in the build context", src)
	}
	rel, ok := bc.rel(host)
	if !ok {
		return fmt.Errorf("source %s escapes the build context", src)
	}
	if readOnly {
		hidden, err := bc.hiddenBelow(ctx, rel, fi)
		if err != nil {
			return err
		}
		if !hidden {
			sm.mounts = append(sm.mounts, run.Mount{Type: run.MountBind, Target: target, Source: "/" + rel, SourceRoot: bc.Dir, ReadOnly: true})
			return nil
		}
	}
	dir, err := os.MkdirTemp(r.b.tmp, "mount-")
	if err != nil {
		return err
	}
	sm.releases = append(sm.releases, func() { os.RemoveAll(dir) })
	name, err := bc.copyOut(ctx, rel, fi, dir)
	if err != nil {
		return fmt.Errorf("copying %s of the build context: %w", src, err)
	}
	sm.mounts = append(sm.mounts, run.Mount{Type: run.MountBind, Target: target, Source: name, SourceRoot: dir, ReadOnly: readOnly})
	return nil
}

// hiddenBelow reports whether .dockerignore hides an entry below the
// context path rel (fi is its Lstat).
func (bc *buildContext) hiddenBelow(ctx context.Context, rel string, fi os.FileInfo) (bool, error) {
	if bc.ignore == nil || !fi.IsDir() {
		return false, nil
	}
	_, hidden, err := bc.visible(ctx, rel)
	return hidden, err
}

// visible lists the entries below the context directory rel that
// .dockerignore leaves in the context, relative to rel, and whether it
// hides any.
func (bc *buildContext) visible(ctx context.Context, rel string) ([]string, bool, error) {
	root := filepath.Join(bc.Dir, filepath.FromSlash(rel))
	paths := []string{}
	hidden := false
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == root {
			return nil
		}
		r, _ := filepath.Rel(root, p)
		r = filepath.ToSlash(r)
		if bc.hidden(path.Join(rel, r), d.IsDir()) {
			hidden = true
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		paths = append(paths, r)
		return nil
	})
	return paths, hidden, err
}

// copyOut copies the context entry rel (fi is its Lstat), without what
// .dockerignore hides, into the empty directory dir, keeping owners,
// modes, xattrs, symlinks and hard links. It returns the copy's path in
// dir: "/" for a directory (dir itself), "/NAME" for a file.
func (bc *buildContext) copyOut(ctx context.Context, rel string, fi os.FileInfo, dir string) (string, error) {
	host := filepath.Join(bc.Dir, filepath.FromSlash(rel))
	if !fi.IsDir() {
		name := path.Base(rel)
		return "/" + name, copyTree(ctx, filepath.Dir(host), []string{name}, dir)
	}
	paths, _, err := bc.visible(ctx, rel)
	if err != nil {
		return "", err
	}
	if err := copyTree(ctx, host, paths, dir); err != nil {
		return "", err
	}
	return "/", copyDirMeta(host, dir)
}

// copyTree copies the entries paths (all of them when nil) of the tree at
// src into dst, through a layer tar, so with the store's own safe
// extraction.
func copyTree(ctx context.Context, src string, paths []string, dst string) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := layers.WriteTar(ctx, pw, src, layers.TarOptions{Paths: paths})
		pw.CloseWithError(err)
		done <- err
	}()
	err := layers.Apply(ctx, dst, pr, layers.ApplyOptions{NoWhiteouts: true, NoChown: os.Geteuid() != 0})
	if err == nil {
		_, err = io.Copy(io.Discard, pr) // what follows the end of the archive
	}
	pr.CloseWithError(errors.New("extraction stopped"))
	if werr := <-done; err == nil {
		err = werr
	}
	return err
}

// copyDirMeta gives the directory dst the mode and owner of src.
func copyDirMeta(src, dst string) error {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
			return err
		}
	}
	return unix.Chmod(dst, st.Mode&0o7777)
}

// secretMount gives the step the secret m names, as a file, an
// environment variable or both.
func (r *stageRun) secretMount(sm *stepMounts, m *instructions.Mount) error {
	id := m.CacheID
	if m.Source != "" {
		id = m.Source
	}
	if id == "" {
		if m.Target == "" {
			return errors.New("one of source, target required")
		}
		id = path.Base(m.Target)
	}
	data, ok := r.b.opts.Secrets[id]
	if !ok && m.Required {
		return fmt.Errorf("secret %s: not found", id)
	}
	target := m.Target
	if m.Env != nil {
		if *m.Env == "" {
			return fmt.Errorf("secret %s: env= needs a variable name", id)
		}
		// BuildKit sets the variable of a missing optional secret empty.
		sm.env = append(sm.env, *m.Env+"="+string(data))
	} else if target == "" {
		target = "/run/secrets/" + path.Base(id)
	}
	if target == "" || !ok {
		return nil
	}
	f := run.Mount{Type: run.MountFile, Target: path.Join("/", target), Data: data, Mode: 0o400}
	if m.UID != nil {
		f.UID = int(*m.UID)
	}
	if m.GID != nil {
		f.GID = int(*m.GID)
	}
	if m.Mode != nil {
		f.Mode = uint32(*m.Mode) & 0o7777
	}
	if path.Clean(f.Target) == "/" {
		return fmt.Errorf("invalid mount target %q", target)
	}
	sm.mounts = append(sm.mounts, f)
	return nil
}
