package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestParseOutput(t *testing.T) {
	tests := []struct {
		in      string
		want    Output
		wantErr string
	}{
		{in: "type=oci,dest=out", want: Output{Type: "oci", Dest: "out"}},
		{in: "type=oci,dest=out,tar=false", want: Output{Type: "oci", Dest: "out", Attrs: map[string]string{"tar": "false"}}},
		{in: "type=oci,dest=out,name=a/b:1", want: Output{Type: "oci", Dest: "out", Attrs: map[string]string{"name": "a/b:1"}}},
		{in: `type=docker,dest=app.tar,"name=a:1,b:2"`, want: Output{Type: "docker", Dest: "app.tar", Attrs: map[string]string{"name": "a:1,b:2"}}},
		{in: "type=docker,dest=-", want: Output{Type: "docker", Dest: "-"}},
		{in: "type=tar,dest=fs.tar", want: Output{Type: "tar", Dest: "fs.tar"}},
		{in: "type=tar,dest=-", want: Output{Type: "tar", Dest: "-"}},
		{in: "type=local,dest=rootfs", want: Output{Type: "local", Dest: "rootfs"}},
		{in: "dest=rootfs, type=local", want: Output{Type: "local", Dest: "rootfs"}},
		{in: "TYPE=local,DEST=Rootfs", want: Output{Type: "local", Dest: "Rootfs"}},
		{in: "type=registry", want: Output{Type: "registry"}},
		{in: "type=registry,name=localhost:5000/x:1", want: Output{Type: "registry", Attrs: map[string]string{"name": "localhost:5000/x:1"}}},
		{in: "some/dir", want: Output{Type: "local", Dest: "some/dir"}},
		{in: "-", want: Output{Type: "tar", Dest: "-"}},

		{in: "", wantErr: "empty output"},
		{in: "type=image", wantErr: `unknown type "image"`},
		{in: "type=oci", wantErr: "type=oci needs dest="},
		{in: "type=docker", wantErr: "type=docker needs dest="},
		{in: "type=tar,dest=", wantErr: "type=tar needs dest="},
		{in: "type=local", wantErr: "type=local needs dest="},
		{in: "type=local,dest=-", wantErr: "not stdout"},
		{in: "type=oci,dest=-", wantErr: "not stdout"},
		{in: "dest=x", wantErr: "type is required"},
		{in: "type=tar,dest=x,compression=zstd", wantErr: `unknown key "compression"`},
		{in: "type=local,dest=x,name=a", wantErr: `unknown key "name"`},
		{in: "type=registry,dest=x", wantErr: `unknown key "dest"`},
		{in: "type=registry,push=true", wantErr: `unknown key "push"`},
		{in: "type=oci,dest=x,tar=true", wantErr: "only tar=false"},
		{in: "type=oci,dest=x,dest=y", wantErr: "dest given twice"},
		{in: "type=oci,dest", wantErr: "not key=value"},
		{in: "type=registry,name=UPPER:1", wantErr: `name "UPPER:1"`},
		{in: "type=registry,name=", wantErr: "name= is empty"},
		{in: `type=oci,dest="unterminated`, wantErr: "output"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseOutput(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseOutput(%q) = %+v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseOutput(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseOutput(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestExportRejectsBeforeWriting(t *testing.T) {
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "fs.tar")
	tests := []struct {
		name    string
		res     *Result
		outs    []Output
		opts    ExportOptions
		wantErr string
	}{
		{"no image", &Result{}, []Output{{Type: "tar", Dest: tarPath}}, ExportOptions{}, "no image"},
		{"registry without tags", &Result{Image: img}, []Output{{Type: "tar", Dest: tarPath}, {Type: "registry"}}, ExportOptions{}, "no tag to push to"},
		{"stdout without writer", &Result{Image: img}, []Output{{Type: "tar", Dest: tarPath}, {Type: "docker", Dest: "-"}}, ExportOptions{}, "no stdout"},
		{"unknown type", &Result{Image: img}, []Output{{Type: "tar", Dest: tarPath}, {Type: "cache"}}, ExportOptions{Stdout: &bytes.Buffer{}}, `unknown output type "cache"`},
		{"unknown attr", &Result{Image: img}, []Output{{Type: "tar", Dest: tarPath, Attrs: map[string]string{"x": "y"}}}, ExportOptions{}, `unknown key "x"`},
		{"missing dest", &Result{Image: img}, []Output{{Type: "oci"}}, ExportOptions{}, "needs dest="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Export(context.Background(), tt.res, tt.outs, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Export = %v, want error containing %q", err, tt.wantErr)
			}
			if _, err := os.Stat(tarPath); !os.IsNotExist(err) {
				t.Fatalf("Export wrote %s before failing (stat: %v)", tarPath, err)
			}
		})
	}
}

func TestWriteDestAtomic(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "out.tar")
	if err := os.WriteFile(dest, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(s string, err error) func(io.Writer) error {
		return func(w io.Writer) error {
			if _, werr := io.WriteString(w, s); werr != nil {
				return werr
			}
			return err
		}
	}

	// A failing writer leaves the old file and no temporary file.
	if err := writeDest(dest, nil, write("partial", errors.New("boom"))); err == nil {
		t.Fatal("writeDest with a failing writer succeeded")
	}
	assertFiles(t, dir, map[string]string{"out.tar": "old"})

	// A successful write replaces it.
	if err := writeDest(dest, nil, write("new", nil)); err != nil {
		t.Fatal(err)
	}
	assertFiles(t, dir, map[string]string{"out.tar": "new"})

	// "-" goes to stdout.
	var buf bytes.Buffer
	if err := writeDest("-", &buf, write("tar", nil)); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "tar" {
		t.Errorf("stdout = %q, want %q", buf.String(), "tar")
	}

	// A directory is refused.
	if err := writeDest(dir, nil, write("x", nil)); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("writeDest(dir) = %v, want a directory error", err)
	}
}

// assertFiles checks that dir holds exactly the files in want.
func assertFiles(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got[e.Name()] = string(b)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("files in %s = %v, want %v", dir, got, want)
	}
}

func TestExport(t *testing.T) {
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Fatalf("skopeo is needed (apt-get install -y skopeo): %v", err)
	}
	ctx := context.Background()
	img := ociImage(t, 2)
	dgst, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	dir := t.TempDir()
	res := &Result{Image: img, Digest: dgst, Tags: []string{"example.com/app:1", "example.com/app:latest"}}
	outs := []Output{
		{Type: OutputOCI, Dest: filepath.Join(dir, "oci")},
		{Type: OutputDocker, Dest: filepath.Join(dir, "app.tar")},
		{Type: OutputDocker, Dest: filepath.Join(dir, "named.tar"), Attrs: map[string]string{"name": "other/name:2"}},
		{Type: OutputTar, Dest: filepath.Join(dir, "fs.tar")},
		{Type: OutputLocal, Dest: filepath.Join(dir, "rootfs")},
		{Type: OutputTar, Dest: "-"},
		{Type: OutputRegistry, Attrs: map[string]string{"name": host + "/team/app:1," + host + "/team/app:2"}},
	}
	var stdout bytes.Buffer
	if err := Export(ctx, res, outs, ExportOptions{Stdout: &stdout}); err != nil {
		t.Fatal(err)
	}

	skopeoConfig := func(ref string) []byte {
		t.Helper()
		out, err := exec.Command(skopeo, "inspect", "--config", ref).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Fatalf("skopeo inspect --config %s: %v: %s", ref, err, ee.Stderr)
			}
			t.Fatalf("skopeo inspect --config %s: %v", ref, err)
		}
		return out
	}
	for _, ref := range []string{
		"oci:" + filepath.Join(dir, "oci") + ":1",
		"oci:" + filepath.Join(dir, "oci") + ":latest",
		"docker-archive:" + filepath.Join(dir, "app.tar") + ":example.com/app:1",
		"docker-archive:" + filepath.Join(dir, "app.tar") + ":example.com/app:latest",
		"docker-archive:" + filepath.Join(dir, "named.tar") + ":docker.io/other/name:2",
	} {
		if got := skopeoConfig(ref); !jsonEqual(t, got, rawCfg) {
			t.Errorf("%s: config %s, want %s", ref, got, rawCfg)
		}
	}

	// The flattened filesystem, as tar file, on stdout and as a directory,
	// holds every file of every layer (random layers do not overlap).
	var want []string
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, tarNames(t, rc)...)
		rc.Close()
	}
	sort.Strings(want)
	f, err := os.Open(filepath.Join(dir, "fs.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := tarNames(t, f); !reflect.DeepEqual(sorted(got), want) {
		t.Errorf("type=tar names = %v, want %v", got, want)
	}
	if got := tarNames(t, &stdout); !reflect.DeepEqual(sorted(got), want) {
		t.Errorf("type=tar,dest=- names = %v, want %v", got, want)
	}
	for _, n := range want {
		if _, err := os.Lstat(filepath.Join(dir, "rootfs", n)); err != nil {
			t.Errorf("type=local: %v", err)
		}
	}

	for _, tag := range []string{"1", "2"} {
		ref, err := name.NewTag(host+"/team/app:"+tag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := remote.Head(ref, remote.WithContext(ctx))
		if err != nil {
			t.Fatalf("type=registry: %s: %v", ref, err)
		}
		if desc.Digest != dgst {
			t.Errorf("type=registry: %s = %s, want %s", ref, desc.Digest, dgst)
		}
	}
}

func tarNames(t *testing.T, r io.Reader) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		names = append(names, strings.TrimPrefix(h.Name, "./"))
	}
}

func sorted(s []string) []string {
	s = append([]string(nil), s...)
	sort.Strings(s)
	return s
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
	return reflect.DeepEqual(x, y)
}

// ociImage is a random image with OCI media types (as Build makes them),
// whose layers are small tars.
func ociImage(t *testing.T, n int) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for i := 0; i < n; i++ {
		l, err := random.Layer(1024, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	return img
}
