package main

import (
	"archive/tar"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/registry"
)

// TestCLILazyPushBuild: an empty root building with --cache-from and
// --push stores no layer (they are mounted at the registry); `imgbuild
// push` to another repository and `imgbuild save` of that image still
// work: the push mounts, the save fetches the layers it writes.
func TestCLILazyPushBuild(t *testing.T) {
	f := newCacheFixture(t)
	ref := f.host + "/lazy/cache:buildcache"
	first, _ := f.build(t, t.TempDir(), "--cache-to", "type=registry,ref="+ref+",mode=max")

	root := t.TempDir()
	tag := f.host + "/lazy/app:1"
	digest, statuses := f.build(t, root, "--cache-from", ref, "--push", "-t", tag)
	checkSteps(t, "--cache-from --push", statuses, append(srcSteps, finalSteps...), "CACHED")
	if digest != first {
		t.Fatalf("pushed build %s, want %s", digest, first)
	}
	if n := layerFiles(t, root, tag); n != 0 {
		t.Errorf("the store holds %d of the image's layers, want 0", n)
	}

	tag2 := f.host + "/lazy/copy:1"
	if code, _, stderr := runCLI(t, "", "--root", root, "tag", tag, tag2); code != 0 {
		t.Fatalf("tag: %s", stderr)
	}
	if code, _, stderr := runCLI(t, "", "--root", root, "push", "--insecure-registry", f.host, tag2); code != 0 {
		t.Fatalf("push: %s", stderr)
	}
	img, err := registry.Pull(context.Background(), tag2, registry.Options{Insecure: []string{f.host}})
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("pushed copy: %v", err)
	}

	archive := filepath.Join(t.TempDir(), "app.tar")
	if code, _, stderr := runCLI(t, "", "--root", root, "save", "-o", archive, tag); code != 0 {
		t.Fatalf("save: %s", stderr)
	}
	saved, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(saved); err != nil {
		t.Fatalf("saved image: %v", err)
	}
	if n, want := layerFiles(t, root, tag), archiveLayers(t, archive); n != want {
		t.Errorf("after save the store holds %d layers, want %d", n, want)
	}
}

// layerFiles counts the layer blobs of the stored image ref that root's
// store holds.
func layerFiles(t *testing.T, root, ref string) int {
	t.Helper()
	code, stdout, stderr := runCLI(t, "", "--root", root, "inspect", ref)
	if code != 0 {
		t.Fatalf("inspect %s: %s", ref, stderr)
	}
	var out struct {
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"Layers"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || len(out.Layers) == 0 {
		t.Fatalf("inspect %s: %v: %s", ref, err, stdout)
	}
	n := 0
	for _, l := range out.Layers {
		if _, err := os.Stat(filepath.Join(root, "oci", "blobs", "sha256", strings.TrimPrefix(l.Digest, "sha256:"))); err == nil {
			n++
		}
	}
	return n
}

// archiveLayers counts the layer files of a docker-archive.
func archiveLayers(t *testing.T, path string) int {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	tr := tar.NewReader(fh)
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(h.Name, "blobs/sha256/") || strings.HasSuffix(h.Name, ".tar") || strings.HasSuffix(h.Name, ".tar.gz") {
			n++
		}
	}
}
