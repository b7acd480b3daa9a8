//go:build linux

package layers_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/layers"
)

// lookTool finds a Debian tool the tests need; missing tools fail the test
// (CI installs them), they never skip it.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (apt-get install -y %s): %v", name, name, err)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(lookTool(t, name), args...)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %q: %v\n%s", name, args, err, stderr)
	}
	return out
}

// TestStoreReadableBySkopeoAndUmoci checks the documented commands against
// a store: skopeo inspect/copy oci:ROOT/oci:TAG and umoci unpack --image
// ROOT/oci:TAG, for tags with a registry port and a namespace.
func TestStoreReadableBySkopeoAndUmoci(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	src := t.TempDir()
	makeFixture(t, src, userNodes())
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("hello from imgbuild\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := treeLayer(t, s, src, layers.LayerOptions{})
	img := ociImage(t, time.Unix(1700000000, 0), l)
	d := putImage(t, s, img, "user/app:1.0", "localhost:5000/team/x")
	raw, _ := img.RawManifest()
	layout := filepath.Join(s.Root(), "oci")

	for _, ref := range []string{"user/app:1.0", "localhost:5000/team/x:latest"} {
		var insp struct{ Digest string }
		if err := json.Unmarshal(runTool(t, "skopeo", "inspect", "oci:"+layout+":"+ref), &insp); err != nil {
			t.Fatal(err)
		}
		if insp.Digest != d.String() {
			t.Errorf("skopeo inspect %s: digest %s, want %s", ref, insp.Digest, d)
		}
		if got := runTool(t, "skopeo", "inspect", "--raw", "oci:"+layout+":"+ref); string(got) != string(raw) {
			t.Errorf("skopeo inspect --raw %s: manifest differs", ref)
		}
	}

	dir := filepath.Join(t.TempDir(), "copy")
	runTool(t, "skopeo", "copy", "oci:"+layout+":user/app:1.0", "dir:"+dir)
	if got, err := os.ReadFile(filepath.Join(dir, "manifest.json")); err != nil || string(got) != string(raw) {
		t.Errorf("skopeo copy to dir: manifest %s (%v)", got, err)
	}

	bundle := filepath.Join(t.TempDir(), "bundle")
	args := []string{"unpack", "--image", layout + ":user/app:1.0", bundle}
	if os.Geteuid() != 0 {
		args = append([]string{"--rootless"}, args...)
	}
	runTool(t, "umoci", args...)
	rootfs := filepath.Join(bundle, "rootfs")
	if b, err := os.ReadFile(filepath.Join(rootfs, "hello")); err != nil || string(b) != "hello from imgbuild\n" {
		t.Errorf("umoci unpack: hello = %q (%v)", b, err)
	}
	if target, err := os.Readlink(filepath.Join(rootfs, "ln")); err != nil || target != "../../outside" {
		t.Errorf("umoci unpack: symlink ln -> %q (%v)", target, err)
	}
	if fi, err := os.Stat(filepath.Join(rootfs, "d", "x")); err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("umoci unpack: d/x lost its setuid bit (%v, %v)", fi, err)
	}
	// umoci reads the layout; the store must still be whole.
	if _, err := s.Image(ctx, "user/app:1.0"); err != nil {
		t.Error(err)
	}
}
