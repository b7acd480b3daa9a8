package builder

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/imgbuild/imgbuild/layers"
)

// copy runs COPY: from the build context, an earlier stage or an image.
func (r *stageRun) copy(ctx context.Context, c *instructions.CopyCommand) error {
	op := r.copyOp(c.SourcesAndDest, c.Chown, c.Chmod, c.ExcludePatterns)
	op.Parents = c.Parents
	msg := copyHistory("COPY", c.SourcesAndDest, c.Parents, c.Chown, c.Chmod)
	if c.From == "" {
		input, err := r.copyInput(ctx, c, op)
		if err != nil {
			return err
		}
		return r.commitCopy(ctx, op, c.Link, msg, input)
	}
	res, err := r.fromResult(ctx, c.From)
	if err != nil {
		return fmt.Errorf("-%w", err) // "--from=NAME: ..."
	}
	op.Context = nil
	return r.copyFrom(ctx, c, op, res, msg)
}

// copyFrom runs COPY --from. Its cache key is first the source's key (a
// hit then prepares nothing); on a miss, the content of exactly the
// selected source files, so that a source stage rebuilt with the same
// result still hits, as under BuildKit. The steps after it chain from the
// content key either way (CacheRecord.Next).
func (r *stageRun) copyFrom(ctx context.Context, c *instructions.CopyCommand, op copyOp, res *stageResult, msg string) error {
	type input struct {
		Cmd          any
		Workdir, Src string
	}
	byKey, err := r.stepKey("copy-from", input{c, op.Workdir, res.key.String()})
	if err != nil {
		return err
	}
	if hit, err := r.cached(ctx, byKey, msg+" # buildkit"); err != nil || hit {
		return err
	}
	snap, err := r.b.snapshotter(ctx)
	if err != nil {
		return err
	}
	view, err := snap.Prepare(ctx, res.layers)
	if err != nil {
		return fmt.Errorf("--from=%s: %w", c.From, err)
	}
	defer snap.Release(context.WithoutCancel(ctx), view)
	op.SrcRoot = view.Dir
	// No stat index: the view's path is new on every build, its entries
	// would never be used again (and the copy reads these files anyway).
	d, err := sourcesDigest(ctx, op, nil)
	if err != nil {
		return err
	}
	if err := r.commitCopy(ctx, op, c.Link, msg, input{c, op.Workdir, d.String()}); err != nil {
		return err
	}
	return r.rememberNext(ctx, byKey, r.key, r.layers[len(r.layers)-1], msg+" # buildkit")
}

// add runs ADD: like COPY from the context, plus URLs and local archives.
func (r *stageRun) add(ctx context.Context, c *instructions.AddCommand) error {
	op := r.copyOp(c.SourcesAndDest, c.Chown, c.Chmod, c.ExcludePatterns)
	op.Add = true
	op.Checksum = c.Checksum
	op.Unpack = c.Unpack
	op.TempDir = r.b.tmp                                      // the build's directory in the store, cleaned even after a kill
	op.URLCache, op.Revalidate = r.b.opts.Store, r.useCache() // If-None-Match unless the step runs anyway
	if c.KeepGitDir != nil {
		op.KeepGitDir = *c.KeepGitDir
	}
	if c.Checksum != "" && len(c.SourcePaths) != 1 {
		return errors.New("checksum can't be specified for multiple sources")
	}
	cleanup, err := prefetch(ctx, &op) // URLs without --checksum: their key is their content
	if err != nil {
		return err
	}
	defer cleanup()
	input, err := r.copyInput(ctx, c, op)
	if err != nil {
		return err
	}
	return r.commitCopy(ctx, op, c.Link, copyHistory("ADD", c.SourcesAndDest, false, c.Chown, c.Chmod), input)
}

func (r *stageRun) copyOp(sd instructions.SourcesAndDest, chown, chmod string, excludes []string) copyOp {
	op := copyOp{
		Context: r.b.bctx, Sources: sd.SourcePaths, Dest: sd.DestPath,
		Workdir: r.workdirOrRoot(),
		Chown:   chown, Chmod: chmod, Excludes: excludes, SourceDateEpoch: r.b.epoch,
	}
	for _, h := range sd.SourceContents {
		op.Heredocs = append(op.Heredocs, heredocSource{Name: h.Path, Data: []byte(h.Data)})
	}
	return op
}

// commitCopy performs op and commits its changes as one layer. With --link
// the files are written into an empty directory first, so that the layer
// does not depend on the stage's filesystem. input is the step's cache
// input (nil: not cacheable).
func (r *stageRun) commitCopy(ctx context.Context, op copyOp, link bool, msg string, input any) error {
	msg += " # buildkit"
	if link && chownByName(op.Chown) {
		return fmt.Errorf("--chown=%s: user and group names can't be resolved when used with --link, use numeric uid[:gid] instead", op.Chown)
	}
	kind := "copy"
	if link {
		kind = "copy-link"
	}
	return r.fsStep(ctx, kind, input, msg, func() (v1.Layer, error) {
		if !link {
			return r.onMount(ctx, func(root string) error {
				op.DestRoot, op.UserRoot = root, root
				_, err := copyFiles(ctx, op)
				return err
			})
		}
		return r.linkLayer(ctx, op)
	})
}

