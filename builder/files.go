package builder

import (
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
		op.SrcRoot = res.rootfs
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
		Workdir: r.workdirOrRoot(), DestRoot: r.rootfs, UserRoot: r.rootfs,
		Chown: chown, Chmod: chmod, Excludes: excludes, SourceDateEpoch: r.b.epoch,
	}
	for _, h := range sd.SourceContents {
		op.Heredocs = append(op.Heredocs, heredocSource{Name: h.Path, Data: []byte(h.Data)})
	}
	return op
}

// commitCopy performs op and commits its changes as one layer. With --link
// the files are written into an empty directory first, so the layer does not
// depend on the stage's filesystem, then applied on top of it.
func (r *stageRun) commitCopy(ctx context.Context, op copyOp, link bool, msg string) error {
	if link {
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
		if _, err := copyFiles(ctx, op); err != nil {
			return err
		}
		l, err := r.writeLayer(ctx, dir, nil)
		if err != nil {
			return err
		}
		if err := applyLayer(ctx, r.rootfs, l); err != nil {
			return err
		}
		r.addLayer(l, msg)
		return nil
	}
	changed, err := copyFiles(ctx, op)
	if err != nil {
		return err
	}
	return r.commitPaths(ctx, changed, msg)
}

// commitPaths writes the given rootfs entries (and their parents) as a layer;
// no entries means an empty history entry and no layer.
func (r *stageRun) commitPaths(ctx context.Context, changed []string, msg string) error {
	if len(changed) == 0 {
		r.history(msg, false)
		return nil
	}
	l, err := r.writeLayer(ctx, r.rootfs, changed)
	if err != nil {
		return err
	}
	r.addLayer(l, msg)
	return nil
}

func (r *stageRun) writeLayer(ctx context.Context, root string, paths []string) (v1.Layer, error) {
	return r.b.opts.Store.WriteLayer(ctx, func(w io.Writer) error {
		return layers.WriteTar(ctx, w, root, layers.TarOptions{Paths: paths, SourceDateEpoch: r.b.epoch})
	}, r.b.opts.Layer)
}

func (r *stageRun) addLayer(l v1.Layer, msg string) {
	r.layers = append(r.layers, l)
	r.history(msg+" # buildkit", true)
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

// fromImage materializes an image named by COPY --from, once per build.
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
	if res.rootfs, err = b.materialize(ctx, res.layers); err != nil {
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
	uid, gid, err := lookupChown(r.rootfs, r.cfg.Config.User) // "" is 0:0
	if err != nil {
		return err
	}
	created, err := mkdirAllInRoot(r.rootfs, wd, uid, gid, r.b.epoch)
	if err != nil {
		return err
	}
	return r.commitPaths(ctx, created, msg)
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
