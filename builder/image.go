package builder

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imgbuild/imgbuild/registry"
)

// resolveBase returns what a stage starts from: scratch, an earlier stage,
// or an image from the local store or a registry.
func (b *build) resolveBase(ctx context.Context, st *stage) (*stageResult, error) {
	plat := b.target
	if st.ins.Platform != "" {
		p, err := parsePlatform(st.ins.Platform)
		if err != nil {
			return nil, err
		}
		plat = p
	}
	switch {
	case st.base != nil:
		res, err := b.stageResult(ctx, st.base)
		if err != nil {
			return nil, err
		}
		return res, nil
	case strings.EqualFold(st.ins.BaseName, scratchName):
		return b.scratch(plat), nil
	}
	return b.image(ctx, st.ins.BaseName, plat)
}

// scratch is BuildKit's empty image.
func (b *build) scratch(plat v1.Platform) *stageResult {
	cfg := &v1.ConfigFile{OS: plat.OS, Architecture: plat.Architecture, Variant: plat.Variant,
		RootFS: v1.RootFS{Type: "layers"}}
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = []string{"PATH=" + defaultPath}
	return &stageResult{cfg: cfg, platform: plat, key: baseKey("scratch", plat)}
}

// image resolves ref for plat: a tag already in the local store is used as
// is, anything else is pulled from its registry into the store: its
// manifest and config now, its layers lazily, when a step or an output
// reads them (a fully cached build that pushes to the same registry never
// downloads them).
func (b *build) image(ctx context.Context, ref string, plat v1.Platform) (*stageResult, error) {
	st := b.opts.Store
	img, err := st.Image(ctx, ref)
	if err != nil {
		ropts := b.opts.Registry
		ropts.Platform = &plat
		remote, perr := registry.Pull(ctx, ref, ropts)
		if perr != nil {
			return nil, perr
		}
		dgst, perr := st.PutImageLazy(ctx, remote) // layers are fetched when a step reads them
		if perr != nil {
			return nil, fmt.Errorf("storing %s: %w", ref, perr)
		}
		if img, err = st.Image(ctx, dgst.String()); err != nil {
			return nil, err
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config of %s: %w", ref, err)
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("reading layers of %s: %w", ref, err)
	}
	cfg = cfg.DeepCopy()
	si, err := healthStartInterval(img)
	if err != nil {
		return nil, fmt.Errorf("reading config of %s: %w", ref, err)
	}
	p := plat
	if cfg.OS != "" && cfg.Architecture != "" {
		p = v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	}
	dgst, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", ref, err)
	}
	return &stageResult{cfg: cfg, layers: ls, platform: p, startInterval: si, key: baseKey(dgst.String(), p)}, nil
}

