package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
)

// runCLI runs the CLI in-process and returns its exit status and output.
func runCLI(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"imgbuild"}, args...), strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrors(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string // substring of stderr
	}{
		{"build without context", nil, []string{"build"}, "requires exactly 1 argument"},
		{"default without context", nil, []string{"-t", "app"}, "requires exactly 1 argument"},
		{"two contexts", nil, []string{"build", "a", "b"}, "requires exactly 1 argument"},
		{"unknown flag", nil, []string{"build", "--bogus", "."}, "flag provided but not defined: -bogus"},
		{"unknown flag, default command", nil, []string{"--bogus", "."}, "flag provided but not defined: -bogus"},
		{"unknown flag after context", nil, []string{"build", ".", "--bogus"}, "flag provided but not defined: -bogus"},
		{"flag missing value", nil, []string{"build", ".", "--target"}, "flag needs an argument"},
		{"bad output type", nil, []string{"build", "-o", "type=nope", "."}, `unknown type "nope"`},
		{"bad output key", nil, []string{"build", "-o", "type=tar,dest=x,foo=bar", "."}, `unknown key "foo"`},
		{"two outputs to stdout", nil, []string{"build", "-o", "-", "-o", "type=docker,dest=-", "."}, "only one output"},
		{"push without tag", nil, []string{"build", "--push", "."}, "nothing to push to"},
		{"registry output without tag", nil, []string{"build", "-o", "type=registry", "."}, "nothing to push to"},
		{"bad progress", nil, []string{"build", "--progress", "fancy", "."}, `invalid --progress "fancy"`},
		{"bad compression", nil, []string{"build", "--compression", "lz4", "."}, `unknown compression "lz4"`},
		{"gzip level too high", nil, []string{"build", "--compression-level", "10", "."}, "out of range 1-9"},
		{"gzip level zero", nil, []string{"build", "--compression=gzip", "--compression-level=0", "."}, "out of range 1-9"},
		{"zstd level too high", nil, []string{"build", "--compression", "zstd", "--compression-level", "23", "."}, "out of range 1-22"},
		{"level for uncompressed", nil, []string{"build", "--compression", "uncompressed", "--compression-level", "1", "."}, "does not apply"},
		{"level not a number", nil, []string{"build", "--compression-level", "abc", "."}, "invalid value"},
		{"platform without arch", nil, []string{"build", "--platform", "linux", "."}, "want os/arch or os/arch/variant"},
		{"platform too long", nil, []string{"build", "--platform", "linux/arm/v7/x", "."}, "want os/arch or os/arch/variant"},
		{"platform empty arch", nil, []string{"build", "--platform", "linux/", "."}, "want os/arch or os/arch/variant"},
		{"several platforms", nil, []string{"build", "--platform", "linux/amd64,linux/arm64", "."}, "not supported yet"},
		{"context and Dockerfile on stdin", nil, []string{"build", "-f", "-", "-"}, "cannot both be -"},
		{"bad tag", nil, []string{"build", "-t", "Bad:Tag", "."}, `invalid tag "Bad:Tag"`},
		{"digest as tag", nil, []string{"build", "-t", "app@sha256:0000", "."}, "invalid tag"},
		{"insecure with scheme", nil, []string{"build", "--insecure-registry", "http://h:5000", "."}, "want HOST[:PORT]"},
		{"build-arg without name", nil, []string{"build", "--build-arg", "=x", "."}, "empty name"},
		{"label without name", nil, []string{"build", "--label", "=x", "."}, "empty name"},
		{"remote context", nil, []string{"build", "https://example.invalid/repo.git"}, "not supported yet"},
		{"bad SOURCE_DATE_EPOCH", map[string]string{"SOURCE_DATE_EPOCH": "yesterday"}, []string{"build", "."}, "invalid SOURCE_DATE_EPOCH"},
		{"bad network", nil, []string{"build", "--network", "bridge", "."}, `invalid --network "bridge": want default, host or none`},
		{"bad snapshotter", nil, []string{"build", "--snapshotter", "btrfs", "."}, `invalid --snapshotter "btrfs": want auto, overlay or copy`},
		{"bad snapshotter in env", map[string]string{snapshotterEnv: "zfs"}, []string{"build", "."}, `invalid IMGBUILD_SNAPSHOTTER "zfs" in the environment: want auto, overlay or copy`},
		{"bad memory", nil, []string{"build", "--memory", "lots", "."}, `invalid --memory "lots": want BYTES`},
		{"negative memory", nil, []string{"build", "-m", "-1", "."}, `invalid --memory "-1"`},
		{"memory below minimum", nil, []string{"build", "--memory", "4m", "."}, "--memory 4m is below the minimum 6m"},
		{"memory of one byte", nil, []string{"build", "--memory=1", "."}, "--memory 1 is below the minimum 6m"},
		{"bad pids limit", nil, []string{"build", "--pids-limit", "many", "."}, `invalid --pids-limit "many"`},
		{"negative pids limit", nil, []string{"build", "--pids-limit", "-2", "."}, `invalid --pids-limit "-2"`},
		{"pids limit below minimum", nil, []string{"build", "--pids-limit", "15", "."}, "--pids-limit 15 is below the minimum 16"},
		{"images with argument", nil, []string{"images", "x"}, "accepts no arguments"},
		{"images bad format", nil, []string{"images", "--format", "yaml"}, `invalid --format "yaml"`},
		{"inspect without ref", nil, []string{"inspect"}, "requires exactly 1"},
		{"inspect two refs", nil, []string{"inspect", "a", "b"}, "requires exactly 1"},
		{"push without ref", nil, []string{"push"}, "requires at least 1"},
		{"push digest", nil, []string{"push", "sha256:abcd"}, "not a NAME[:TAG]"},
		{"push bad insecure", nil, []string{"push", "--insecure-registry", "a/b", "x"}, "want HOST[:PORT]"},
		{"save without ref", nil, []string{"save", "-o", "x.tar"}, "requires at least 1"},
		{"tag one arg", nil, []string{"tag", "a"}, "requires exactly 2"},
		{"tag three args", nil, []string{"tag", "a", "b", "c"}, "requires exactly 2"},
		{"tag bad destination", nil, []string{"tag", "a", "NOT VALID"}, "invalid tag"},
		{"rm without ref", nil, []string{"rm"}, "requires at least 1"},
		{"prune with argument", nil, []string{"prune", "x"}, "accepts no arguments"},
		{"prune filter without until", nil, []string{"prune", "--filter", "type=regular"}, `invalid --filter "type=regular": want until=DURATION`},
		{"prune filter not key=value", nil, []string{"prune", "--filter", "24h"}, `invalid --filter "24h": want until=DURATION`},
		{"prune filter bad duration", nil, []string{"prune", "--filter", "until=soon"}, `invalid --filter "until=soon": want a duration such as 24h, 90m or 7d`},
		{"prune filter bad days", nil, []string{"prune", "--filter", "until=xd"}, "want a duration"},
		{"prune filter zero", nil, []string{"prune", "--filter", "until=0s"}, "the duration must be positive"},
		{"prune filter negative", nil, []string{"prune", "--filter", "until=-1h"}, "want a duration"},
		{"prune bad keep-storage", nil, []string{"prune", "--keep-storage", "lots"}, `invalid --keep-storage "lots": want SIZE`},
		{"prune negative keep-storage", nil, []string{"prune", "--keep-storage", "-1GB"}, `invalid --keep-storage "-1GB"`},
		{"du with argument", nil, []string{"du", "x"}, "accepts no arguments"},
		{"du unknown flag", nil, []string{"du", "--all"}, "flag provided but not defined: -all"},
		{"empty no-cache-filter entry", nil, []string{"build", "--no-cache-filter", "a,,b", "."}, `invalid --no-cache-filter "a,,b": empty stage name`},
		{"empty no-cache-filter", nil, []string{"build", "--no-cache-filter=", "."}, "empty stage name"},
		{"cache-from bad type", nil, []string{"build", "--cache-from", "type=s3,ref=x", "."}, `invalid --cache-from: cache "type=s3,ref=x": unknown type "s3"`},
		{"cache-from with dest", nil, []string{"build", "--cache-from", "type=local,dest=d", "."}, `unknown key "dest"`},
		{"cache-from with mode", nil, []string{"build", "--cache-from", "type=registry,ref=r/x:c,mode=max", "."}, `unknown key "mode"`},
		{"cache-from local without src", nil, []string{"build", "--cache-from", "type=local", "."}, "type=local needs src=DIR"},
		{"cache-from empty", nil, []string{"build", "--cache-from", "", "."}, "invalid --cache-from: empty cache spec"},
		{"cache-to registry without ref", nil, []string{"build", "--cache-to", "type=registry,mode=max", "."}, "type=registry needs ref=REPO:TAG"},
		{"cache-to local without dest", nil, []string{"build", "--cache-to", "type=local,src=d", "."}, `invalid --cache-to: cache "type=local,src=d": unknown key "src"`},
		{"cache-to bad mode", nil, []string{"build", "--cache-to", "type=local,dest=d,mode=all", "."}, "mode must be min or max"},
		{"cache-to bad ignore-error", nil, []string{"build", "--cache-to", "type=local,dest=d,ignore-error=maybe", "."}, "ignore-error must be true or false"},
		{"cache-to image-manifest=false", nil, []string{"build", "--cache-to", "type=registry,ref=r/x:c,image-manifest=false", "."}, "only image-manifest=true is supported"},
		{"cache-from ignore-error", nil, []string{"build", "--cache-from", "type=registry,ref=r/x:c,ignore-error=true", "."}, `unknown key "ignore-error"`},
		{"version with argument", nil, []string{"version", "x"}, "accepts no arguments"},
		{"unknown flag on images", nil, []string{"images", "--all"}, "flag provided but not defined: -all"},
		{"help for unknown command", nil, []string{"help", "frobnicate"}, "No help topic for 'frobnicate'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(rootEnv, root)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			code, stdout, stderr := runCLI(t, "", tt.args...)
			if code != exitUsage {
				t.Errorf("exit status %d, want %d; stderr:\n%s", code, exitUsage, stderr)
			}
			if !strings.HasPrefix(stderr, "imgbuild: ") || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("stderr = %q, want \"imgbuild: ...%s...\"", stderr, tt.wantErr)
			}
			if n := strings.Count(stderr, "\n"); n != 1 {
				t.Errorf("stderr has %d lines, want 1: %q", n, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
}

// parseBuild runs the CLI with args, with the build command's action
// replaced by buildOptions, and returns what it produced.
func parseBuild(t *testing.T, env map[string]string, stdin io.Reader, args ...string) (*buildConfig, error) {
	t.Helper()
	s := &streams{stdin: stdin, stdout: io.Discard, stderr: io.Discard,
		lookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	app := newApp(s)
	var cfg *buildConfig
	app.Command("build").Action = func(c *cli.Context) error {
		var err error
		cfg, err = buildOptions(c, s)
		return err
	}
	err := app.RunContext(context.Background(), normalizeArgs(app, append([]string{"imgbuild"}, args...)))
	return cfg, err
}

func TestBuildOptions(t *testing.T) {
	epoch := time.Unix(1700000000, 0).UTC()
	stdin := strings.NewReader("FROM scratch\n")
	tests := []struct {
		name  string
		env   map[string]string
		stdin io.Reader
		args  []string
		want  buildConfig
	}{{
		name: "every flag",
		env:  map[string]string{"FROM_ENV": "env value", "SOURCE_DATE_EPOCH": "1700000000"},
		args: []string{"build", "-t", "app:1", "--tag", "registry.example:5000/team/app:latest",
			"--build-arg", "A=1", "--build-arg", "FROM_ENV", "--build-arg", "UNSET_IN_ENV", "--build-arg", "LIST=a,b",
			"--target", "final", "--label", "org.x=y", "--label", "bare", "--platform", "linux/arm64/v8",
			"--push", "-o", "type=oci,dest=out", "--output", "type=docker,dest=app.tar,name=app:2",
			"--insecure-registry", "localhost:5000", "--insecure-registry", "h",
			"--compression", "zstd", "--compression-level", "19", "--no-cache",
			"-f", "ctx/Dockerfile.prod", "--iidfile", "iid", "--metadata-file", "meta.json",
			"--progress", "json", "--network", "none", "--snapshotter", "copy", "-m", "512m", "--pids-limit", "100", "ctx"},
		want: buildConfig{
			opts: builder.Options{
				ContextDir: "ctx", Dockerfile: "ctx/Dockerfile.prod",
				Tags:      []string{"app:1", "registry.example:5000/team/app:latest"},
				BuildArgs: map[string]string{"A": "1", "FROM_ENV": "env value", "LIST": "a,b"},
				Labels:    map[string]string{"org.x": "y", "bare": ""},
				Target:    "final", Platform: "linux/arm64/v8", NoCache: true,
				SourceDateEpoch: &epoch,
				Layer:           layers.LayerOptions{Compression: layers.Zstd, Level: 19},
				Registry:        registry.Options{Insecure: []string{"localhost:5000", "h"}},
				Network:         "none", Snapshotter: "copy", Memory: 512 << 20, PidsLimit: 100,
			},
			outputs: []builder.Output{
				{Type: "oci", Dest: "out"},
				{Type: "docker", Dest: "app.tar", Attrs: map[string]string{"name": "app:2"}},
				{Type: "registry"},
			},
			iidFile: "iid", metadataFile: "meta.json", progress: "json",
		},
	}, {
		name: "cache flags",
		args: []string{"build", "--no-cache-filter", "deps, test", "--no-cache-filter=2", "--cache-from", "registry.example/app:cache",
			"--cache-from", "type=local,src=/tmp/c", "--cache-to", "type=registry,ref=registry.example/app:cache,mode=max",
			"--cache-to", "type=local,dest=/tmp/out,ignore-error=true,oci-mediatypes=true,image-manifest=true", "."},
		want: buildConfig{
			opts: builder.Options{ContextDir: ".", Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "default", Snapshotter: "auto",
				NoCacheFilter: []string{"deps", "test", "2"},
				CacheFrom: []builder.CacheSpec{{Type: "registry", Ref: "registry.example/app:cache", Mode: "min"},
					{Type: "local", Dir: "/tmp/c", Mode: "min"}},
				CacheTo: []builder.CacheSpec{{Type: "registry", Ref: "registry.example/app:cache", Mode: "max"},
					{Type: "local", Dir: "/tmp/out", Mode: "min", IgnoreError: true}},
			},
			progress: "plain",
		},
	}, {
		name: "defaults, build as the default command, flags after the context",
		args: []string{"ctx", "-t", "app", "-q"},
		want: buildConfig{
			opts: builder.Options{ContextDir: "ctx", Tags: []string{"app"}, Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "default", Snapshotter: "auto"},
			quiet:    true,
			progress: "plain",
		},
	}, {
		name:  "Dockerfile from stdin",
		stdin: stdin,
		args:  []string{"build", "-f", "-", "--progress=plain", "ctx"},
		want: buildConfig{
			opts: builder.Options{ContextDir: "ctx", DockerfileContent: []byte("FROM scratch\n"), Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "default", Snapshotter: "auto"},
			progress: "plain",
		},
	}, {
		name:  "context from stdin",
		stdin: stdin,
		args:  []string{"-", "--push", "-o", "type=registry,name=x:1", "--compression=uncompressed"},
		want: buildConfig{
			opts: builder.Options{ContextTar: stdin, Layer: layers.LayerOptions{Compression: layers.Uncompressed},
				Network: "default", Snapshotter: "auto"},
			outputs:  []builder.Output{{Type: "registry", Attrs: map[string]string{"name": "x:1"}}},
			progress: "plain",
		},
	}, {
		name: "output shorthands",
		args: []string{"build", "-o", "rootfs", "-o", "-", "."},
		want: buildConfig{
			opts: builder.Options{ContextDir: ".", Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "default", Snapshotter: "auto"},
			outputs:  []builder.Output{{Type: "local", Dest: "rootfs"}, {Type: "tar", Dest: "-"}},
			progress: "plain",
		},
	}, {
		name: "RUN limits at their minimums, network host",
		args: []string{"--memory=6m", "--pids-limit=16", "--network=host", "--snapshotter=overlay", "."},
		want: buildConfig{
			opts: builder.Options{ContextDir: ".", Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "host", Snapshotter: "overlay", Memory: 6 << 20, PidsLimit: 16},
			progress: "plain",
		},
	}, {
		name: "docker's no-limit forms; the snapshotter from the environment",
		env:  map[string]string{snapshotterEnv: "copy"},
		args: []string{"--memory", "0", "--pids-limit", "-1", "."},
		want: buildConfig{
			opts: builder.Options{ContextDir: ".", Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "default", Snapshotter: "copy"},
			progress: "plain",
		},
	}, {
		name: "--snapshotter wins over the environment; memory in plain bytes and with a unit",
		env:  map[string]string{snapshotterEnv: "copy"},
		args: []string{"--snapshotter", "auto", "--memory", "1073741824", "--pids-limit", "0", "."},
		want: buildConfig{
			opts: builder.Options{ContextDir: ".", Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "default", Snapshotter: "auto", Memory: 1 << 30},
			progress: "plain",
		},
	}, {
		name: "memory with a spelled-out unit",
		args: []string{"-m", "1.5GiB", "."},
		want: buildConfig{
			opts: builder.Options{ContextDir: ".", Layer: layers.LayerOptions{Compression: layers.Gzip},
				Network: "default", Snapshotter: "auto", Memory: 3 << 29},
			progress: "plain",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.stdin
			if in == nil {
				in = strings.NewReader("")
			}
			got, err := parseBuild(t, tt.env, in, tt.args...)
			if err != nil {
				t.Fatalf("buildOptions: %v", err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("buildOptions =\n%+v\nwant\n%+v", *got, tt.want)
			}
		})
	}
}

func TestNormalizeArgs(t *testing.T) {
	app := newApp(&streams{stdout: io.Discard, stderr: io.Discard})
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{".", "build -- ."},
		{"-t app .", "build --tag app -- ."},
		{". -t app --tag b", "build --tag app --tag b -- ."},
		{"build . -t=app --push -q", "build --tag=app --push --quiet -- ."},
		{"build -", "build -- -"},
		{"build -o - .", "build --output - -- ."},
		{"build --compression-level -1 .", "build --compression-level -1 -- ."},
		{"build -- -weird-dir", "build -- -weird-dir"},
		{"--root /r images", "images --root /r"},
		{"--root=/r images -q", "images --root=/r --quiet"},
		{"--root /r .", "build --root /r -- ."},
		{"--root /r", "build --root /r"},
		{"images --root /r", "images --root /r"},
		{"save app -o x.tar", "save --output x.tar -- app"},
		{"push --insecure-registry h:5000 h:5000/a", "push --insecure-registry h:5000 -- h:5000/a"},
		{"rmi a b", "rm -- a b"},
		{"help build", "help build"},
		{"--help", "--help"},
		{"-h", "-h"},
		{"build --help", "build --help"},
		{"build . --target", "build --target"},
		{"build -x .", "build -x -- ."},
		{"images", "images"},
		{"du -v", "du --verbose"},
		{"--root /r du", "du --root /r"},
		{"prune -a --filter until=1h --keep-storage 1g", "prune --all --filter until=1h --keep-storage 1g"},
		{"build . --no-cache-filter a,b --cache-from r/x:c", "build --no-cache-filter a,b --cache-from r/x:c -- ."},
	}
	for _, tt := range tests {
		in := append([]string{"imgbuild"}, strings.Fields(tt.in)...)
		got := strings.Join(normalizeArgs(app, in)[1:], " ")
		if got != tt.want {
			t.Errorf("normalizeArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBuildArgFromEnv(t *testing.T) {
	env := map[string]string{"HTTP_PROXY": "http://proxy:3128", "EMPTY": ""}
	got, err := parseBuildArgs([]string{"HTTP_PROXY", "EMPTY", "MISSING", "X=1", "Y="}, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"HTTP_PROXY": "http://proxy:3128", "EMPTY": "", "X": "1", "Y": ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseBuildArgs = %v, want %v", got, want)
	}

	// Through the real process environment, as a user runs it.
	t.Setenv("IMGBUILD_TEST_ARG", "from env")
	s := &streams{lookupEnv: os.LookupEnv}
	app := newApp(s)
	var cfg *buildConfig
	app.Command("build").Action = func(c *cli.Context) error {
		var err error
		cfg, err = buildOptions(c, s)
		return err
	}
	if err := app.RunContext(context.Background(), []string{"imgbuild", "build", "--build-arg", "IMGBUILD_TEST_ARG", "."}); err != nil {
		t.Fatal(err)
	}
	if v := cfg.opts.BuildArgs["IMGBUILD_TEST_ARG"]; v != "from env" {
		t.Errorf("BuildArgs[IMGBUILD_TEST_ARG] = %q, want %q", v, "from env")
	}
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runCLI(t, "", "version")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(stdout, "imgbuild ") || !strings.Contains(stdout, "\ngo: "+runtime.Version()+" ") || !strings.Contains(stdout, "\ncommit: ") {
		t.Errorf("version output:\n%s", stdout)
	}

	var b bytes.Buffer
	info := &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.modified", Value: "true"},
		{Key: "vcs.time", Value: "2024-01-02T03:04:05Z"},
	}}
	if err := printVersion(&b, "", info); err != nil {
		t.Fatal(err)
	}
	want := "imgbuild v1.2.3\ngo: " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH +
		"\ncommit: 0123456789abcdef (modified)\ncommit time: 2024-01-02T03:04:05Z\n"
	if b.String() != want {
		t.Errorf("printVersion =\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := printVersion(&b, "v9.9.9-3-gabcdef", nil); err != nil {
		t.Fatal(err)
	}
	if want := "imgbuild v9.9.9-3-gabcdef\ngo: " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\ncommit: unknown\n"; b.String() != want {
		t.Errorf("printVersion with a stamped version =\n%s\nwant\n%s", b.String(), want)
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"build", "--help"}, {"help", "build"}, {}} {
		code, stdout, stderr := runCLI(t, "", args...)
		if code != 0 {
			t.Errorf("%q: exit %d: %s", args, code, stderr)
		}
		if !strings.Contains(stdout, "imgbuild") {
			t.Errorf("%q: no help on stdout: %q", args, stdout)
		}
	}
	_, stdout, _ := runCLI(t, "", "build", "--help")
	for _, flag := range []string{"--tag NAME[:TAG], -t NAME[:TAG]", "--file", "--build-arg", "--target", "--label", "--platform", "--push",
		"--output", "--insecure-registry", "--root", "--iidfile", "--metadata-file", "--quiet", "--progress",
		"--compression", "--compression-level", "--no-cache", "auto is plain",
		"--no-cache-filter STAGE", "--cache-from SPEC", "--cache-to SPEC",
		"--network MODE", "--snapshotter KIND", "$IMGBUILD_SNAPSHOTTER", "--memory BYTES, -m BYTES", "--pids-limit N"} {
		if !strings.Contains(stdout, flag) {
			t.Errorf("build --help lacks %q", flag)
		}
	}
}
