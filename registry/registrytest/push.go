package registrytest

import (
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BusyboxRepo and BusyboxIndexRepo are where PushBusybox and
// PushBusyboxIndex push.
const (
	BusyboxRepo      = "library/busybox:latest"
	BusyboxIndexRepo = "library/busybox-multi:latest"
)

// PlatformMarker is the file of MarkerImage holding its platform
// ("linux/arm64\n").
const PlatformMarker = "imgbuild-platform"

// PushImage pushes img to host/repo (repo may carry a ":tag"; default
// "latest") over plain HTTP and returns the reference "host/repo:tag".
func PushImage(t testing.TB, host, repo string, img v1.Image) string {
	t.Helper()
	ref := refFor(t, host, repo)
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref.Name()
}

// PushIndex pushes the manifest list idx (with its images) to host/repo and
// returns the reference.
func PushIndex(t testing.TB, host, repo string, idx v1.ImageIndex) string {
	t.Helper()
	ref := refFor(t, host, repo)
	if err := remote.WriteIndex(ref, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref.Name()
}

// PushBusybox pushes BusyboxImage to host/library/busybox:latest and returns
// that reference.
func PushBusybox(t testing.TB, host string) string {
	t.Helper()
	return PushImage(t, host, BusyboxRepo, BusyboxImage(t))
}

// IndexPlatforms are the platforms of BusyboxIndex: the host's (served by
// BusyboxImage) first, then linux/amd64, linux/arm64, linux/arm/v7 and
// linux/arm/v6 except the host's, each a MarkerImage.
func IndexPlatforms() []v1.Platform {
	host := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	ps := []v1.Platform{host}
	for _, p := range []v1.Platform{
		{OS: "linux", Architecture: "amd64"},
		{OS: "linux", Architecture: "arm64"},
		{OS: "linux", Architecture: "arm", Variant: "v7"},
		{OS: "linux", Architecture: "arm", Variant: "v6"},
	} {
		if p.Architecture != host.Architecture {
			ps = append(ps, p)
		}
	}
	return ps
}

// MarkerImage is a tiny image for platform p whose only file, /PlatformMarker,
// holds p.String() and a newline.
func MarkerImage(t testing.TB, p v1.Platform) v1.Image {
	t.Helper()
	files := []File{{Name: PlatformMarker, Body: []byte(p.String() + "\n")}}
	return Image(t, files, v1.Config{Cmd: []string{"/" + PlatformMarker}}, p)
}

// BusyboxIndex is a Docker manifest list over IndexPlatforms: BusyboxImage
// for the host's platform and a MarkerImage for each other one.
func BusyboxIndex(t testing.TB) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for i, p := range IndexPlatforms() {
		img := BusyboxImage(t)
		if i > 0 {
			img = MarkerImage(t, p)
		}
		mt, err := img.MediaType()
		if err != nil {
			t.Fatalf("index: %v", err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{MediaType: mt, Platform: &p},
		})
	}
	return idx
}

// PushBusyboxIndex pushes BusyboxIndex to host/library/busybox-multi:latest
// and returns that reference.
func PushBusyboxIndex(t testing.TB, host string) string {
	t.Helper()
	return PushIndex(t, host, BusyboxIndexRepo, BusyboxIndex(t))
}

func refFor(t testing.TB, host, repo string) name.Reference {
	t.Helper()
	s := host + "/" + strings.TrimPrefix(repo, "/")
	ref, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatalf("reference %q: %v", s, err)
	}
	return ref
}
