package builder

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
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
