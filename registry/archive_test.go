package registry

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// requireTool fails the test when a Debian tool the test runs is missing.
func requireTool(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: install it with `apt-get install -y %s`", tool, tool)
	}
	return p
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// skopeoInspect is the part of `skopeo inspect` output the tests check.
type skopeoInspect struct {
	Digest       string
	Architecture string
	Os           string
	Created      string
	Layers       []string
	Env          []string
}

func inspect(t *testing.T, ref string) skopeoInspect {
	t.Helper()
	var si skopeoInspect
	if err := json.Unmarshal(run(t, "skopeo", "inspect", ref), &si); err != nil {
		t.Fatalf("skopeo inspect %s: %v", ref, err)
	}
	return si
}

func diffIDs(t *testing.T, img v1.Image) []string {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range cfg.RootFS.DiffIDs {
		ids = append(ids, d.String())
	}
	return ids
}

func layerDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var ds []string
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d.String())
	}
	return ds
}

func TestWriteDockerArchive(t *testing.T) {
	requireTool(t, "skopeo")
	busybox := registrytest.BusyboxImage(t)
	marker := registrytest.MarkerImage(t, registrytest.IndexPlatforms()[1])
	untagged := whiteoutImage(t)
	imgs := []Tagged{
		{Image: busybox, Tags: []string{"busybox", "127.0.0.1:5000/team/bb:1"}},
		{Image: marker, Tags: []string{"user/marker:2"}},
		{Image: untagged},
	}
	file := filepath.Join(t.TempDir(), "images.tar")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteDockerArchive(t.Context(), f, imgs); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// manifest.json lists the images in order, tags in docker's short form.
	var manifest []archiveEntry
	if err := json.Unmarshal(run(t, "tar", "-xOf", file, "manifest.json"), &manifest); err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, m := range manifest {
		tags = append(tags, strings.Join(m.RepoTags, ","))
	}
	if got, want := strings.Join(tags, " | "), "busybox:latest,127.0.0.1:5000/team/bb:1 | user/marker:2 | "; got != want {
		t.Errorf("RepoTags %q, want %q", got, want)
	}
	checkArchiveWithGGCR(t, file, map[string]v1.Image{
		"busybox:latest": busybox, "127.0.0.1:5000/team/bb:1": busybox, "user/marker:2": marker,
	})
	// skopeo (containers/image, the library behind podman load) reads it too.
	checkArchiveWithSkopeo(t, file, map[string]v1.Image{
		"busybox:latest": busybox, "127.0.0.1:5000/team/bb:1": busybox, "user/marker:2": marker, "@2": untagged,
	})
	run(t, "skopeo", "copy", "-q", "docker-archive:"+file+":busybox:latest", "oci:"+filepath.Join(t.TempDir(), "oci")+":copied")

	// Deterministic: the same bytes again.
	var a, b bytes.Buffer
	if err := WriteDockerArchive(t.Context(), &a, imgs); err != nil {
		t.Fatal(err)
	}
	if err := WriteDockerArchive(t.Context(), &b, imgs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("WriteDockerArchive is not deterministic")
	}
}

// checkArchiveWithGGCR reads each tag of the archive back with tarball.Image.
func checkArchiveWithGGCR(t *testing.T, file string, want map[string]v1.Image) {
	t.Helper()
	opener := func() (io.ReadCloser, error) { return os.Open(file) }
	for s, img := range want {
		tag, err := name.NewTag(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tarball.Image(opener, &tag)
		if err != nil {
			t.Fatalf("tarball.Image %s: %v", s, err)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("validate.Image %s: %v", s, err)
		}
		gd, _ := got.Digest()
		wd, _ := img.Digest()
		if gd != wd {
			t.Errorf("%s read back as %s, want %s", s, gd, wd)
		}
	}
}

// checkArchiveWithSkopeo runs skopeo inspect docker-archive:FILE:REF.
func checkArchiveWithSkopeo(t *testing.T, file string, want map[string]v1.Image) {
	t.Helper()
	for s, img := range want {
		ref := "docker-archive:" + file + ":" + s
		si := inspect(t, ref)
		if got, want := strings.Join(si.Layers, ","), strings.Join(diffIDs(t, img), ","); got != want {
			t.Errorf("%s: layers %s, want %s", ref, got, want)
		}
		cfg, _ := img.ConfigFile()
		if si.Architecture != cfg.Architecture || si.Os != cfg.OS {
			t.Errorf("%s: platform %s/%s, want %s/%s", ref, si.Os, si.Architecture, cfg.OS, cfg.Architecture)
		}
	}
}

func TestWriteDockerArchiveErrors(t *testing.T) {
	img := registrytest.MarkerImage(t, registrytest.IndexPlatforms()[0])
	tests := []struct {
		name string
		imgs []Tagged
		want string
	}{
		{"no images", nil, "docker archive: no image given"},
		{"bad tag", []Tagged{{Image: img, Tags: []string{"Bad Tag"}}}, `docker archive: invalid tag "Bad Tag": `},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteDockerArchive(t.Context(), io.Discard, tc.imgs)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error %v, want prefix %q", err, tc.want)
			}
		})
	}
}

func TestDockerTag(t *testing.T) {
	tests := []struct{ in, want string }{
		{"busybox", "busybox:latest"},
		{"busybox:1", "busybox:1"},
		{"docker.io/library/busybox:1", "busybox:1"},
		{"index.docker.io/user/app", "user/app:latest"},
		{"user/app:1.0", "user/app:1.0"},
		{"127.0.0.1:5000/team/app:v2", "127.0.0.1:5000/team/app:v2"},
		{"reg.example.test/a/b/c:x", "reg.example.test/a/b/c:x"},
	}
	for _, tc := range tests {
		got, err := dockerTag(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("dockerTag(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
