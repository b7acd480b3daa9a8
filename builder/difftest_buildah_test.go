package builder_test

// Running Debian's buildah (the reference of the differential tests) with
// all of its state in the test's temporary directory.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const buildahBinary = "/usr/bin/buildah"

// buildah runs buildah with its storage, configuration files, signature
// policy and auth file under one directory. (As root, containers/image still
// keeps its blob-info cache in /var/lib/containers/cache; buildah has no
// option to move it.)
type buildah struct {
	dir string
	env []string
}

func newBuildah(t *testing.T) *buildah {
	t.Helper()
	if _, err := os.Stat(buildahBinary); err != nil {
		t.Fatalf("buildah missing (%v): install it with `apt-get install -y buildah` (or .ci/install-deps)", err)
	}
	dir := t.TempDir()
	files := map[string]string{
		"policy.json":     `{"default":[{"type":"insecureAcceptAnything"}]}`,
		"registries.conf": "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
		"auth.json":       `{"auths":{}}`,
		"storage.conf":    "[storage]\ndriver = \"vfs\"\n",
		"containers.conf": "[engine]\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b := &buildah{dir: dir, env: []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + dir,
		"TMPDIR=" + dir,
		"XDG_RUNTIME_DIR=" + filepath.Join(dir, "xdg"),
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(dir, "registries.conf"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(dir, "storage.conf"),
		"CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf"),
		"REGISTRY_AUTH_FILE=" + filepath.Join(dir, "auth.json"),
		"BUILDAH_ISOLATION=chroot",
	}}
	t.Cleanup(func() {
		// vfs layers are plain directories, but buildah may leave its run
		// state busy; ask it to let go before t.TempDir removes the tree.
		_, _ = b.run(context.Background(), "rm", "--all")
	})
	return b
}

func (b *buildah) globalArgs() []string {
	return []string{
		"--root", filepath.Join(b.dir, "root"),
		"--runroot", filepath.Join(b.dir, "runroot"),
		"--storage-driver", "vfs",
	}
}

func (b *buildah) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, buildahBinary, append(b.globalArgs(), args...)...)
	cmd.Env = b.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.Bytes(), fmt.Errorf("buildah %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	return out.Bytes(), nil
}

// build runs `buildah bud` and returns the image read back from a
// docker-archive export.
func (b *buildah) build(ctx context.Context, name, contextDir, dockerfile string, args map[string]string, target, outDir string) (v1.Image, error) {
	tag := "localhost/diff-" + name + ":latest"
	bud := []string{
		"bud", "--format", "docker", "--layers", "--isolation", "chroot",
		"--identity-label=false", "--tls-verify=false", "--signature-policy", filepath.Join(b.dir, "policy.json"),
		"-f", dockerfile, "-t", tag,
	}
	if target != "" {
		bud = append(bud, "--target", target)
	}
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		bud = append(bud, "--build-arg", k+"="+args[k])
	}
	if _, err := b.run(ctx, append(bud, contextDir)...); err != nil {
		return nil, err
	}
	archive := filepath.Join(outDir, "buildah-"+name+".tar")
	if _, err := b.run(ctx, "push", "--signature-policy", filepath.Join(b.dir, "policy.json"),
		tag, "docker-archive:"+archive+":"+tag); err != nil {
		return nil, err
	}
	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		return nil, fmt.Errorf("reading buildah's export %s: %w", archive, err)
	}
	return img, nil
}