// linkLayer writes the files of op into an empty directory and makes them
// a layer.
func (r *stageRun) linkLayer(ctx context.Context, op copyOp) (v1.Layer, error) {
	dir, err := os.MkdirTemp(r.b.tmp, "link-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	op.DestRoot = dir
	changed, err := copyFiles(ctx, op)
	if err != nil {
		return nil, err
	}
	return r.b.opts.Store.WriteLayer(ctx, func(w io.Writer) error {
		if len(changed) == 0 {
			return tar.NewWriter(w).Close()
		}
		return layers.WriteTar(ctx, w, dir, layers.TarOptions{Paths: changed, SourceDateEpoch: r.b.epoch})
	}, r.b.opts.Layer)
}

// fsStep runs a filesystem step with history createdBy msg: from the cache
// when the key of (kind, input) is there, else through produce, whose
// layer is then cached. A nil input is a step that cannot be cached: it
// always runs, and the keys after it follow its layer's content.
func (r *stageRun) fsStep(ctx context.Context, kind string, input any, msg string, produce func() (v1.Layer, error)) error {
	var key v1.Hash
	if input != nil {
		k, err := r.stepKey(kind, input)
		if err != nil {
			return err
		}
		key = k
		if hit, err := r.cached(ctx, key, msg); err != nil || hit {
			return err
		}
	}
	l, err := produce()
	if err != nil {
		return err
	}
	r.addLayer(l, msg)
	if input == nil {
		diffID, err := l.DiffID()
		if err != nil {
			return err
		}
		r.key, err = r.stepKey("content", diffID.String())
		return err
	}
	return r.remember(ctx, key, l, msg)
}

// onMount runs fn on a writable view of the stage's filesystem and commits
// what it changed as a layer. No change makes an empty layer (a tar of no
// entries), as BuildKit's.
func (r *stageRun) onMount(ctx context.Context, fn func(root string) error) (v1.Layer, error) {
	snap, err := r.b.snapshotter(ctx)
	if err != nil {
		return nil, err
	}
	// Lazy layers (a base pulled lazily, cache hits) are fetched in
	// parallel rather than one by one as Prepare extracts them.
	if err := r.b.opts.Store.FetchLayers(ctx, r.layers); err != nil {
		return nil, err
	}
	m, err := snap.Prepare(ctx, r.layers)
	if err != nil {
		return nil, err
	}
	defer snap.Release(context.WithoutCancel(ctx), m)
	if err := fn(m.Dir); err != nil {
		return nil, err
	}
	l, err := snap.Commit(ctx, m, layers.CommitOptions{Layer: r.b.opts.Layer, SourceDateEpoch: r.b.epoch})
	if err != nil || l != nil {
		return l, err
	}
	return r.b.opts.Store.WriteLayer(ctx, func(w io.Writer) error {
		return tar.NewWriter(w).Close()
	}, r.b.opts.Layer)
}

func (r *stageRun) addLayer(l v1.Layer, createdBy string) {
	r.layers = append(r.layers, l)
	r.history(createdBy, true)
}

// copyHistory is BuildKit's history text for COPY and ADD.
func copyHistory(name string, sd instructions.SourcesAndDest, parents bool, chown, chmod string) string {
	msg := name
	if parents {
		msg += " --parents"
	}
	if chown != "" {
		msg += " --chown=" + chown
	}
	if chmod != "" {
		msg += " --chmod=" + chmod
	}
	for _, s := range sd.SourcePaths {
		msg += " " + s
	}
	for _, s := range sd.SourceContents {
		msg += " <<" + s.Path
	}
	return msg + " " + sd.DestPath
}

// chownByName reports whether a --chown value names a user or group.
func chownByName(s string) bool {
	if s == "" {
		return false
	}
	for _, part := range strings.SplitN(s, ":", 2) {
		for _, ch := range part {
			if ch < '0' || ch > '9' {
				return true
			}
		}
	}
	return false
}

// fromImage resolves an image named by COPY --from, once per build.
func (b *build) fromImage(ctx context.Context, ref string, plat v1.Platform) (*stageResult, error) {
	b.imagesMu.Lock()
	defer b.imagesMu.Unlock()
	if res, ok := b.images[ref]; ok {
		return res, nil
	}
	res, err := b.image(ctx, ref, plat)
	if err != nil {
		return nil, err
	}
	b.images[ref] = res
	return res, nil
}

// workdir sets WORKDIR and creates it, owned by the current USER, as BuildKit.
func (r *stageRun) workdir(ctx context.Context, c *instructions.WorkdirCommand) error {
	wd := r.resolveWorkdir(c.Path)
	r.cfg.Config.WorkingDir = wd
	msg := "WORKDIR " + wd
	if wd == "/" {
		r.history(msg, false)
		return nil
	}
	input := struct{ Dir, User string }{wd, r.cfg.Config.User}
	return r.fsStep(ctx, "workdir", input, msg, func() (v1.Layer, error) {
		return r.onMount(ctx, func(root string) error {
			uid, gid, err := lookupChown(root, r.cfg.Config.User) // "" is 0:0
			if err != nil {
				return err
			}
			_, err = mkdirAllInRoot(root, wd, uid, gid, r.b.epoch)
			return err
		})
	})
}

func (r *stageRun) workdirOrRoot() string {
	if r.cfg.Config.WorkingDir == "" {
		return "/"
	}
	return r.cfg.Config.WorkingDir
}

// relInRoot is the slash path of abs (inside root) relative to root.
func relInRoot(root, abs string) (string, error) {
	rel, err := filepath.Rel(root, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("path %s escapes the root", abs)
	}
	return path.Clean(filepath.ToSlash(rel)), nil
}
