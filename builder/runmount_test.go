package builder_test

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
)

// mountSecret is the value of the secret "tok" in these tests: it must
// never show up in an image.
const mountSecret = "s3cret-Value-42"

// TestRunMounts: RUN --mount of every type, what the step sees through it,
// and that nothing of it reaches the image.
func TestRunMounts(t *testing.T) {
	tests := []struct {
		name    string
		df      string
		context map[string]string
		opts    func(*builder.Options)
		files   map[string]string // path -> content in the image
		gone    []string          // paths not in the image
	}{
		{name: "bind the context, read-only, without ignored files",
			df: "FROM busybox\nRUN --mount=target=/src cat /src/a > /out && ls -A /src > /ls && " +
				"(touch /src/x 2>/dev/null || echo ro > /ro)\n",
			context: map[string]string{"a": "A\n", "sub/f": "F\n", ".dockerignore": "secret.txt\n", "secret.txt": "no\n"},
			files:   map[string]string{"out": "A\n", "ls": ".dockerignore\nDockerfile\na\nsub\n", "ro": "ro\n"},
			gone:    []string{"src"}},
		{name: "bind a context directory on a target relative to WORKDIR",
			df:      "FROM busybox\nWORKDIR /w\nRUN --mount=source=sub,target=m cat m/f > /out\n",
			context: map[string]string{"sub/f": "F\n"},
			files:   map[string]string{"out": "F\n"}, gone: []string{"w/m"}},
		{name: "bind a context file",
			df:      "FROM busybox\nRUN --mount=source=sub/f,target=/etc/f.conf cat /etc/f.conf > /out\n",
			context: map[string]string{"sub/f": "F\n"},
			files:   map[string]string{"out": "F\n"}, gone: []string{"etc/f.conf"}},
		{name: "bind the context read-write: writes are discarded",
			df: "FROM busybox\nRUN --mount=target=/src,rw echo new > /src/a && echo changed > /src/new && cat /src/a > /out\n" +
				"RUN --mount=target=/src cat /src/a > /again && ls /src > /ls\n",
			context: map[string]string{"a": "A\n"},
			files:   map[string]string{"out": "new\n", "again": "A\n", "ls": "Dockerfile\na\n"}, gone: []string{"src"}},
		{name: "bind from a stage",
			df: "FROM busybox AS b\nRUN mkdir /d && echo built > /d/b.txt\n" +
				"FROM busybox\nRUN --mount=from=b,source=/d,target=/m cat /m/b.txt > /out\n",
			files: map[string]string{"out": "built\n"}, gone: []string{"m", "d"}},
		{name: "bind from a stage read-write leaves the stage alone",
			df: "FROM busybox AS b\nRUN echo built > /b.txt\n" +
				"FROM busybox\nRUN --mount=from=b,target=/m,rw echo x > /m/b.txt && rm /m/bin/ls\n" +
				"RUN --mount=from=b,target=/m cat /m/b.txt > /out && ls /m/bin/ls >> /out\n",
			files: map[string]string{"out": "built\n/m/bin/ls\n"}, gone: []string{"m"}},
		{name: "bind from an image",
			df:    "FROM scratch AS empty\nFROM busybox\nRUN --mount=from=busybox,source=/etc,target=/img head -1 /img/passwd > /out\n",
			files: map[string]string{"out": "root:x:0:0:root:/root:/bin/sh\n"}, gone: []string{"img"}},
		{name: "tmpfs",
			df:    "FROM busybox\nRUN --mount=type=tmpfs,target=/t,size=1m echo x > /t/x && df -k /t | awk 'NR==2 {print $2}' > /out\n",
			files: map[string]string{"out": "1024\n"}, gone: []string{"t"}},
		{name: "secret as a file",
			df:    "FROM busybox\nRUN --mount=type=secret,id=tok cat /run/secrets/tok > /out && stat -c '%a %u:%g' /run/secrets/tok > /st\n",
			opts:  func(o *builder.Options) { o.Secrets = map[string][]byte{"tok": []byte(mountSecret)} },
			files: map[string]string{"out": mountSecret, "st": "400 0:0\n"}, gone: []string{"run/secrets", "run"}},
		{name: "secret with a target, owner and mode",
			df:    "FROM busybox\nUSER app\nRUN --mount=type=secret,id=tok,target=/home/app/.tok,uid=1000,mode=0440 cat ~/.tok > /tmp/out && stat -c '%a %u:%g' ~/.tok > /tmp/st\n",
			opts:  func(o *builder.Options) { o.Secrets = map[string][]byte{"tok": []byte(mountSecret)} },
			files: map[string]string{"tmp/out": mountSecret, "tmp/st": "440 1000:0\n"}, gone: []string{"home/app/.tok"}},
		{name: "secret as an environment variable only",
			df:    "FROM busybox\nENV TOKEN=visible\nRUN --mount=type=secret,id=tok,env=TOKEN echo \"$TOKEN\" > /out && ls /run/secrets > /ls 2>&1 || true\n",
			opts:  func(o *builder.Options) { o.Secrets = map[string][]byte{"tok": []byte(mountSecret)} },
			files: map[string]string{"out": mountSecret + "\n"}, gone: []string{"run/secrets"}},
		{name: "missing optional secrets are skipped",
			df:    "FROM busybox\nRUN --mount=type=secret,id=nope --mount=type=secret,id=nope2,env=NOPE (test -e /run/secrets/nope || echo no-file) > /out && echo \"[$NOPE]\" >> /out\n",
			files: map[string]string{"out": "no-file\n[]\n"}},
		{name: "cache starts empty with its mode and owner",
			df:    "FROM busybox\nRUN --mount=type=cache,target=/c,uid=1000,gid=100,mode=0700 stat -c '%a %u:%g' /c > /out && ls -A /c >> /out && touch /c/x\n",
			files: map[string]string{"out": "700 1000:100\n"}, gone: []string{"c"}},
		{name: "cache seeded from a stage",
			df: "FROM busybox AS seed\nRUN mkdir -p /s/d && echo seeded > /s/d/f\n" +
				"FROM busybox\nRUN --mount=type=cache,target=/c,from=seed,source=/s cat /c/d/f > /out && echo more > /c/g\n",
			files: map[string]string{"out": "seeded\n"}, gone: []string{"c", "s"}},
		{name: "cache subdirectory and sharing modes",
			df: "FROM busybox\nRUN --mount=type=cache,id=x,target=/a,source=sub,sharing=locked echo 1 > /a/f\n" +
				"RUN --mount=type=cache,id=x,target=/b,sharing=private --mount=type=cache,id=x,target=/c,sharing=shared cat /b/sub/f /c/sub/f > /out\n",
			files: map[string]string{"out": "1\n1\n"}, gone: []string{"a", "b", "c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := rtOptions(t, tc.df, tc.context, tc.opts)
			before := dirContents(t, opts.ContextDir)
			res := btBuild(t, opts)
			checkImageFiles(t, btFlatten(t, res.Image), tc.files, tc.gone)
			if after := dirContents(t, opts.ContextDir); after != before {
				t.Errorf("the build changed the context:\n%s\nwas:\n%s", after, before)
			}
			checkNoSecret(t, res.Image)
		})
	}
}

