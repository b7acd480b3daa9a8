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
	if c.From != "" {
		src, err := r.b.plan.lookupStage(c.From, r.st)
		if err != nil {
			return err
		}
		var res *stageResult
		if src != nil {
			res, err = r.b.stageResult(ctx, src)
		} else {
			res, err = r.b.fromImage(ctx, c.From, r.plat)
		}
		if err != nil {
			return fmt.Errorf("--from=%s: %w", c.From, err)
		}
		view, err := r.b.snap.Prepare(ctx, res.layers)
		if err != nil {
			return fmt.Errorf("--from=%s: %w", c.From, err)
		}
		defer r.b.snap.Release(context.WithoutCancel(ctx), view)
		op.SrcRoot = view.Dir
		op.Context = nil
	}
	return r.commitCopy(ctx, op, c.Link, copyHistory("COPY", c.SourcesAndDest, c.Parents, c.Chown, c.Chmod))
}

// add runs ADD: like COPY from the context, plus URLs and local archives.
func (r *stageRun) add(ctx context.Context, c *instructions.AddCommand) error {
	op := r.copyOp(c.SourcesAndDest, c.Chown, c.Chmod, c.ExcludePatterns)
	op.Add = true
	op.Checksum = c.Checksum
	op.Unpack = c.Unpack
	if c.KeepGitDir != nil {
		op.KeepGitDir = *c.KeepGitDir
	}
	if c.Checksum != "" && len(c.SourcePaths) != 1 {
		return errors.New("checksum can't be specified for multiple sources")
	}
	return r.commitCopy(ctx, op, c.Link, copyHistory("ADD", c.SourcesAndDest, false, c.Chown, c.Chmod))
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
// does not depend on the stage's filesystem.
func (r *stageRun) commitCopy(ctx context.Context, op copyOp, link bool, msg string) error {
	msg += " # buildkit"
	if !link {
		return r.withMount(ctx, msg, func(root string) error {
			op.DestRoot, op.UserRoot = root, root
			_, err := copyFiles(ctx, op)
			return err
		})
	}
	if chownByName(op.Chown) {
		return fmt.Errorf("--chown=%s: user and group names can't be resolved when used with --link, use numeric uid[:gid] instead", op.Chown)
	}
	dir, err := os.MkdirTemp(r.b.tmp, "link-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	op.DestRoot = dir
	changed, err := copyFiles(ctx, op)
	if err != nil {
		return err
	}
	l, err := r.b.opts.Store.WriteLayer(ctx, func(w io.Writer) error {
		if len(changed) == 0 {
			return tar.NewWriter(w).Close()
		}
		return layers.WriteTar(ctx, w, dir, layers.TarOptions{Paths: changed, SourceDateEpoch: r.b.epoch})
	}, r.b.opts.Layer)
	if err != nil {
		return err
	}
	r.addLayer(l, msg)
	return nil
}

// withMount runs fn on a writable view of the stage's filesystem and
// commits what it changed as the step's layer, with history createdBy. No
// change makes an empty layer (a tar of no entries), as BuildKit's.
func (r *stageRun) withMount(ctx context.Context, msg string, fn func(root string) error) error {
	snap := r.b.snap
	m, err := snap.Prepare(ctx, r.layers)
	if err != nil {
		return err
	}
	defer snap.Release(context.WithoutCancel(ctx), m)
	if err := fn(m.Dir); err != nil {
		return err
	}
	l, err := snap.Commit(ctx, m, layers.CommitOptions{Layer: r.b.opts.Layer, SourceDateEpoch: r.b.epoch})
	if err != nil {
		return err
	}
	if l == nil {
		if l, err = r.b.opts.Store.WriteLayer(ctx, func(w io.Writer) error {
			return tar.NewWriter(w).Close()
		}, r.b.opts.Layer); err != nil {
			return err
		}
	}
	r.addLayer(l, msg)
	return nil
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
	return r.withMount(ctx, msg, func(root string) error {
		uid, gid, err := lookupChown(root, r.cfg.Config.User) // "" is 0:0
		if err != nil {
			return err
		}
		_, err = mkdirAllInRoot(root, wd, uid, gid, r.b.epoch)
		return err
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
