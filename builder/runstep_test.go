package builder_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// rtStore is a store holding the busybox test image tagged "busybox".
func rtStore(t *testing.T) *layers.Store {
	t.Helper()
	registrytest.RequireRoot(t)
	st := btStore(t)
	ctx := context.Background()
	dgst, err := st.PutImage(ctx, registrytest.BusyboxImage(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, "busybox", dgst); err != nil {
		t.Fatal(err)
	}
	return st
}

// rtOptions are the options of a build of df on the busybox store, its
// context the Dockerfile and the files of context (path -> content),
// changed by mod when set.
func rtOptions(t *testing.T, df string, context map[string]string, mod func(*builder.Options)) builder.Options {
	t.Helper()
	files := map[string]string{"Dockerfile": df}
	maps.Copy(files, context)
	opts := builder.Options{ContextDir: btContext(t, files), Store: rtStore(t)}
	if mod != nil {
		mod(&opts)
	}
	return opts
}

// rtBuild builds df on the busybox store.
func rtBuild(t *testing.T, df string, mod func(*builder.Options)) *builder.Result {
	t.Helper()
	return btBuild(t, rtOptions(t, df, nil, mod))
}

// checkImageFiles fails t when fs (btFlatten's) lacks a file of files
// (path -> content) or has another content there, or has a path of gone.
func checkImageFiles(t *testing.T, fs map[string]fsEntry, files map[string]string, gone []string) {
	t.Helper()
	for p, want := range files {
		if e, ok := fs[p]; !ok {
			t.Errorf("%s missing", p)
		} else if e.Content != want {
			t.Errorf("%s = %q, want %q", p, e.Content, want)
		}
	}
	for _, p := range gone {
		if _, ok := fs[p]; ok {
			t.Errorf("%s is in the image", p)
		}
	}
}

func TestRunFiles(t *testing.T) {
	tests := []struct {
		name  string
		df    string
		opts  func(*builder.Options)
		files map[string]string // path -> content
		gone  []string          // paths that must not exist
	}{
		{name: "shell form env and args",
			df:    "FROM busybox\nENV FOO=f\nARG BAR=b\nRUN echo \"$FOO-$BAR-$HOME-$(pwd)\" > /out\n",
			files: map[string]string{"out": "f-b-/root-/\n"}},
		{name: "exec form",
			df:    "FROM busybox\nRUN [\"/bin/sh\", \"-c\", \"id -u > /uid\"]\n",
			files: map[string]string{"uid": "0\n"}},
		{name: "SHELL applies",
			df:    "FROM busybox\nSHELL [\"/bin/sh\", \"-xc\"]\nRUN echo hi > /s\n",
			files: map[string]string{"s": "hi\n"}},
		{name: "heredoc script",
			df:    "FROM busybox\nRUN <<EOF\necho a > /h\necho b >> /h\nEOF\n",
			files: map[string]string{"h": "a\nb\n"}},
		{name: "heredoc chomp",
			df:    "FROM busybox\nRUN <<-EOF\n\techo c > /c\n\tEOF\n",
			files: map[string]string{"c": "c\n"}},
		{name: "heredoc shebang runs from /dev/pipes",
			df:    "FROM busybox\nRUN <<EOF\n#!/bin/sh\necho \"$0\" > /sb\nEOF\n",
			files: map[string]string{"sb": "/dev/pipes/EOF\n"}},
		{name: "heredoc as a command's stdin",
			df:    "FROM busybox\nRUN <<EOF sh\necho in > /stdin\nEOF\n",
			files: map[string]string{"stdin": "in\n"}},
		{name: "several heredocs and quoting",
			df:    "FROM busybox\nRUN cat <<A > /m1 && cat <<'B' > /m2\n$HOME\nA\n$HOME\nB\n",
			files: map[string]string{"m1": "/root\n", "m2": "$HOME\n"}},
		{name: "user with groups and home",
			df:    "FROM busybox\nUSER app\nRUN id > /tmp/id && echo $HOME > /tmp/home\n",
			files: map[string]string{"tmp/id": "uid=1000(app) gid=1000(app) groups=1000(app)\n", "tmp/home": "/home/app\n"}},
		{name: "root supplementary groups",
			df:    "FROM busybox\nRUN id -G > /g\n",
			files: map[string]string{"g": "0 10\n"}},
		{name: "user uid:gid",
			df:    "FROM busybox\nUSER 1234:33\nRUN id -u > /tmp/u; id -g >> /tmp/u; echo $HOME >> /tmp/u\n",
			files: map[string]string{"tmp/u": "1234\n33\n/\n"}},
		{name: "workdir created",
			df:    "FROM busybox\nWORKDIR /w/x\nRUN pwd > p\n",
			files: map[string]string{"w/x/p": "/w/x\n"}},
		{name: "hostname and hosts",
			df:    "FROM busybox\nRUN hostname > /hn && grep -c buildkitsandbox /etc/hosts > /hc\n",
			files: map[string]string{"hn": "buildkitsandbox\n", "hc": "1\n"}},
		{name: "deletes become whiteouts",
			df:   "FROM busybox\nRUN mkdir -p /d/e && touch /d/e/f /d/g\nRUN rm -r /d/e && rm /bin/true\n",
			gone: []string{"d/e", "d/e/f", "bin/true"}, files: map[string]string{"d/g": ""}},
		{name: "opaque directory",
			df:   "FROM busybox\nRUN mkdir -p /d && touch /d/a /d/b\nRUN rm -r /d && mkdir /d && echo n > /d/c\n",
			gone: []string{"d/a", "d/b"}, files: map[string]string{"d/c": "n\n"}},
		{name: "network none for the build",
			df:    "FROM busybox\nRUN ls /sys/class/net > /n\n",
			opts:  func(o *builder.Options) { o.Network = "none" },
			files: map[string]string{"n": "lo\n"}},
		{name: "network none per step",
			df:    "FROM busybox\nRUN --network=none ls /sys/class/net > /n\n",
			files: map[string]string{"n": "lo\n"}},
		{name: "copy snapshotter",
			df:    "FROM busybox\nRUN echo x > /x && rm /bin/ls\n",
			opts:  func(o *builder.Options) { o.Snapshotter = "copy" },
			files: map[string]string{"x": "x\n"}, gone: []string{"bin/ls"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := rtBuild(t, tc.df, tc.opts)
			checkImageFiles(t, btFlatten(t, res.Image), tc.files, tc.gone)
		})
	}
}

// TestRunEnvironment: nothing of the host's environment reaches RUN, build
// args are visible to it but not persisted, proxy args reach RUN only.
func TestRunEnvironment(t *testing.T) {
	t.Setenv("IMGBUILD_SECRET_TOKEN", "leak")
	df := "FROM busybox\nARG A=1\nENV E=2\nRUN env | sort > /env\n"
	res := rtBuild(t, df, func(o *builder.Options) {
		o.BuildArgs = map[string]string{"A": "cli", "http_proxy": "http://proxy.invalid:3128"}
	})
	env := btFlatten(t, res.Image)["env"].Content
	for _, want := range []string{"A=cli\n", "E=2\n", "HOME=/root\n", "http_proxy=http://proxy.invalid:3128\n",
		"HTTP_PROXY=http://proxy.invalid:3128\n", "PATH=" + registrytest.DefaultPath + "\n"} {
		if !strings.Contains(env, want) {
			t.Errorf("RUN env lacks %q:\n%s", want, env)
		}
	}
	if strings.Contains(env, "IMGBUILD_SECRET_TOKEN") {
		t.Errorf("host environment leaked into RUN:\n%s", env)
	}
	cfg, err := res.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range cfg.Config.Env {
		if strings.HasPrefix(kv, "A=") || strings.Contains(strings.ToLower(kv), "proxy") {
			t.Errorf("config Env has %q", kv)
		}
	}
	last := cfg.History[len(cfg.History)-1]
	if want := "RUN |1 A=cli /bin/sh -c env | sort > /env # buildkit"; last.CreatedBy != want || last.EmptyLayer {
		t.Errorf("history %q (empty %v), want %q with a layer", last.CreatedBy, last.EmptyLayer, want)
	}
}

// TestRunFailure: a failing step stops the build with its line, its exit
// status and the last lines of its output; nothing is tagged.
func TestRunFailure(t *testing.T) {
	st := rtStore(t)
	df := "FROM busybox\nRUN echo one; echo two >&2; exit 3\nRUN echo never > /never\n"
	var logs []string
	_, err := builder.Build(context.Background(), builder.Options{
		ContextDir: btContext(t, map[string]string{"Dockerfile": df}), Store: st, Tags: []string{"failed:1"},
		Progress: func(ev builder.Event) {
			if len(ev.Log) > 0 {
				logs = append(logs, string(ev.Log))
			}
		},
	})
	want := "Dockerfile:2: RUN echo one; echo two >&2; exit 3: exit status 3\none\ntwo"
	if err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
	if strings.Join(logs, "") != "one\ntwo\n" {
		t.Errorf("progress logs %q", logs)
	}
	if _, err := st.Image(context.Background(), "failed:1"); err == nil {
		t.Error("failed build was tagged")
	}
}

// TestRunLeavesNoStubs: the sandbox's mount points and files (/proc, /dev,
// /sys, /etc/hosts, /etc/resolv.conf, /etc/hostname) never reach a layer:
// a step that changes nothing commits an empty layer, as BuildKit's.
func TestRunLeavesNoStubs(t *testing.T) {
	for _, kind := range []string{"overlay", "copy"} {
		t.Run(kind, func(t *testing.T) {
			res := rtBuild(t, "FROM busybox\nRUN true\n", func(o *builder.Options) { o.Snapshotter = kind })
			if names := lastLayerEntries(t, res.Image); len(names) != 0 {
				t.Errorf("RUN true committed %v", names)
			}
			cfg, err := res.Image.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if h := cfg.History[len(cfg.History)-1]; h.EmptyLayer || h.CreatedBy != "RUN /bin/sh -c true # buildkit" {
				t.Errorf("history %+v", h)
			}
		})
	}
}

// TestRunSnapshottersAgree: overlay and copy give the same image.
func TestRunSnapshottersAgree(t *testing.T) {
	df := "FROM busybox\nRUN mkdir -p /a/b && echo 1 > /a/b/f && ln /a/b/f /a/h && ln -s b /a/s && chmod 4755 /a/b/f\n" +
		"RUN rm -r /a/b && mkdir /a/b && chown 1000:1000 /a/b && rm /bin/cat\n"
	var digests []v1.Hash
	for _, kind := range []string{"overlay", "copy"} {
		res := rtBuild(t, df, func(o *builder.Options) {
			o.Snapshotter = kind
			o.BuildArgs = map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}
		})
		digests = append(digests, res.Digest)
	}
	if digests[0] != digests[1] {
		t.Errorf("overlay built %s, copy built %s", digests[0], digests[1])
	}
}

// TestRunManyLayers: 130 RUN steps give 131 layers, more than an overlay
// mount takes as lowerdirs at once (128 by default: the bottom ones are
// merged), and every step sees all earlier ones.
func TestRunManyLayers(t *testing.T) {
	var df strings.Builder
	df.WriteString("FROM busybox\nRUN echo 0 > /n\n")
	for i := 1; i < 130; i++ {
		fmt.Fprintf(&df, "RUN echo $(( $(cat /n) + 1 )) > /n && touch /f%d\n", i)
	}
	res := rtBuild(t, df.String(), nil)
	ls, err := res.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 131 {
		t.Errorf("%d layers, want 131", len(ls))
	}
	fs := btFlatten(t, res.Image)
	if got := fs["n"].Content; got != "129\n" {
		t.Errorf("/n = %q, want 129", got)
	}
	for _, p := range []string{"f1", "f64", "f129"} {
		if _, ok := fs[p]; !ok {
			t.Errorf("%s missing", p)
		}
	}
}
