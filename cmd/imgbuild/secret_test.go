package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
)

func TestParseSecret(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tok")
	if err := os.WriteFile(file, []byte("from-file"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxSecretSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TOKEN": "from-env", "aws": "from-id-env"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	readFile := func(p string) ([]byte, error) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p) // the working directory of the CLI
		}
		return os.ReadFile(p)
	}
	tests := []struct {
		spec, id, data, wantErr string
	}{
		{spec: "id=a,src=" + file, id: "a", data: "from-file"},
		{spec: "id=a,source=" + file, id: "a", data: "from-file"},
		{spec: "type=file,id=a,src=" + file, id: "a", data: "from-file"},
		{spec: "id=a,env=TOKEN", id: "a", data: "from-env"},
		{spec: "type=env,id=a,src=TOKEN", id: "a", data: "from-env"},
		{spec: "type=env,id=TOKEN", id: "TOKEN", data: "from-env"},
		{spec: "id=aws", id: "aws", data: "from-id-env"},
		{spec: "id=tok", id: "tok", data: "from-file"},            // no $tok: the file tok
		{spec: `"id=a,b",env=TOKEN`, id: "a,b", data: "from-env"}, // CSV quoting
		{spec: "id=a,env=NOPE", wantErr: "secret a: environment variable NOPE is not set"},
		{spec: "id=a,src=/nonexistent/x", wantErr: "secret a: /nonexistent/x: no such file"},
		{spec: "src=" + file, wantErr: "no id"},
		{spec: "id=a,type=ssh", wantErr: `unsupported secret type "ssh"`},
		{spec: "id=a,mode=0400", wantErr: `unexpected key "mode"`},
		{spec: "id=a,src", wantErr: `field "src" must be a key=value pair`},
		{spec: "id=big,src=" + big, wantErr: "secret big is too big"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			id, data, err := parseSecret(tt.spec, lookup, readFile)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || id != tt.id || string(data) != tt.data {
				t.Errorf("= %q, %q, %v; want %q, %q", id, data, err, tt.id, tt.data)
			}
		})
	}
}

// TestSecretOptions: repeated --secret flags fill Options.Secrets; none
// leave it nil; a bad one is a usage error.
func TestSecretOptions(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte("F"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &streams{lookupEnv: func(k string) (string, bool) { return map[string]string{"E": "e"}[k], k == "E" }}
	parse := func(args ...string) (*builder.Options, error) {
		var o builder.Options
		var err error
		app := &cli.App{Name: "build", DisableSliceFlagSeparator: true, Flags: []cli.Flag{secretFlag()},
			Action: func(c *cli.Context) error {
				err = secretOptions(c, s, &o)
				return nil
			}}
		if rerr := app.Run(append([]string{"build"}, args...)); rerr != nil {
			t.Fatal(rerr)
		}
		return &o, err
	}
	o, err := parse("--secret", "id=a,src="+file, "--secret", "id=b,env=E")
	if err != nil || !reflect.DeepEqual(o.Secrets, map[string][]byte{"a": []byte("F"), "b": []byte("e")}) {
		t.Errorf("Secrets %q, error %v", o.Secrets, err)
	}
	if o, err := parse(); err != nil || o.Secrets != nil {
		t.Errorf("no flags: Secrets %q, error %v", o.Secrets, err)
	}
	_, err = parse("--secret", "id=a,env=NOPE")
	if _, ok := err.(*usageError); !ok || !strings.Contains(err.Error(), "environment variable NOPE is not set") {
		t.Errorf("error %v (%T), want a usage error", err, err)
	}
}
