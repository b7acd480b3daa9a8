package registry

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Tagged is an image with the references it is saved under.
type Tagged struct {
	Image v1.Image
	Tags  []string
}

// archiveEntry is one element of a docker-archive's manifest.json.
type archiveEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// WriteDockerArchive writes imgs as a docker-archive, the format of
// `docker save`, which `docker load`, `podman load` and skopeo's
// docker-archive: transport read. Each image is listed in manifest.json
// with its tags (in docker's short form: "app:1.0", "user/app:1.0",
// "registry:5000/app:1.0"; a tag-less reference gets ":latest"); configs
// and layers are stored once each, layers as their compressed blobs. The
// output is deterministic: entries follow the order of imgs and their
// layers, with fixed timestamps.
func WriteDockerArchive(ctx context.Context, w io.Writer, imgs []Tagged) error {
	if len(imgs) == 0 {
		return errors.New("docker archive: no image given")
	}
	tw := tar.NewWriter(w)
	seen := map[string]bool{}
	var manifest []archiveEntry
	for _, t := range imgs {
		if err := ctx.Err(); err != nil {
			return err
		}
		entry, err := writeArchiveImage(ctx, tw, t, seen)
		if err != nil {
			return fmt.Errorf("docker archive: %w", err)
		}
		manifest = append(manifest, entry)
	}
	m, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	if err := writeArchiveFile(tw, "manifest.json", int64(len(m)), bytes.NewReader(m)); err != nil {
		return fmt.Errorf("docker archive: %w", err)
	}
	return tw.Close()
}

func writeArchiveImage(ctx context.Context, tw *tar.Writer, t Tagged, seen map[string]bool) (archiveEntry, error) {
	var entry archiveEntry
	for _, tag := range t.Tags {
		s, err := dockerTag(tag)
		if err != nil {
			return entry, err
		}
		entry.RepoTags = append(entry.RepoTags, s)
	}
	cfgName, err := t.Image.ConfigName()
	if err != nil {
		return entry, err
	}
	cfg, err := t.Image.RawConfigFile()
	if err != nil {
		return entry, err
	}
	entry.Config = cfgName.Hex + ".json"
	if !seen[entry.Config] {
		seen[entry.Config] = true
		if err := writeArchiveFile(tw, entry.Config, int64(len(cfg)), bytes.NewReader(cfg)); err != nil {
			return entry, err
		}
	}
	layers, err := t.Image.Layers()
	if err != nil {
		return entry, err
	}
	for _, l := range layers {
		if err := ctx.Err(); err != nil {
			return entry, err
		}
		file, err := writeArchiveLayer(tw, l, seen)
		if err != nil {
			return entry, err
		}
		entry.Layers = append(entry.Layers, file)
	}
	return entry, nil
}

// writeArchiveLayer stores l's compressed blob once, named by its digest.
func writeArchiveLayer(tw *tar.Writer, l v1.Layer, seen map[string]bool) (string, error) {
	d, err := l.Digest()
	if err != nil {
		return "", err
	}
	mt, err := l.MediaType()
	if err != nil {
		return "", err
	}
	file := d.Hex + layerSuffix(mt)
	if seen[file] {
		return file, nil
	}
	seen[file] = true
	size, err := l.Size()
	if err != nil {
		return "", err
	}
	rc, err := l.Compressed()
	if err != nil {
		return "", fmt.Errorf("layer %s: %w", d, err)
	}
	defer rc.Close()
	if err := writeArchiveFile(tw, file, size, rc); err != nil {
		return "", fmt.Errorf("layer %s: %w", d, err)
	}
	// Read to EOF so that a verifying reader checks the digest.
	n, err := io.Copy(io.Discard, rc)
	if err != nil {
		return "", fmt.Errorf("layer %s: %w", d, err)
	}
	if n != 0 {
		return "", fmt.Errorf("layer %s: more bytes than its size %d", d, size)
	}
	return file, rc.Close()
}

func layerSuffix(mt types.MediaType) string {
	s := string(mt)
	switch {
	case strings.HasSuffix(s, "zstd"):
		return ".tar.zst"
	case strings.HasSuffix(s, "gzip"), mt == types.DockerLayer, mt == types.DockerForeignLayer:
		return ".tar.gz"
	}
	return ".tar"
}

func writeArchiveFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	hdr := &tar.Header{
		Name:     name,
		Typeflag: tar.TypeReg,
		Mode:     0o644,
		Size:     size,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.CopyN(tw, r, size)
	if err != nil {
		return fmt.Errorf("writing %s: %d of %d bytes: %w", name, n, size, err)
	}
	return nil
}

// dockerTag formats ref as docker save writes RepoTags: the short form for
// Docker Hub, registry/repository:tag otherwise, ":latest" when untagged.
func dockerTag(ref string) (string, error) {
	t, err := name.NewTag(ref)
	if err != nil {
		return "", fmt.Errorf("invalid tag %q: %w", ref, err)
	}
	repo := t.RepositoryStr()
	if t.RegistryStr() == name.DefaultRegistry {
		repo = strings.TrimPrefix(repo, "library/")
	} else {
		repo = t.RegistryStr() + "/" + repo
	}
	return repo + ":" + t.TagStr(), nil
}