// dirContents describes every file under dir with its content.
func dirContents(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b.WriteString(rel + " " + fi.Mode().String())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b.WriteString(" " + string(data))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// checkNoSecret fails t when mountSecret is in the image's config (env,
// history) or in any file of any layer.
func checkNoSecret(t *testing.T, img v1.Image) {
	t.Helper()
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfg), mountSecret) {
		t.Errorf("the secret is in the image config:\n%s", cfg)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		walkLayer(t, l, func(h *tar.Header, tr *tar.Reader) bool {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), mountSecret) && h.Name != "out" && !strings.HasSuffix(h.Name, "/out") {
				t.Errorf("layer %d: the secret is in %s", i, h.Name)
			}
			return true
		})
	}
}

// TestRunMountSecretHistory: a secret given as an environment variable
// whose name is also a build arg stays out of the history and config.
func TestRunMountSecretHistory(t *testing.T) {
	df := "FROM busybox\nARG TOKEN=public\nRUN --mount=type=secret,id=tok,env=TOKEN test \"$TOKEN\" = " + mountSecret + "\n"
	res := rtBuild(t, df, func(o *builder.Options) { o.Secrets = map[string][]byte{"tok": []byte(mountSecret)} })
	cfg, err := res.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	last := cfg.History[len(cfg.History)-1]
	if want := "RUN |1 TOKEN=public /bin/sh -c test \"$TOKEN\" = " + mountSecret + " # buildkit"; last.CreatedBy != want {
		t.Errorf("history %q, want %q", last.CreatedBy, want)
	}
	for _, kv := range cfg.Config.Env {
		if strings.HasPrefix(kv, "TOKEN") {
			t.Errorf("config env has %s", kv)
		}
	}
}

