package builder_test

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
)

// fsEntry is one file of a flattened image.
type fsEntry struct {
	Type     byte
	Mode     int64
	UID, GID int
	Content  string // regular files: content; symlinks: target
}

// btContext creates a build context from name -> content ("Dockerfile" included).
func btContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func btStore(t *testing.T) *layers.Store {
	t.Helper()
	st, err := layers.OpenStore(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// btFlatten lists the image's final filesystem.
func btFlatten(t *testing.T, img v1.Image) map[string]fsEntry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]fsEntry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		e := fsEntry{Type: h.Typeflag, Mode: h.Mode & 0o7777, UID: h.Uid, GID: h.Gid}
		switch h.Typeflag {
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			e.Content = string(b)
		case tar.TypeSymlink, tar.TypeLink:
			e.Content = h.Linkname
		}
		out[strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")] = e
	}
}

func btBuild(t *testing.T, opts builder.Options) *builder.Result {
	t.Helper()
	res, err := builder.Build(context.Background(), opts)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if err := validate.Image(res.Image); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	return res
}

func TestBuildScratchConfig(t *testing.T) {
	df := `ARG GREETING=hi
FROM scratch AS base
ARG GREETING
ENV A=1 B="two words"
LABEL com.example.k="v ${A}" other=x
EXPOSE 80 8000-8001/udp
USER 1000:1000
VOLUME ["/data"]
STOPSIGNAL SIGINT
SHELL ["/bin/ash", "-c"]
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD check --now
ONBUILD COPY x /x
WORKDIR rel
WORKDIR sub
CMD run $GREETING
ENTRYPOINT ["/fsEntry"]
MAINTAINER someone
`
	dir := btContext(t, map[string]string{"Dockerfile": df})
	res := btBuild(t, builder.Options{ContextDir: dir, Store: btStore(t)})
	cfg, err := res.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	checks := []struct {
		name      string
		got, want any
	}{
		{"env", c.Env, []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1", "B=two words"}},
		{"labels", c.Labels, map[string]string{"com.example.k": "v 1", "other": "x"}},
		{"ports", c.ExposedPorts, map[string]struct{}{"80/tcp": {}, "8000/udp": {}, "8001/udp": {}}},
		{"user", c.User, "1000:1000"},
		{"volumes", c.Volumes, map[string]struct{}{"/data": {}}},
		{"stopsignal", c.StopSignal, "SIGINT"},
		{"shell", c.Shell, []string{"/bin/ash", "-c"}},
		{"healthcheck", c.Healthcheck.Test, []string{"CMD-SHELL", "check --now"}},
		{"healthcheck retries", c.Healthcheck.Retries, 3},
		{"onbuild", c.OnBuild, []string{"COPY x /x"}},
		{"workdir", c.WorkingDir, "/rel/sub"},
		// ENTRYPOINT after CMD in the same stage keeps CMD; CMD is shell form through SHELL.
		{"cmd", c.Cmd, []string{"/bin/ash", "-c", "run $GREETING"}},
		{"entrypoint", c.Entrypoint, []string{"/fsEntry"}},
		{"author", cfg.Author, "someone"},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s: got %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
	fs := btFlatten(t, res.Image)
	// WORKDIR creates the directories as the current USER.
	if e, ok := fs["rel/sub"]; !ok || e.Type != tar.TypeDir || e.UID != 1000 || e.GID != 1000 {
		t.Errorf("rel/sub: %+v (present %v)", e, ok)
	}
}

func TestBuildEntrypointResetsInheritedCmd(t *testing.T) {
	df := "FROM scratch AS a\nCMD [\"a\"]\nFROM a\nENTRYPOINT [\"/e\"]\n"
	dir := btContext(t, map[string]string{"Dockerfile": df})
	res := btBuild(t, builder.Options{ContextDir: dir, Store: btStore(t)})
	cfg, _ := res.Image.ConfigFile()
	if cfg.Config.Cmd != nil || !reflect.DeepEqual(cfg.Config.Entrypoint, []string{"/e"}) {
		t.Fatalf("cmd %v entrypoint %v", cfg.Config.Cmd, cfg.Config.Entrypoint)
	}
}

func TestBuildCopyAndStages(t *testing.T) {
	df := "FROM scratch AS unused\nCOPY does-not-exist /\n" +
		"FROM scratch AS files\nCOPY a.txt dir/ /src/\n" +
		"FROM scratch\nARG TARGETOS\nCOPY --from=files /src /app/\n" +
		"COPY --chmod=0755 a.txt /bin/tool\n" +
		"COPY <<EOT /etc/motd\nos=${TARGETOS}\nEOT\n"
	dir := btContext(t, map[string]string{"Dockerfile": df, "a.txt": "A", "dir/b.txt": "B"})
	res := btBuild(t, builder.Options{ContextDir: dir, Store: btStore(t)})
	fs := btFlatten(t, res.Image)
	want := map[string]fsEntry{
		"app/a.txt": {Type: tar.TypeReg, Mode: 0o644, Content: "A"},
		"app/b.txt": {Type: tar.TypeReg, Mode: 0o644, Content: "B"},
		"bin/tool":  {Type: tar.TypeReg, Mode: 0o755, Content: "A"},
		"etc/motd":  {Type: tar.TypeReg, Mode: 0o644, Content: "os=linux\n"},
	}
	for p, w := range want {
		if g, ok := fs[p]; !ok || g != w {
			t.Errorf("%s: got %+v (present %v), want %+v", p, g, ok, w)
		}
	}
	ls, _ := res.Image.Layers()
	if len(ls) != 3 {
		t.Errorf("got %d layers, want 3 (one per COPY)", len(ls))
	}
}

func TestBuildErrorsNameLine(t *testing.T) {
	tests := []struct {
		name, df, target, want string
	}{
		{"run without a shell", "FROM scratch\n\nRUN make\n", "", "Dockerfile:3: RUN make: run: sandbox: exec /bin/sh: no such file or directory"},
		{"run ssh mount", "FROM scratch\nRUN --mount=type=ssh make\n", "", "Dockerfile:2: RUN --mount=type=ssh make: RUN --mount=type=ssh is not supported"},
		{"run security", "FROM scratch\nRUN --security=insecure make\n", "", "Dockerfile:2: RUN --security=insecure make: RUN --security=insecure is not supported"},
		{"missing source", "FROM scratch\nCOPY nope /x\n", "", "Dockerfile:2: COPY nope /x: "},
		{"unknown target", "FROM scratch AS a\n", "b", `target stage "b" could not be found`},
		{"later stage", "FROM scratch\nCOPY --from=1 /a /a\nFROM scratch\n", "", "Dockerfile:2: "},
		{"bad signal", "FROM scratch\nSTOPSIGNAL SIGNOPE\n", "", "Dockerfile:2: STOPSIGNAL SIGNOPE: invalid signal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := btContext(t, map[string]string{"Dockerfile": tc.df})
			_, err := builder.Build(context.Background(), builder.Options{ContextDir: dir, Target: tc.target, Store: btStore(t)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestBuildReproducibleWithSourceDateEpoch(t *testing.T) {
	files := map[string]string{"Dockerfile": "FROM scratch\nCOPY . /src/\nWORKDIR /w\nLABEL a=b\n", "f": "x", "d/g": "y"}
	var digests []string
	for i := 0; i < 2; i++ {
		dir := btContext(t, files)
		now := time.Unix(int64(1700000000+i*1000), 0)
		for _, p := range []string{"f", "d/g", "d", "."} {
			if err := os.Chtimes(filepath.Join(dir, p), now, now); err != nil {
				t.Fatal(err)
			}
		}
		res := btBuild(t, builder.Options{ContextDir: dir, Store: btStore(t),
			BuildArgs: map[string]string{"SOURCE_DATE_EPOCH": "1600000000"}})
		digests = append(digests, res.Digest.String())
		cfg, _ := res.Image.ConfigFile()
		if got := cfg.Created.Unix(); got != 1600000000 {
			t.Errorf("config created %d, want 1600000000", got)
		}
	}
	if digests[0] != digests[1] {
		t.Fatalf("digests differ: %v", digests)
	}
}

func TestBuildHealthcheckStartInterval(t *testing.T) {
	df := "FROM scratch\nHEALTHCHECK --interval=1m --start-period=2s --start-interval=3s --retries=2 CMD [\"/probe\"]\n"
	dir := btContext(t, map[string]string{"Dockerfile": df})
	res := btBuild(t, builder.Options{ContextDir: dir, Store: btStore(t)})
	raw, err := res.Image.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Config struct {
			Healthcheck struct {
				Test                                 []string
				Interval, StartPeriod, StartInterval time.Duration
				Retries                              int
			}
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	h := c.Config.Healthcheck
	if h.StartInterval != 3*time.Second || h.Interval != time.Minute || h.StartPeriod != 2*time.Second || h.Retries != 2 ||
		!reflect.DeepEqual(h.Test, []string{"CMD", "/probe"}) {
		t.Fatalf("healthcheck %+v in %s", h, raw)
	}
}

// TestBuildIndependentStagesConcurrently has two stages each ADD a URL whose
// server answers only once both requests arrived: a sequential builder fails.
func TestBuildIndependentStagesConcurrently(t *testing.T) {
	var arrived sync.WaitGroup
	arrived.Add(2)
	both := make(chan struct{})
	go func() { arrived.Wait(); close(both) }()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		select {
		case <-both:
			fmt.Fprint(w, r.URL.Path)
		case <-time.After(20 * time.Second):
			http.Error(w, "the other stage never asked", http.StatusGatewayTimeout)
		}
	}))
	defer srv.Close()
	df := fmt.Sprintf("FROM scratch AS a\nADD %[1]s/a /a\nFROM scratch AS b\nADD %[1]s/b /b\n"+
		"FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n", srv.URL)
	dir := btContext(t, map[string]string{"Dockerfile": df})
	res := btBuild(t, builder.Options{ContextDir: dir, Store: btStore(t)})
	fs := btFlatten(t, res.Image)
	if fs["a"].Content != "/a" || fs["b"].Content != "/b" {
		t.Fatalf("unexpected files: a=%+v b=%+v", fs["a"], fs["b"])
	}
}

// TestBuildFailingStageCancelsOthers: when one stage fails, Build returns
// without waiting for a slow independent stage, whose download is cancelled.
func TestBuildFailingStageCancelsOthers(t *testing.T) {
	arrived, cancelled := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			// Fail only once the slow download is under way.
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
			}
			http.NotFound(w, r)
			return
		}
		close(arrived)
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-time.After(30 * time.Second):
			fmt.Fprint(w, "too late")
		}
	}))
	defer srv.Close()
	df := fmt.Sprintf("FROM scratch AS slow\nADD %[1]s/big /big\nFROM scratch AS bad\nADD %[1]s/bad /bad\n"+
		"FROM scratch\nCOPY --from=slow /big /\nCOPY --from=bad /bad /\n", srv.URL)
	dir := btContext(t, map[string]string{"Dockerfile": df})
	start := time.Now()
	_, err := builder.Build(context.Background(), builder.Options{ContextDir: dir, Store: btStore(t)})
	if err == nil || !strings.Contains(err.Error(), "Dockerfile:4: ADD "+srv.URL+"/bad /bad") {
		t.Fatalf("error %v, want the failing ADD at line 4", err)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("Build took %v: it waited for the slow stage", took)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow stage's download was not cancelled")
	}
}
