package builder_test

// Attack tests on the filesystem: base images whose sandbox mount points
// are symlinks to host paths, and steps that swap the parent of their
// mount stubs for such a link. The harness (attackHost, attackCase) is in
// attack_run_test.go.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// symlinkImage stores base plus a layer of files as tag.
func symlinkImage(t *testing.T, st *layers.Store, base v1.Image, tag string, files []registrytest.File) {
	t.Helper()
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:   registrytest.Layer(t, files),
		History: v1.History{CreatedBy: "attack layer"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dgst, err := st.PutImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, tag, dgst); err != nil {
		t.Fatal(err)
	}
}

// TestAttackRunSymlinkBase: base images whose sandbox mount points are
// symlinks, to host paths or elsewhere. As runc (which resolves mount
// destinations with securejoin in the root), the mounts land inside the
// root, following the link as if the root were "/"; a target that
// resolves to the root itself or into another mount fails the build.
// The stubs made for them never reach a layer, and nothing is created on
// the host.
func TestAttackRunSymlinkBase(t *testing.T) {
	h := newAttackHost(t)
	base := registrytest.BusyboxImage(t)
	passwd := btFlatten(t, base)["etc/passwd"].Content
	hostsOK := "grep buildkitsandbox /etc/hosts && (echo pwned > /etc/hosts || echo hosts-read-only)"
	tests := []struct {
		attackCase
		files []registrytest.File
	}{
		{files: []registrytest.File{{Name: "proc", Link: "{{DIR}}/p"}}, attackCase: attackCase{
			name: "/proc to a new host path", df: "FROM evil\nRUN test -r /proc/self/status && ls -d {{DIR}}/p/self && echo ok\n",
			wantLog: []string{"ok\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "proc", Link: "{{DIR}}"}}, attackCase: attackCase{
			name: "/proc to the host sentinel directory", df: "FROM evil\nRUN test -r /proc/self/status && echo ok\n",
			wantLog: []string{"ok\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "proc", Link: "/proc"}}, attackCase: attackCase{
			name: "/proc to itself", df: "FROM evil\nRUN true\n", wantErr: "too many levels of symbolic links"}},
		{files: []registrytest.File{{Name: "sys", Link: "../../../../../../{{DIR}}/s"}}, attackCase: attackCase{
			name: "/sys relative, escaping", df: "FROM evil\nRUN test -d /sys/class && echo ok\n",
			wantLog: []string{"ok\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "sys", Link: "/proc"}}, attackCase: attackCase{
			name: "/sys into /proc", df: "FROM evil\nRUN true\n", wantErr: "inside the mount at /proc"}},
		{files: []registrytest.File{{Name: "dev", Link: "/"}}, attackCase: attackCase{
			name: "/dev to /", df: "FROM evil\nRUN true\n", wantErr: "mount target /dev resolves to the root directory"}},
		{files: []registrytest.File{{Name: "dev", Link: "{{DIR}}"}}, attackCase: attackCase{
			name: "/dev to the host sentinel directory", df: "FROM evil\nRUN echo x > /dev/null && test -c /dev/zero && echo ok\n",
			wantLog: []string{"ok\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "dev/null", Link: "{{SENTINEL}}"}}, attackCase: attackCase{
			name: "/dev/null to the host sentinel", df: "FROM evil\nRUN echo pwned > /dev/null && test -c /dev/null && echo ok\n",
			wantLog: []string{"ok\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "etc/hosts", Link: "{{SENTINEL}}"}}, attackCase: attackCase{
			name: "/etc/hosts to the host sentinel", df: "FROM evil\nRUN " + hostsOK + "\n",
			wantLog: []string{"hosts-read-only\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "etc/hosts", Link: "/etc/passwd"}}, attackCase: attackCase{
			name: "/etc/hosts to /etc/passwd", df: "FROM evil\nRUN " + hostsOK + "\n",
			wantLog: []string{"hosts-read-only\n"}, emptyLayer: true, imageFiles: map[string]string{"etc/passwd": passwd}}},
		{files: []registrytest.File{{Name: "etc/resolv.conf", Link: "{{SENTINEL}}"}}, attackCase: attackCase{
			name: "/etc/resolv.conf to the host sentinel", df: "FROM evil\nRUN cat /etc/resolv.conf; echo pwned > /etc/resolv.conf || echo resolv-read-only\n",
			wantLog: []string{"resolv-read-only\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "etc/hostname", Link: "{{DIR}}/sub/file"}}, attackCase: attackCase{
			name: "/etc/hostname to a host file", df: "FROM evil\nRUN cat /etc/hostname\n",
			wantLog: []string{"buildkitsandbox\n"}, emptyLayer: true}},
		// The same for a shell that is a link to /proc/self/exe.
		{files: []registrytest.File{{Name: "bin/sh", Link: "/proc/self/exe"}}, attackCase: attackCase{
			name: "/bin/sh to /proc/self/exe", df: "FROM evil\nRUN true\n", wantErr: "run: sandbox: exec /bin/sh: no such file or directory"}},
		// WORKDIR and the working directory of RUN follow links inside
		// the root, here to a directory that exists both in the image and
		// on the host.
		{files: []registrytest.File{{Name: "{{DIR}}/"}, {Name: "w", Link: "{{DIR}}"}}, attackCase: attackCase{
			name: "WORKDIR through a link to a host directory", df: "FROM evil\nWORKDIR /w/new\nRUN echo x > file && pwd\n",
			wantLog: []string{"{{DIR}}/new\n"}, imageFiles: map[string]string{"{{DIR}}/new/file": "x\n"}}},
		// passwd and group of a link to host files are not read on the
		// host: HOME and the groups come from the defaults.
		{files: []registrytest.File{{Name: "etc/passwd", Link: "{{DIR}}/passwd"}}, attackCase: attackCase{
			name: "/etc/passwd to a host file", df: "FROM evil\nRUN echo home=$HOME; cat /etc/passwd\n",
			wantErr: "exit status 1", wantLog: []string{"home=/\n", "can't open '/etc/passwd'"}}},
		{files: []registrytest.File{{Name: "etc/group", Link: "{{DIR}}/group"}}, attackCase: attackCase{
			name: "/etc/group to a host file", df: "FROM evil\nUSER app\nRUN echo groups=$(id -G)\n",
			wantLog: []string{"groups=1000\n"}}},
		// With /etc a link to a host directory, the image has no passwd:
		// USER app is unknown rather than read from the host.
		{files: []registrytest.File{{Name: "etc", Link: "{{DIR}}"}}, attackCase: attackCase{
			name: "/etc to the host sentinel directory", df: "FROM evil\nRUN cat /etc/hosts /etc/sentinel 2>&1; ls /etc\n",
			wantLog: []string{"buildkitsandbox", "No such file", "hosts\n"}, emptyLayer: true}},
		{files: []registrytest.File{{Name: "etc", Link: "{{DIR}}"}}, attackCase: attackCase{
			name: "USER read through /etc to a host directory", df: "FROM evil\nUSER app\nRUN id\n",
			wantErr: "unable to find user app"}},
	}
	for _, kind := range []string{"overlay", "copy"} {
		t.Run(kind, func(t *testing.T) {
			st := rtStore(t)
			for i, tc := range tests {
				if kind == "copy" && tc.wantErr != "" {
					continue // resolved and refused before any mount: as overlay
				}
				t.Run(tc.name, func(t *testing.T) {
					files := slices.Clone(tc.files)
					for i := range files {
						files[i].Name = strings.TrimPrefix(h.expand(files[i].Name), "/")
						files[i].Link = h.expand(files[i].Link)
					}
					tag := fmt.Sprintf("evil%d", i)
					symlinkImage(t, st, base, tag, files)
					tc.df = strings.Replace(tc.df, "FROM evil\n", "FROM "+tag+"\n", 1)
					h.run(t, st, tc.attackCase, func(o *builder.Options) { o.Snapshotter = kind })
				})
			}
		})
	}
}

// TestAttackRunStubSwap: a step replaces the parent of its mount stubs
// with a link to a host directory holding files named as the stubs
// (BuildKit's CVE-2024-23652): the stub cleanup, which runs on the host,
// must not follow it. The image has no /etc, so /etc is a stub too. The
// next step follows the link inside the root, and the builder reads
// passwd there, not on the host.
func TestAttackRunStubSwap(t *testing.T) {
	h := newAttackHost(t)
	for _, kind := range []string{"overlay", "copy"} {
		t.Run(kind, func(t *testing.T) {
			st := rtStore(t)
			symlinkImage(t, st, registrytest.BusyboxImage(t), "evil", []registrytest.File{{Name: ".wh.etc"}})
			h.run(t, st, attackCase{
				df: "FROM evil\nRUN mv /etc /etc.moved && ln -s {{DIR}} /etc && ls /etc.moved && echo swapped\n" +
					"RUN id -u; echo home=$HOME; ls /etc; cat /etc/hosts; cat /etc/passwd 2>&1; echo end\n",
				wantLog: []string{"swapped\n", "0\nhome=/\nhostname\nhosts\nresolv.conf\n", "buildkitsandbox", "can't open '/etc/passwd'", "end\n"},
			}, func(o *builder.Options) { o.Snapshotter = kind })
		})
	}
}
