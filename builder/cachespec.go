package builder

import (
	"encoding/csv"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Cache export and import types (--cache-to, --cache-from).
const (
	CacheRegistry = "registry" // an OCI artifact in a registry: ref=REPO:TAG
	CacheLocal    = "local"    // an OCI image layout directory: dest= (export), src= (import)
)

// CacheSpec is one --cache-to or --cache-from value.
type CacheSpec struct {
	Type string // CacheRegistry or CacheLocal
	Ref  string // registry: the reference of the cache artifact
	Dir  string // local: the layout directory (dest= or src=)
	// Mode is "min" (the target stage's steps; the default) or "max"
	// (every stage's), for --cache-to.
	Mode string
	// IgnoreError makes a failed export a warning instead of a failed
	// build (ignore-error=true, as BuildKit's).
	IgnoreError bool
}

// ParseCacheSpec parses a --cache-to (export true) or --cache-from value:
// type=registry,ref=REPO:TAG[,mode=min|max] or type=local,dest=DIR
// [,mode=...] for export, type=local,src=DIR for import. An export also
// takes ignore-error=true|false, and oci-mediatypes=true and
// image-manifest=true (what is always written). A bare value is a
// registry reference, as in buildx.
func ParseCacheSpec(s string, export bool) (CacheSpec, error) {
	if s == "" {
		return CacheSpec{}, errors.New("empty cache spec")
	}
	if !strings.Contains(s, "=") {
		return CacheSpec{Type: CacheRegistry, Ref: s, Mode: "min"}, nil
	}
	r := csv.NewReader(strings.NewReader(s))
	r.TrimLeadingSpace = true
	fields, err := r.Read()
	if err != nil {
		return CacheSpec{}, fmt.Errorf("cache %q: %w", s, err)
	}
	spec := CacheSpec{Mode: "min"}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok || k == "" {
			return CacheSpec{}, fmt.Errorf("cache %q: %q is not key=value", s, f)
		}
		switch {
		case k == "type":
			spec.Type = v
		case k == "ref":
			spec.Ref = v
		case k == "dest" && export, k == "src" && !export:
			spec.Dir = v
		case k == "mode" && export:
			if v != "min" && v != "max" {
				return CacheSpec{}, fmt.Errorf("cache %q: mode must be min or max", s)
			}
			spec.Mode = v
		case k == "ignore-error" && export:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return CacheSpec{}, fmt.Errorf("cache %q: ignore-error must be true or false", s)
			}
			spec.IgnoreError = b
		case (k == "oci-mediatypes" || k == "image-manifest") && export:
			// The cache is always an OCI image manifest with OCI media
			// types: true asks for what is written anyway.
			if b, err := strconv.ParseBool(v); err != nil || !b {
				return CacheSpec{}, fmt.Errorf("cache %q: only %s=true is supported (the cache is an OCI image manifest)", s, k)
			}
		default:
			return CacheSpec{}, fmt.Errorf("cache %q: unknown key %q", s, k)
		}
	}
	switch {
	case spec.Type == CacheRegistry && spec.Ref != "" && spec.Dir == "":
	case spec.Type == CacheLocal && spec.Dir != "" && spec.Ref == "":
	case spec.Type == CacheRegistry:
		return CacheSpec{}, fmt.Errorf("cache %q: type=registry needs ref=REPO:TAG", s)
	case spec.Type == CacheLocal && export:
		return CacheSpec{}, fmt.Errorf("cache %q: type=local needs dest=DIR", s)
	case spec.Type == CacheLocal:
		return CacheSpec{}, fmt.Errorf("cache %q: type=local needs src=DIR", s)
	default:
		return CacheSpec{}, fmt.Errorf("cache %q: unknown type %q (want registry or local)", s, spec.Type)
	}
	return spec, nil
}
