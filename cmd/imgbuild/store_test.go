package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgbuild/imgbuild/layers"
)

// storeWithImage makes a store under a temporary root holding a random
// two-layer image tagged ref, and points IMGBUILD_ROOT at it.
func storeWithImage(t *testing.T, ref string) (root string, img v1.Image) {
	t.Helper()
	ctx := context.Background()
	root = t.TempDir()
	st, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	img, err = random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	d, err := st.PutImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, ref, d); err != nil {
		t.Fatal(err)
	}
	t.Setenv(rootEnv, root)
	return root, img
}

// mustRun runs the CLI and fails the test unless it exits with want.
func mustRun(t *testing.T, want int, args ...string) (stdout, stderr string) {
	t.Helper()
	code, stdout, stderr := runCLI(t, "", args...)
	if code != want {
		t.Fatalf("imgbuild %s: exit %d, want %d; stderr: %s", strings.Join(args, " "), code, want, stderr)
	}
	return stdout, stderr
}

func TestImagesInspectTagRm(t *testing.T) {
	const ref = "example.com/team/app:1"
	_, img := storeWithImage(t, ref)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	out, _ := mustRun(t, 0, "images")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "REPOSITORY") {
		t.Fatalf("images:\n%s", out)
	}
	if f := strings.Fields(lines[1]); len(f) < 5 || f[0] != "example.com/team/app" || f[1] != "1" || f[2] != d.Hex[:12] {
		t.Errorf("images row = %q, want example.com/team/app 1 %s ...", lines[1], d.Hex[:12])
	}

	if out, _ = mustRun(t, 0, "images", "-q"); out != d.String()+"\n" {
		t.Errorf("images -q = %q, want %q", out, d.String()+"\n")
	}

	out, _ = mustRun(t, 0, "images", "--format", "json")
	var line imageLine
	if err := json.Unmarshal([]byte(out), &line); err != nil {
		t.Fatalf("images --format json: %v: %q", err, out)
	}
	if line.Repository != "example.com/team/app" || line.Tag != "1" || line.Digest != d.String() || line.Size <= 0 {
		t.Errorf("images --format json = %+v", line)
	}

	checkInspect(t, ref, img)

	mustRun(t, 0, "tag", ref, "app:2")
	if out, _ = mustRun(t, 0, "images"); strings.Count(out, d.Hex[:12]) != 2 {
		t.Errorf("after tag, images:\n%s", out)
	}
	if out, _ = mustRun(t, 0, "images", "-q"); out != d.String()+"\n" {
		t.Errorf("images -q lists a digest once per image: %q", out)
	}
	mustRun(t, 1, "tag", "nosuch:1", "app:3")

	if out, _ = mustRun(t, 0, "rm", "app:2"); out != "Untagged: app:2\n" {
		t.Errorf("rm output = %q", out)
	}
	if _, stderr := mustRun(t, 1, "rm", "app:2"); !strings.HasPrefix(stderr, "imgbuild: ") {
		t.Errorf("rm of a missing tag: stderr %q", stderr)
	}
	if _, stderr := mustRun(t, 1, "inspect", "app:2"); !strings.HasPrefix(stderr, "imgbuild: ") {
		t.Errorf("inspect of a removed tag: stderr %q", stderr)
	}
	if out, _ = mustRun(t, 0, "images", "-q"); out != d.String()+"\n" {
		t.Errorf("rm of one tag removed the other: %q", out)
	}
}

