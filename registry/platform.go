package registry

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// HostPlatform is the platform imgbuild runs on: runtime.GOOS and
// runtime.GOARCH, with the variant for 32-bit arm taken from the GOARM the
// binary was built with (v7 when unknown).
func HostPlatform() v1.Platform {
	p := v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if p.Architecture == "arm" {
		p.Variant = "v7"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "GOARM" && s.Value != "" {
					p.Variant = "v" + strings.SplitN(s.Value, ",", 2)[0]
				}
			}
		}
	}
	return p
}

// ParsePlatform parses "os/arch[/variant]" as given to --platform and
// normalizes it the way BuildKit and containerd do: "aarch64" is arm64,
// "x86_64" is amd64, arm64's "v8" variant is implied, and "arm" alone means
// arm/v7. The empty string and "local" mean HostPlatform.
func ParsePlatform(s string) (*v1.Platform, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "local" {
		p := HostPlatform()
		return &p, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || slices.Contains(parts, "") {
		return nil, fmt.Errorf("invalid platform %q: want os/arch or os/arch/variant", s)
	}
	p := v1.Platform{OS: strings.ToLower(parts[0]), Architecture: strings.ToLower(parts[1])}
	if len(parts) == 3 {
		p.Variant = strings.ToLower(parts[2])
	}
	p = normalizePlatform(p)
	return &p, nil
}

// normalizePlatform maps architecture aliases and default variants to the
// names used in image configs and manifest lists.
func normalizePlatform(p v1.Platform) v1.Platform {
	switch p.Architecture {
	case "x86_64", "x86-64":
		p.Architecture = "amd64"
	case "i386", "i686":
		p.Architecture = "386"
	case "aarch64":
		p.Architecture = "arm64"
	case "armhf":
		p.Architecture, p.Variant = "arm", "v7"
	case "armel":
		p.Architecture, p.Variant = "arm", "v6"
	}
	switch p.Architecture {
	case "arm64":
		if p.Variant == "v8" || p.Variant == "8" {
			p.Variant = ""
		}
	case "arm":
		switch p.Variant {
		case "":
			p.Variant = "v7"
		case "5", "6", "7", "8":
			p.Variant = "v" + p.Variant
		}
	case "amd64":
		if p.Variant == "v1" {
			p.Variant = ""
		}
	}
	return p
}

// selectManifest picks the manifest for want from an index's manifests:
// OS and architecture must match; an exact variant match wins, and when
// want has no variant any variant of the architecture is accepted.
// Attestation manifests (platform unknown/unknown) never match.
func selectManifest(manifests []v1.Descriptor, want v1.Platform) (v1.Descriptor, bool) {
	want = normalizePlatform(want)
	var loose []v1.Descriptor
	for _, d := range manifests {
		if d.Platform == nil || !d.MediaType.IsImage() && !d.MediaType.IsIndex() {
			continue
		}
		have := normalizePlatform(*d.Platform)
		if have.OS != want.OS || have.Architecture != want.Architecture {
			continue
		}
		if have.Variant == want.Variant {
			return d, true
		}
		if want.Variant == "" {
			loose = append(loose, d)
		}
	}
	if len(loose) > 0 {
		return loose[0], true
	}
	return v1.Descriptor{}, false
}

// platformList names the platforms an index offers, for error messages.
func platformList(manifests []v1.Descriptor) string {
	var names []string
	for _, d := range manifests {
		if d.Platform == nil || d.Platform.OS == "unknown" {
			continue
		}
		if n := d.Platform.String(); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