// TestRunMountErrors: mounts that fail the step, clearly.
func TestRunMountErrors(t *testing.T) {
	tests := []struct {
		name, df, wantErr string
		context           map[string]string
	}{
		{name: "missing required secret", df: "FROM busybox\nRUN --mount=type=secret,id=nope,required true\n",
			wantErr: "Dockerfile:2: RUN --mount=type=secret,id=nope,required true: --mount=type=secret: secret nope: not found"},
		{name: "ssh", df: "FROM busybox\nRUN --mount=type=ssh true\n",
			wantErr: "RUN --mount=type=ssh is not supported"},
		{name: "missing context source", df: "FROM busybox\nRUN --mount=source=nope,target=/x true\n",
			wantErr: "--mount=type=bind: source /nope not found in the build context"},
		{name: "ignored context source", df: "FROM busybox\nRUN --mount=source=secret.txt,target=/x cat /x\n",
			context: map[string]string{".dockerignore": "secret.txt\n", "secret.txt": "no\n"},
			wantErr: "--mount=type=bind: source /secret.txt not found in the build context"},
		{name: "missing stage source", df: "FROM busybox AS b\nFROM busybox\nRUN --mount=from=b,source=/nope,target=/x true\n",
			wantErr: "--mount=type=bind: source /nope not found in b"},
		{name: "later stage", df: "FROM busybox AS first\nRUN --mount=from=later,target=/x true\nFROM busybox AS later\nFROM first\n",
			wantErr: "--mount=type=bind: from=later: cannot copy from stage \"later\""},
		{name: "root target", df: "FROM busybox\nRUN --mount=type=tmpfs,target=/ true\n",
			wantErr: "--mount=type=tmpfs: invalid mount target \"/\""},
		{name: "target in /proc", df: "FROM busybox\nRUN --mount=type=tmpfs,target=/proc/x true\n",
			wantErr: "mount target /proc/x resolves to /proc/x, inside the mount at /proc"},
		{name: "nested targets", df: "FROM busybox\nRUN --mount=type=tmpfs,target=/a --mount=type=cache,target=/a/b true\n",
			wantErr: "mount target /a/b resolves to /a/b, inside the mount at /a"},
		{name: "target planted as a symlink to /", df: "FROM busybox\nRUN ln -s / /evil\nRUN --mount=type=cache,target=/evil true\n",
			wantErr: "mount target /evil resolves to the root directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := builder.Build(context.Background(), rtOptions(t, tc.df, tc.context, nil))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestRunMountPlantedSymlink: a step plants a symlink to a host directory
// where the next step mounts: the mount lands inside the root, the host
// directory is untouched and nothing of the mount reaches the layer.
func TestRunMountPlantedSymlink(t *testing.T) {
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "keep"), []byte("host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := dirContents(t, host)
	df := "FROM busybox\nRUN ln -s " + host + " /planted && ln -s ../../../../.." + host + " /rel\n" +
		"RUN --mount=type=tmpfs,target=/planted/t --mount=type=cache,target=/rel/c " +
		"echo x > /planted/t/x && echo y > /rel/c/y && ls -A " + host + " > /ls\n"
	res := rtBuild(t, df, nil)
	if after := dirContents(t, host); after != before {
		t.Errorf("the host directory changed:\n%s\nwas:\n%s", after, before)
	}
	fs := btFlatten(t, res.Image)
	// ls saw the two mount points inside the root, under root/<host>.
	if got := fs["ls"].Content; got != "c\nt\n" {
		t.Errorf("ls of the mount points' parent in the root = %q", got)
	}
	if names := lastLayerEntries(t, res.Image); strings.Join(names, " ") != "ls" {
		t.Errorf("the step's layer has %v, want only ls", names)
	}
}

// TestRunMountCachePersists: a cache mount keeps its content across builds
// that share the store, and never reaches a layer; another id is another
// cache.
func TestRunMountCachePersists(t *testing.T) {
	st := rtStore(t)
	df := "FROM busybox\nARG N\nRUN --mount=type=cache,target=/var/cache/app " +
		"echo $N >> /var/cache/app/log && cat /var/cache/app/log > /seen\n" +
		"RUN --mount=type=cache,id=other,target=/var/cache/app ls -A /var/cache/app > /other\n"
	var seen []string
	for _, n := range []string{"1", "2"} {
		res := btBuild(t, builder.Options{ContextDir: btContext(t, map[string]string{"Dockerfile": df}), Store: st,
			BuildArgs: map[string]string{"N": n}})
		fs := btFlatten(t, res.Image)
		seen = append(seen, fs["seen"].Content)
		if got := fs["other"].Content; got != "" {
			t.Errorf("build %s: cache id=other has %q", n, got)
		}
		if _, ok := fs["var/cache/app/log"]; ok {
			t.Errorf("build %s: the cache's content is in the image", n)
		}
		ls, err := res.Image.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls[len(ls)-2:] {
			checkLayerLacks(t, l, "var/cache/app")
		}
	}
	if seen[0] != "1\n" || seen[1] != "1\n2\n" {
		t.Errorf("the cache saw %q then %q, want \"1\\n\" then \"1\\n2\\n\"", seen[0], seen[1])
	}
	fi, err := os.Stat(filepath.Join(st.Root(), "cache-mounts"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache-mounts directory: %v, %v", fi, err)
	}
}

// checkLayerLacks fails t when the layer has an entry at or below p.
func checkLayerLacks(t *testing.T, l v1.Layer, p string) {
	t.Helper()
	walkLayer(t, l, func(h *tar.Header, _ *tar.Reader) bool {
		name := strings.TrimSuffix(h.Name, "/")
		if name == p || strings.HasPrefix(name, p+"/") {
			t.Errorf("layer has %s", h.Name)
		}
		return true
	})
}

// TestRunMountsCopySnapshotter: mounts work the same on the copy
// snapshotter, whose stage views are copies.
func TestRunMountsCopySnapshotter(t *testing.T) {
	df := "FROM busybox AS b\nRUN echo built > /b.txt\n" +
		"FROM busybox\nRUN --mount=from=b,target=/m,rw --mount=type=cache,target=/c --mount=target=/src " +
		"cat /m/b.txt /src/a > /out && echo x > /m/b.txt && echo y > /c/y\n"
	res := btBuild(t, rtOptions(t, df, map[string]string{"a": "A\n"},
		func(o *builder.Options) { o.Snapshotter = layers.SnapshotterCopy }))
	fs := btFlatten(t, res.Image)
	if got := fs["out"].Content; got != "built\nA\n" {
		t.Errorf("out = %q", got)
	}
	if names := lastLayerEntries(t, res.Image); strings.Join(names, " ") != "out" {
		t.Errorf("the step's layer has %v, want only out", names)
	}
}
