package registry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

func ociDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	o, err := OCIMediaTypes(img)
	if err != nil {
		t.Fatal(err)
	}
	d, err := o.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// layoutEntries lists index.json as "ref.name=digest" (untagged: "=digest").
func layoutEntries(t *testing.T, dir string) []string {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range im.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("validate.Image %s: %v", d.Digest, err)
		}
		out = append(out, d.Annotations[AnnotationRefName]+"="+d.Digest.String())
	}
	return out
}

func TestWriteOCILayout(t *testing.T) {
	requireTool(t, "skopeo")
	requireTool(t, "umoci")
	busybox := registrytest.BusyboxImage(t)
	marker := registrytest.MarkerImage(t, registrytest.IndexPlatforms()[1])
	untagged := whiteoutImage(t)
	bb, mk, ut := ociDigest(t, busybox), ociDigest(t, marker), ociDigest(t, untagged)
	dir := filepath.Join(t.TempDir(), "layout")
	imgs := []Tagged{
		{Image: busybox, Tags: []string{"busybox", "reg.test:5000/team/bb:1"}},
		{Image: marker, Tags: []string{"user/marker:2"}},
		{Image: untagged},
	}
	if err := WriteOCILayout(t.Context(), dir, imgs); err != nil {
		t.Fatal(err)
	}
	want := []string{"latest=" + bb, "1=" + bb, "2=" + mk, "=" + ut}
	if got := layoutEntries(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("index.json\n got: %v\nwant: %v", got, want)
	}
	p, _ := layout.FromPath(dir)
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	if got := im.Manifests[1].Annotations[AnnotationImageName]; got != "reg.test:5000/team/bb:1" {
		t.Errorf("image name annotation %q", got)
	}
	if got := im.Manifests[0].Annotations[AnnotationImageName]; got != "docker.io/library/busybox:latest" {
		t.Errorf("image name annotation %q", got)
	}

	// skopeo looks entries up by the ref.name: the tag part.
	for ref, digest := range map[string]string{"latest": bb, "1": bb, "2": mk} {
		si := inspect(t, "oci:"+dir+":"+ref)
		if si.Digest != digest {
			t.Errorf("skopeo inspect oci:DIR:%s: digest %s, want %s", ref, si.Digest, digest)
		}
	}
	// umoci unpacks it.
	bundle := filepath.Join(t.TempDir(), "bundle")
	args := []string{"unpack", "--image", dir + ":latest", bundle}
	if os.Geteuid() != 0 {
		args = append([]string{"unpack", "--rootless"}, args[1:]...)
	}
	run(t, "umoci", args...)
	passwd, err := os.ReadFile(filepath.Join(bundle, "rootfs/etc/passwd"))
	if err != nil || !strings.HasPrefix(string(passwd), "root:x:0:0:") {
		t.Errorf("umoci rootfs etc/passwd: %v %q", err, passwd)
	}
	if fi, err := os.Stat(filepath.Join(bundle, "rootfs/bin/busybox")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("umoci rootfs bin/busybox: %v", err)
	}

	// Writing again adds nothing; a tag moved to another image replaces the
	// entry with that ref.name.
	if err := WriteOCILayout(t.Context(), dir, imgs); err != nil {
		t.Fatal(err)
	}
	if err := WriteOCILayout(t.Context(), dir, []Tagged{{Image: marker, Tags: []string{"busybox"}}}); err != nil {
		t.Fatal(err)
	}
	want = []string{"1=" + bb, "2=" + mk, "=" + ut, "latest=" + mk}
	if got := layoutEntries(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("index.json after rewrites\n got: %v\nwant: %v", got, want)
	}
	if si := inspect(t, "oci:"+dir+":latest"); si.Digest != mk {
		t.Errorf("latest is %s after the move, want %s", si.Digest, mk)
	}
}

func TestWriteOCILayoutAmbiguousTags(t *testing.T) {
	img := registrytest.MarkerImage(t, registrytest.IndexPlatforms()[0])
	dir := filepath.Join(t.TempDir(), "layout")
	err := WriteOCILayout(t.Context(), dir, []Tagged{{Image: img, Tags: []string{"a:1", "b:1"}}})
	want := "oci layout " + dir + `: tags docker.io/library/a:1 and docker.io/library/b:1 would both be named "1" in the layout`
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("layout written despite the error: %v", err)
	}
}

func TestOCIMediaTypes(t *testing.T) {
	img := registrytest.BusyboxImage(t)
	o, err := OCIMediaTypes(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(o); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	m, err := o.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("media types %s / %s", m.MediaType, m.Config.MediaType)
	}
	for _, l := range m.Layers {
		if l.MediaType != types.OCILayer {
			t.Errorf("layer media type %s", l.MediaType)
		}
	}
	wantCfg, _ := img.ConfigName()
	if m.Config.Digest != wantCfg {
		t.Errorf("config digest changed: %s, want %s", m.Config.Digest, wantCfg)
	}
	if got, want := strings.Join(layerDigests(t, o), ","), strings.Join(layerDigests(t, img), ","); got != want {
		t.Errorf("layer digests changed: %s, want %s", got, want)
	}
	again, err := OCIMediaTypes(o)
	if err != nil || again != o {
		t.Errorf("an OCI image is not returned as it is: %v", err)
	}
}
