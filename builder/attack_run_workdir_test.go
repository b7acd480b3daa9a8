package builder_test

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/imgbuild/imgbuild/builder"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// TestAttackRunWorkdirLinkMissingParents: WORKDIR through a link whose
// target's parents do not exist in the image. BuildKit creates the
// directories (mkdir -p of the path resolved in the root), inside the root;
// the host path the link names is untouched.
func TestAttackRunWorkdirLinkMissingParents(t *testing.T) {
	h := newAttackHost(t)
	for _, kind := range []string{"overlay", "copy"} {
		t.Run(kind, func(t *testing.T) {
			st := rtStore(t)
			symlinkImage(t, st, registrytest.BusyboxImage(t), "evil", []registrytest.File{{Name: "w", Link: h.dir + "/a/b"}})
			h.run(t, st, attackCase{df: "FROM evil\nWORKDIR /w/new\nRUN echo x > file\n",
				imageFiles: map[string]string{"{{DIR}}/a/b/new/file": "x\n"}}, func(o *builder.Options) { o.Snapshotter = kind })
		})
	}
}

// TestAttackRunCwdLinkMissingParents: the base image's WorkingDir goes
// through a link whose target's parents are missing; the sandbox makes the
// resolved path with its parents, as runc does.
func TestAttackRunCwdLinkMissingParents(t *testing.T) {
	h := newAttackHost(t)
	st := rtStore(t)
	base := registrytest.BusyboxImage(t)
	cf, err := base.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	cfg.WorkingDir = "/w/new"
	base, err = mutate.Config(base, cfg)
	if err != nil {
		t.Fatal(err)
	}
	symlinkImage(t, st, base, "evil", []registrytest.File{{Name: "w", Link: "/x/y"}})
	h.run(t, st, attackCase{df: "FROM evil\nRUN echo x > file\n",
		imageFiles: map[string]string{"x/y/new/file": "x\n"}}, nil)
}