func checkInspect(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	out, _ := mustRun(t, 0, "inspect", ref)
	var got inspectOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("inspect: %v", err)
	}
	d, _ := img.Digest()
	m, _ := img.Manifest()
	cfg, _ := img.ConfigFile()
	rawCfg, _ := img.RawConfigFile()
	if got.Ref != ref || got.Digest != d.String() {
		t.Errorf("inspect Ref, Digest = %s, %s; want %s, %s", got.Ref, got.Digest, ref, d)
	}
	var gotMan v1.Manifest
	if err := json.Unmarshal(got.Manifest, &gotMan); err != nil || gotMan.Config.Digest != m.Config.Digest {
		t.Errorf("inspect Manifest = %s (%v)", got.Manifest, err)
	}
	if !jsonEqual(t, got.Config, rawCfg) {
		t.Errorf("inspect Config = %s, want %s", got.Config, rawCfg)
	}
	if len(got.Layers) != len(m.Layers) {
		t.Fatalf("inspect has %d layers, want %d", len(got.Layers), len(m.Layers))
	}
	for i, l := range got.Layers {
		want := inspectLayer{Digest: m.Layers[i].Digest.String(), DiffID: cfg.RootFS.DiffIDs[i].String(),
			Size: m.Layers[i].Size, MediaType: m.Layers[i].MediaType}
		if l != want {
			t.Errorf("inspect layer %d = %+v, want %+v", i, l, want)
		}
	}
}

func TestSave(t *testing.T) {
	skopeo := lookTool(t, "skopeo")
	const ref = "example.com/team/app:1"
	_, img := storeWithImage(t, ref)
	mustRun(t, 0, "tag", ref, "app:2")
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(t.TempDir(), "app.tar")
	out, _ := mustRun(t, 0, "save", "-o", file, ref, "app:2")
	if out != "" {
		t.Errorf("save -o wrote to stdout: %q", out)
	}
	// Both names are in the archive and name the same image.
	for _, name := range []string{ref, "docker.io/library/app:2"} {
		cmd := exec.Command(skopeo, "inspect", "--config", "docker-archive:"+file+":"+name)
		cfg, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, stderrOf(err))
		}
		if !jsonEqual(t, cfg, rawCfg) {
			t.Errorf("skopeo config of %s = %s, want %s", name, cfg, rawCfg)
		}
	}

	// No -o: stdout (not a terminal here), same archive.
	code, stdout, stderr := runCLI(t, "", "save", "app:2")
	if code != 0 {
		t.Fatalf("save to stdout: exit %d: %s", code, stderr)
	}
	if !tarHas(t, []byte(stdout), "manifest.json") {
		t.Error("save to stdout: no manifest.json in the archive")
	}
	mustRun(t, 1, "save", "-o", filepath.Join(t.TempDir(), "x.tar"), "nosuch:1")
}

func TestPush(t *testing.T) {
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/team/app:1"
	_, img := storeWithImage(t, ref)
	mustRun(t, 0, "tag", ref, host+"/team/app:latest")

	out, _ := mustRun(t, 0, "push", "--insecure-registry", host, ref, host+"/team/app:latest")
	if strings.Count(out, "pushed") != 2 {
		t.Errorf("push output = %q", out)
	}
	want, _ := img.Digest()
	for _, tag := range []string{"1", "latest"} {
		r, err := name.NewTag(host+"/team/app:"+tag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := remote.Head(r)
		if err != nil {
			t.Fatalf("%s not pushed: %v", r, err)
		}
		if desc.Digest != want {
			t.Errorf("%s = %s, want %s", r, desc.Digest, want)
		}
	}
	mustRun(t, 1, "push", host+"/team/nosuch:1")
}

func TestPrune(t *testing.T) {
	storeWithImage(t, "app:1")
	mustRun(t, 0, "rm", "app:1")
	// The untagged image's four blobs (two layers, config, manifest) go.
	out, _ := mustRun(t, 0, "prune")
	if !strings.HasPrefix(out, "Deleted 0 build cache records, 4 blobs, 0 untagged images, 0 extracted layer trees and 0 cache mounts; total reclaimed space: ") {
		t.Errorf("prune output = %q", out)
	}
}

func lookTool(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is needed (apt-get install -y %s): %v", tool, tool, err)
	}
	return p
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%v: %s", err, a)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	xj, _ := json.Marshal(x)
	yj, _ := json.Marshal(y)
	return bytes.Equal(xj, yj)
}

func tarHas(t *testing.T, b []byte, name string) bool {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return false
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		if h.Name == name {
			return true
		}
	}
}
