package builder_test

// RUN on the Debian bookworm minbase fixture: apt-get installs a package
// from the network (RUN has the host network by default), and setcap's file
// capability reaches the layer as a PAX SCHILY.xattr.security.capability
// record.

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
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

// debianStore is a store holding the Debian fixture tagged "debian".
func debianStore(t *testing.T) *layers.Store {
	t.Helper()
	img := registrytest.DebianImage(t)
	st := btStore(t)
	dgst, err := st.PutImage(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(context.Background(), "debian", dgst); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestRunAptGetOnDebian builds aptDockerfile on the Debian fixture: the
// package is installed (its binaries and dpkg's record of it are in the
// image) and the capability setcap wrote is in the last layer's tar.
func TestRunAptGetOnDebian(t *testing.T) {
	registrytest.RequireRoot(t)
	st := debianStore(t)
	start := time.Now()
	res := btBuild(t, builder.Options{
		ContextDir: btContext(t, map[string]string{"Dockerfile": aptDockerfile}),
		Store:      st,
		BuildArgs:  map[string]string{"BASE": "debian"},
	})
	t.Logf("imgbuild: %v", time.Since(start).Round(time.Millisecond))

	fs := btFlatten(t, res.Image)
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

	hdr := lastLayerHeader(t, res.Image, "usr/local/bin/pinger")
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

// lastLayerHeader returns the tar header of name in the image's last layer,
// or nil.
func lastLayerHeader(t *testing.T, img v1.Image, name string) *tar.Header {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[len(ls)-1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			return h
		}
	}
}