// finish assembles the target stage into an image, stores and tags it, and
// writes the outputs. Its lazy layers (see image) are fetched first unless
// every output is a push, which mounts them.
func (b *build) finish(ctx context.Context, res *stageResult) (*Result, error) {
	cfg := res.cfg.DeepCopy()
	if len(b.opts.Labels) > 0 && cfg.Config.Labels == nil {
		cfg.Config.Labels = map[string]string{}
	}
	for k, v := range b.opts.Labels {
		cfg.Config.Labels[k] = v
	}
	if b.opts.Platform != "" {
		cfg.OS, cfg.Architecture, cfg.Variant = b.target.OS, b.target.Architecture, b.target.Variant
	}
	cfg.Created = v1.Time{Time: b.createdTime()}
	img, err := assemble(cfg, res.layers, res.startInterval)
	if err != nil {
		return nil, err
	}
	st := b.outStore
	dgst, err := st.PutImageLazy(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("storing image: %w", err)
	}
	stored, err := st.Image(ctx, dgst.String())
	if err != nil {
		return nil, err
	}
	if !pushOnly(b.opts.Outputs) {
		// Tools reading the store's OCI layout need every blob.
		if err := st.FetchImage(ctx, stored); err != nil {
			return nil, fmt.Errorf("storing image: %w", err)
		}
	}
	for _, t := range b.opts.Tags {
		if err := st.Tag(ctx, t, dgst); err != nil {
			return nil, fmt.Errorf("tagging %s: %w", t, err)
		}
	}
	desc, err := partial.Descriptor(stored)
	if err != nil {
		return nil, err
	}
	cdgst, err := stored.ConfigName()
	if err != nil {
		return nil, err
	}
	out := &Result{Image: stored, Digest: dgst, ConfigDigest: cdgst, Descriptor: *desc, Tags: b.opts.Tags}
	if len(b.opts.Outputs) > 0 {
		if err := Export(ctx, out, b.opts.Outputs, ExportOptions{Registry: b.opts.Registry, Stdout: b.opts.Stdout}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// pushOnly reports whether every output pushes to a registry, so that the
// stored result may keep lazy layers: the push mounts those the registry
// has and reads (fetches) the others.
func pushOnly(outs []Output) bool {
	for _, o := range outs {
		if o.Type != OutputRegistry {
			return false
		}
	}
	return len(outs) > 0
}

// assemble makes an OCI image from a config and its layers. Layer media
// types are normalized to OCI's.
func assemble(cfg *v1.ConfigFile, ls []v1.Layer, startInterval time.Duration) (v1.Image, error) {
	cfg.RootFS.Type = "layers"
	cfg.RootFS.DiffIDs = nil
	m := &v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1}
	byDigest := map[v1.Hash]v1.Layer{}
	for _, l := range ls {
		diffID, err := l.DiffID()
		if err != nil {
			return nil, err
		}
		desc, err := partial.Descriptor(l)
		if err != nil {
			return nil, err
		}
		desc.MediaType = registry.OCILayerType(desc.MediaType)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
		m.Layers = append(m.Layers, *desc)
		byDigest[desc.Digest] = l
	}
	rawCfg, err := marshalConfig(cfg, startInterval)
	if err != nil {
		return nil, err
	}
	cdgst, csize, err := v1.SHA256(bytes.NewReader(rawCfg))
	if err != nil {
		return nil, err
	}
	m.Config = v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: cdgst, Size: csize}
	rawManifest, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&rawImage{cfg: rawCfg, manifest: rawManifest, layers: byDigest})
}

// rawImage is an image held as its exact config and manifest bytes.
type rawImage struct {
	cfg, manifest []byte
	layers        map[v1.Hash]v1.Layer
}

func (r *rawImage) RawConfigFile() ([]byte, error)      { return r.cfg, nil }
func (r *rawImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (r *rawImage) RawManifest() ([]byte, error)        { return r.manifest, nil }
func (r *rawImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := r.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("layer %s not found", h)
}

// marshalConfig is json.Marshal(cfg) plus Healthcheck.StartInterval, which
// go-containerregistry's HealthConfig lacks.
func marshalConfig(cfg *v1.ConfigFile, startInterval time.Duration) ([]byte, error) {
	raw, err := json.Marshal(cfg)
	if err != nil || startInterval == 0 || cfg.Config.Healthcheck == nil {
		return raw, err
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	var conf map[string]json.RawMessage
	if err := json.Unmarshal(doc["config"], &conf); err != nil {
		return nil, err
	}
	var hc map[string]json.RawMessage
	if err := json.Unmarshal(conf["Healthcheck"], &hc); err != nil {
		return nil, err
	}
	hc["StartInterval"] = json.RawMessage(fmt.Sprint(int64(startInterval)))
	for _, step := range []struct {
		m   map[string]json.RawMessage
		key string
		v   any
	}{{conf, "Healthcheck", hc}, {doc, "config", conf}} {
		b, err := json.Marshal(step.v)
		if err != nil {
			return nil, err
		}
		step.m[step.key] = b
	}
	return json.Marshal(doc)
}

// healthStartInterval reads Healthcheck.StartInterval from img's raw config.
func healthStartInterval(img v1.Image) (time.Duration, error) {
	raw, err := img.RawConfigFile()
	if err != nil {
		return 0, err
	}
	var c struct {
		Config struct {
			Healthcheck *struct{ StartInterval time.Duration } `json:"Healthcheck"`
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return 0, err
	}
	if c.Config.Healthcheck == nil {
		return 0, nil
	}
	return c.Config.Healthcheck.StartInterval, nil
}
