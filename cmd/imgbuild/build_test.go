package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// writeContext makes a build context with the given files.
func writeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const helloDockerfile = "FROM scratch\nCOPY hello.txt /hello.txt\nLABEL a=b\n"

func TestBuild(t *testing.T) {
	skopeo := lookTool(t, "skopeo")
	t.Setenv(rootEnv, t.TempDir())
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	ctxDir := writeContext(t, map[string]string{"Dockerfile": helloDockerfile, "hello.txt": "hello\n"})
	out := t.TempDir()
	iid, meta, oci := filepath.Join(out, "iid"), filepath.Join(out, "meta.json"), filepath.Join(out, "oci")

	code, stdout, stderr := runCLI(t, "", "-t", "app:1", ctxDir, "--tag", "app:latest", "--label", "x=y",
		"--iidfile", iid, "--metadata-file", meta, "-o", "type=oci,dest="+oci)
	if code != 0 {
		t.Fatalf("build: exit %d: %s", code, stderr)
	}
	digest := strings.TrimSuffix(stdout, "\n")
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != 71 || strings.Contains(digest, "\n") {
		t.Fatalf("build stdout = %q, want one digest line", stdout)
	}
	for _, want := range []string{"#1 [", "] FROM scratch\n", "COPY hello.txt /hello.txt\n", " DONE "} {
		if !strings.Contains(stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, stderr)
		}
	}
	if b, err := os.ReadFile(iid); err != nil || string(b) != digest {
		t.Errorf("--iidfile = %q (%v), want %q", b, err, digest)
	}
	var m map[string]any
	if b, err := os.ReadFile(meta); err != nil || json.Unmarshal(b, &m) != nil {
		t.Fatalf("--metadata-file: %v: %s", err, b)
	}
	if m["containerimage.digest"] != digest || m["image.name"] != "app:1,app:latest" ||
		!strings.HasPrefix(m["containerimage.config.digest"].(string), "sha256:") {
		t.Errorf("--metadata-file = %v", m)
	}
	if d, _ := m["containerimage.descriptor"].(map[string]any); d["digest"] != digest {
		t.Errorf("metadata descriptor = %v", m["containerimage.descriptor"])
	}

	// The store has both tags; the OCI layout holds the same image.
	if q, _ := mustRun(t, 0, "images", "-q"); q != digest+"\n" {
		t.Errorf("images -q = %q, want %q", q, digest)
	}
	insp, err := exec.Command(skopeo, "inspect", "oci:"+oci+":1").Output()
	if err != nil {
		t.Fatalf("skopeo inspect: %v: %s", err, stderrOf(err))
	}
	var si struct {
		Digest string
		Labels map[string]string
	}
	if err := json.Unmarshal(insp, &si); err != nil {
		t.Fatal(err)
	}
	if si.Digest != digest || si.Labels["a"] != "b" || si.Labels["x"] != "y" {
		t.Errorf("skopeo inspect oci = %+v, want digest %s, labels a=b x=y", si, digest)
	}

	// Quiet: the digest only (the same image again), nothing on stderr.
	code, stdout, stderr = runCLI(t, "", "build", "-q", "--label", "x=y", ctxDir)
	if code != 0 || stdout != digest+"\n" || stderr != "" {
		t.Errorf("build -q: exit %d, stdout %q, stderr %q; want 0, %q, nothing", code, stdout, stderr, digest)
	}

	// JSON progress: one object per line.
	code, _, stderr = runCLI(t, "", "build", "--progress=json", ctxDir)
	if code != 0 {
		t.Fatalf("build --progress=json: exit %d: %s", code, stderr)
	}
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		var ev jsonEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Step == 0 || ev.Instruction == "" {
			t.Errorf("progress line %q: %v", line, err)
		}
	}
}

func TestBuildStdin(t *testing.T) {
	t.Setenv(rootEnv, t.TempDir())
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	ctxDir := writeContext(t, map[string]string{"hello.txt": "hello\n"})

	// -f -: the Dockerfile from stdin.
	code, stdout, stderr := runCLI(t, helloDockerfile, "build", "-f", "-", "-q", ctxDir)
	if code != 0 || !strings.HasPrefix(stdout, "sha256:") {
		t.Fatalf("build -f -: exit %d, stdout %q: %s", code, stdout, stderr)
	}

	// -: the context as a tar stream on stdin.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, content := range map[string]string{"Dockerfile": helloDockerfile, "hello.txt": "hello\n"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	tw.Close()
	code, stdout, stderr = runCLI(t, buf.String(), "build", "-q", "-")
	if code != 0 || !strings.HasPrefix(stdout, "sha256:") {
		t.Fatalf("build -: exit %d, stdout %q: %s", code, stdout, stderr)
	}
}

func TestBuildErrors(t *testing.T) {
	t.Setenv(rootEnv, t.TempDir())
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY missing.txt /x\n"})
	code, stdout, stderr := runCLI(t, "", "build", ctxDir)
	if code != exitError {
		t.Errorf("failing build: exit %d, want %d", code, exitError)
	}
	if stdout != "" {
		t.Errorf("failing build wrote stdout %q", stdout)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "imgbuild: Dockerfile:2:") || !strings.Contains(stderr, " ERROR: ") {
		t.Errorf("failing build stderr:\n%s\nwant a progress ERROR line and a last line \"imgbuild: Dockerfile:2: ...\"", stderr)
	}

	if code, _, stderr = runCLI(t, "", "build", filepath.Join(ctxDir, "nosuch")); code != exitError || !strings.HasPrefix(stderr, "imgbuild: build context") {
		t.Errorf("missing context: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr = runCLI(t, "", "build", filepath.Join(ctxDir, "Dockerfile")); code != exitError || !strings.Contains(stderr, "not a directory") {
		t.Errorf("file as context: exit %d, stderr %q", code, stderr)
	}
}

func TestBuildOutputToStdout(t *testing.T) {
	t.Setenv(rootEnv, t.TempDir())
	ctxDir := writeContext(t, map[string]string{"Dockerfile": helloDockerfile, "hello.txt": "hello\n"})
	code, stdout, stderr := runCLI(t, "", "build", "-o", "-", ctxDir)
	if code != 0 {
		t.Fatalf("build -o -: exit %d: %s", code, stderr)
	}
	if !tarHas(t, []byte(stdout), "hello.txt") {
		t.Errorf("build -o -: stdout is not a tar holding hello.txt")
	}
	if !strings.Contains(stderr, "sha256:") {
		t.Errorf("build -o -: the digest should go to stderr: %q", stderr)
	}
}
