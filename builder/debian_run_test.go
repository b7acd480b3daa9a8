package builder_test

// RUN on the Debian bookworm minbase fixture: apt-get installs a package
// from the network (RUN has the host network by default), setcap's file
// capability reaches the layer as a PAX SCHILY.xattr.security.capability
// record, and the result is buildah's.

import (
	"archive/tar"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/registry"
	"github.com/imgbuild/imgbuild/registry/registrytest"
)

// aptDockerfile installs libcap2-bin (setcap, getcap) with apt-get and
// gives a file a capability. BASE is the Debian image.
const aptDockerfile = `ARG BASE
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin && rm -rf /var/lib/apt/lists/*
RUN echo '#!/bin/sh' > /usr/local/bin/pinger && chmod 0755 /usr/local/bin/pinger && \
    setcap cap_net_raw+ep /usr/local/bin/pinger && getcap /usr/local/bin/pinger > /getcap.out
`

// capNetRawEP is the security.capability value `setcap cap_net_raw+ep`
// writes: VFS_CAP_REVISION_2 with the effective flag, permitted bit 13.
const capNetRawEP = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// TestRunAptGetOnDebian builds aptDockerfile on the Debian fixture (pushed
// to a test registry) with imgbuild, and with buildah at the same time.
// imgbuild's image has the package installed (its binaries and dpkg's
// record of it) and the capability setcap wrote in the last layer's tar;
// its filesystem equals buildah's except for what apt stamps with the time
// (aptVolatile) and buildah's mount stubs.
func TestRunAptGetOnDebian(t *testing.T) {
	registrytest.RequireRoot(t)
	host := registrytest.Start(t)
	args := map[string]string{"BASE": registrytest.PushDebian(t, host)}
	ctxDir := btContext(t, map[string]string{"Dockerfile": aptDockerfile})

	bd := newBuildah(t)
	type built struct {
		img  v1.Image
		took time.Duration
		err  error
	}
	reference := make(chan built, 1)
	done := make(chan struct{})
	outDir := t.TempDir()
	go func() {
		defer close(done)
		start := time.Now()
		img, err := bd.build(t.Context(), "debian-apt", ctxDir, filepath.Join(ctxDir, "Dockerfile"), args, "", outDir)
		reference <- built{img, time.Since(start), err}
	}()
	// A failing test cancels t.Context, which stops buildah; wait for it
	// before the temporary directories go.
	t.Cleanup(func() { <-done })

	start := time.Now()
	res := btBuild(t, builder.Options{
		ContextDir: ctxDir, Store: btStore(t), BuildArgs: args,
		Registry: registry.Options{Insecure: []string{host}},
	})
	t.Logf("imgbuild: %v", time.Since(start).Round(time.Millisecond))
	checkAptImage(t, res.Image)

	ref := <-reference
	if ref.err != nil {
		t.Fatalf("buildah: %v", ref.err)
	}
	t.Logf("buildah: %v", ref.took.Round(time.Millisecond))
	want, err := takeSnapshot(ref.img)
	if err != nil {
		t.Fatal(err)
	}
	got, err := takeSnapshot(res.Image)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*snapshot{want, got} {
		for _, p := range aptVolatile {
			if e, ok := s.Files[p]; ok {
				e.Size, e.SHA256 = 0, ""
				s.Files[p] = e
			}
		}
	}
	for _, p := range []string{"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"} {
		// buildah's empty mount stubs (see testdata/diff/run-*/case.json).
		if e, ok := want.Files[p]; ok && e.Type == "file" && e.Mode == "0755" && e.Size == 0 {
			delete(want.Files, p)
		}
	}
	for _, d := range diffSnapshots(want, got) {
		t.Error(d)
	}
}

// aptVolatile are files apt and dpkg write with the time in them: only
// their type, mode and owner are compared.
var aptVolatile = []string{
	"/var/cache/apt/pkgcache.bin",
	"/var/cache/apt/srcpkgcache.bin",
	"/var/log/apt/history.log",
	"/var/log/apt/term.log",
	"/var/log/apt/eipp.log.xz",
	"/var/log/dpkg.log",
}

// checkAptImage checks imgbuild's image of aptDockerfile.
func checkAptImage(t *testing.T, img v1.Image) {
	t.Helper()
	fs := btFlatten(t, img)
	for _, p := range []string{"usr/sbin/setcap", "usr/sbin/getcap"} {
		if e, ok := fs[p]; !ok || e.Type != tar.TypeReg || e.Mode&0o111 == 0 {
			t.Errorf("%s: %+v (present %v), want an executable file", p, e.Type, ok)
		}
	}
	if st := fs["var/lib/dpkg/status"].Content; !strings.Contains(st, "Package: libcap2-bin\nStatus: install ok installed\n") {
		t.Errorf("dpkg status has no installed libcap2-bin")
	}
	if got, want := fs["getcap.out"].Content, "/usr/local/bin/pinger cap_net_raw=ep\n"; got != want {
		t.Errorf("getcap printed %q, want %q", got, want)
	}
	for p := range fs {
		if strings.HasPrefix(p, "var/lib/apt/lists/") {
			t.Errorf("%s: the step removed the package lists, yet the image has it", p)
		}
	}
	hdr := lastLayerHeader(t, img, "usr/local/bin/pinger")
	if hdr == nil {
		t.Fatal("usr/local/bin/pinger is not in the last layer")
	}
	if got := hdr.PAXRecords["SCHILY.xattr.security.capability"]; got != capNetRawEP {
		t.Errorf("pinger's security.capability in the layer = %q, want %q (PAX records %v)", got, capNetRawEP, hdr.PAXRecords)
	}
	if hdr.Mode&0o7777 != 0o755 {
		t.Errorf("pinger mode %o, want 755", hdr.Mode)
	}
}
