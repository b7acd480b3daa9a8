package registry

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imgbuild/imgbuild/registry/registrytest"
)

func TestParsePlatform(t *testing.T) {
	host := HostPlatform()
	tests := []struct {
		in, want, err string
	}{
		{in: "linux/amd64", want: "linux/amd64"},
		{in: "linux/x86_64", want: "linux/amd64"},
		{in: "linux/amd64/v1", want: "linux/amd64"},
		{in: "linux/amd64/v3", want: "linux/amd64/v3"},
		{in: "linux/arm64", want: "linux/arm64"},
		{in: "linux/arm64/v8", want: "linux/arm64"},
		{in: "linux/aarch64", want: "linux/arm64"},
		{in: "linux/arm", want: "linux/arm/v7"},
		{in: "linux/arm/v6", want: "linux/arm/v6"},
		{in: "linux/arm/7", want: "linux/arm/v7"},
		{in: "linux/armhf", want: "linux/arm/v7"},
		{in: "linux/armel", want: "linux/arm/v6"},
		{in: "Linux/S390X", want: "linux/s390x"},
		{in: "", want: host.String()},
		{in: "local", want: host.String()},
		{in: "linux", err: `invalid platform "linux": want os/arch or os/arch/variant`},
		{in: "linux/", err: `invalid platform "linux/": want os/arch or os/arch/variant`},
		{in: "/amd64", err: `invalid platform "/amd64": want os/arch or os/arch/variant`},
		{in: "linux/arm/v7/x", err: `invalid platform "linux/arm/v7/x": want os/arch or os/arch/variant`},
	}
	for _, tc := range tests {
		p, err := ParsePlatform(tc.in)
		switch {
		case tc.err != "":
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParsePlatform(%q) error %v, want %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("ParsePlatform(%q): %v", tc.in, err)
		case p.String() != tc.want:
			t.Errorf("ParsePlatform(%q) = %s, want %s", tc.in, p, tc.want)
		}
	}
	if host.OS != runtime.GOOS || host.Architecture != runtime.GOARCH {
		t.Errorf("HostPlatform() = %s", host)
	}
}

func TestSelectManifest(t *testing.T) {
	n := 0
	desc := func(os, arch, variant string) v1.Descriptor {
		n++
		return v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Digest:    v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", n)},
			Platform:  &v1.Platform{OS: os, Architecture: arch, Variant: variant},
		}
	}
	list := []v1.Descriptor{
		desc("unknown", "unknown", ""), // a BuildKit attestation
		desc("linux", "amd64", ""),
		desc("linux", "arm64", "v8"),
		desc("linux", "arm", "v6"),
		desc("linux", "arm", "v7"),
		desc("windows", "amd64", ""),
	}
	tests := []struct {
		want  string
		index int // into list; -1 for none
	}{
		{"linux/amd64", 1},
		{"linux/arm64", 2},
		{"linux/arm64/v8", 2},
		{"linux/arm", 4},
		{"linux/arm/v6", 3},
		{"windows/amd64", 5},
		{"linux/amd64/v3", -1},
		{"linux/s390x", -1},
	}
	for _, tc := range tests {
		p, err := ParsePlatform(tc.want)
		if err != nil {
			t.Fatal(err)
		}
		d, ok := selectManifest(list, *p)
		switch {
		case tc.index < 0 && ok:
			t.Errorf("%s selected %v, want none", tc.want, d.Platform)
		case tc.index >= 0 && (!ok || d.Digest != list[tc.index].Digest):
			t.Errorf("%s selected %v (%v), want %v", tc.want, d.Platform, ok, list[tc.index].Platform)
		}
	}
	if got, want := platformList(list), "linux/amd64, linux/arm64/v8, linux/arm/v6, linux/arm/v7, windows/amd64"; got != want {
		t.Errorf("platformList = %q, want %q", got, want)
	}
}

func TestMatchHost(t *testing.T) {
	entries := []string{"reg.test:5000", "plain.test", "http://schemed.test:8080/", "127.0.0.1:5001"}
	tests := []struct {
		host string
		want bool
	}{
		{"reg.test:5000", true},
		{"reg.test", false},
		{"reg.test:5001", false},
		{"plain.test", true},
		{"plain.test:443", true},
		{"PLAIN.test:1", true},
		{"schemed.test:8080", true},
		{"127.0.0.1:5001", true},
		{"127.0.0.1:5002", false},
		{"other.test", false},
	}
	for _, tc := range tests {
		if got := matchHost(entries, tc.host); got != tc.want {
			t.Errorf("matchHost(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

func TestPullPlatform(t *testing.T) {
	f := newFakeRegistry(t)
	ref := f.host + "/library/multi:1"
	r, err := f.opts().parseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	idx := registrytest.BusyboxIndex(t)
	if err := pushIndexForTest(t, r, idx, f.opts()); err != nil {
		t.Fatal(err)
	}
	busyboxDigest, _ := registrytest.BusyboxImage(t).Digest()
	var names []string
	for _, p := range registrytest.IndexPlatforms() {
		names = append(names, p.String())
	}
	for i, p := range registrytest.IndexPlatforms() {
		t.Run(p.String(), func(t *testing.T) {
			opts := f.opts()
			opts.Platform = &p
			img, err := Pull(t.Context(), ref, opts)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Platform().String(); got != p.String() {
				t.Errorf("pulled %s", got)
			}
			if i == 0 {
				if d, _ := img.Digest(); d != busyboxDigest {
					t.Errorf("host platform pulled %s, want busybox %s", d, busyboxDigest)
				}
				return
			}
			if got := markerOf(t, img); got != p.String()+"\n" {
				t.Errorf("marker %q", got)
			}
		})
	}
	t.Run("default is the host", func(t *testing.T) {
		img, err := Pull(t.Context(), ref, f.opts())
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := img.Digest(); d != busyboxDigest {
			t.Errorf("pulled %s, want busybox %s", d, busyboxDigest)
		}
	})
	t.Run("missing platform", func(t *testing.T) {
		opts := f.opts()
		opts.Platform = &v1.Platform{OS: "linux", Architecture: "s390x"}
		_, err := Pull(t.Context(), ref, opts)
		want := "pulling " + ref + ": no image for platform linux/s390x in the manifest list (available: " + strings.Join(names, ", ") + ")"
		if err == nil || err.Error() != want {
			t.Fatalf("error\n got: %v\nwant: %s", err, want)
		}
		if !errors.Is(err, ErrPlatformNotFound) {
			t.Error("not ErrPlatformNotFound")
		}
	})
}

// markerOf reads registrytest.PlatformMarker from img's flattened filesystem.
func markerOf(t *testing.T, img v1.Image) string {
	t.Helper()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteFlatTar(t.Context(), pw, img)) }()
	defer pr.Close()
	for _, e := range readTar(t, pr) {
		if e.name == registrytest.PlatformMarker {
			return e.body
		}
	}
	t.Fatalf("%s missing", registrytest.PlatformMarker)
	return ""
}

func pushIndexForTest(t *testing.T, r name.Reference, idx v1.ImageIndex, opts Options) error {
	return remote.WriteIndex(r, idx, opts.remoteOptions(t.Context())...)
}
