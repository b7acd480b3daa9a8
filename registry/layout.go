package registry

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// Annotations written on each index.json entry by WriteOCILayout.
const (
	// AnnotationRefName holds the tag part of the reference ("1.0" for
	// "user/app:1.0"): what `skopeo ... oci:DIR:1.0`, `umoci unpack --image
	// DIR:1.0` and containerd's importer look up.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationImageName holds the full reference ("docker.io/user/app:1.0",
	// "docker.io/library/busybox:latest"), as containerd and BuildKit write it.
	AnnotationImageName = "io.containerd.image.name"
)

// WriteOCILayout writes imgs into the OCI image layout at dir, creating it
// when missing and adding to it otherwise. Each tag becomes one index.json
// entry annotated with AnnotationRefName (the tag part, e.g. "1.0") and
// AnnotationImageName (the full name); an existing entry with the same
// ref.name is replaced, as `skopeo copy` does. Because the ref.name holds only
// the tag, two tags of one call that differ only in repository ("a:1", "b:1")
// would be ambiguous and are refused. An image without tags is added once,
// without annotations. Blobs already present are not written again. Images
// are written with OCI media types (see OCIMediaTypes): the tools that read
// layouts ignore Docker ones, so a Docker image's manifest digest in the
// layout differs from its registry digest while its blobs are the same.
func WriteOCILayout(ctx context.Context, dir string, imgs []Tagged) error {
	if err := checkRefNames(imgs); err != nil {
		return fmt.Errorf("oci layout %s: %w", dir, err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("oci layout %s: %w", dir, err)
		}
	}
	for _, t := range imgs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeLayoutImage(p, t); err != nil {
			return fmt.Errorf("oci layout %s: %w", dir, err)
		}
	}
	return nil
}

func writeLayoutImage(p layout.Path, t Tagged) error {
	img, err := OCIMediaTypes(t.Image)
	if err != nil {
		return err
	}
	if len(t.Tags) == 0 {
		d, err := img.Digest()
		if err != nil {
			return err
		}
		return p.ReplaceImage(img, func(desc v1.Descriptor) bool {
			return desc.Digest == d && desc.Annotations[AnnotationRefName] == ""
		})
	}
	for _, tag := range t.Tags {
		ref, err := name.NewTag(tag)
		if err != nil {
			return fmt.Errorf("invalid tag %q: %w", tag, err)
		}
		refName := ref.TagStr()
		err = p.ReplaceImage(img, func(desc v1.Descriptor) bool {
			return desc.Annotations[AnnotationRefName] == refName
		}, layout.WithAnnotations(map[string]string{
			AnnotationRefName:   refName,
			AnnotationImageName: fullName(ref),
		}))
		if err != nil {
			return fmt.Errorf("%s: %w", tag, err)
		}
	}
	return nil
}

// checkRefNames refuses tags that would share a ref.name for different
// references.
func checkRefNames(imgs []Tagged) error {
	seen := map[string]string{}
	for _, t := range imgs {
		for _, tag := range t.Tags {
			ref, err := name.NewTag(tag)
			if err != nil {
				return fmt.Errorf("invalid tag %q: %w", tag, err)
			}
			if prev, ok := seen[ref.TagStr()]; ok && prev != fullName(ref) {
				return fmt.Errorf("tags %s and %s would both be named %q in the layout", prev, fullName(ref), ref.TagStr())
			}
			seen[ref.TagStr()] = fullName(ref)
		}
	}
	return nil
}

// fullName is the normalized name containerd uses: Docker Hub is
// "docker.io", official images are under "library/".
func fullName(t name.Tag) string {
	reg := t.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + t.RepositoryStr() + ":" + t.TagStr()
}
