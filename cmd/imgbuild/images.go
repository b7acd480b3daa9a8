package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/docker/go-units"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/layers"
)

func imagesCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:  "images",
		Usage: "list the tagged images in the local store",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the image digests"},
			&cli.StringFlag{Name: "format", Value: "table", Usage: "output format: table, or json (one object per line)"},
		},
		Action: func(c *cli.Context) error { return imagesAction(c, s) },
	}
}

// imageLine is one `images --format json` line.
type imageLine struct {
	Repository string    `json:"Repository"`
	Tag        string    `json:"Tag"`
	Digest     string    `json:"Digest"`
	Created    time.Time `json:"Created"`
	Size       int64     `json:"Size"`
}

func imagesAction(c *cli.Context, s *streams) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	format := c.String("format")
	if format != "table" && format != "json" {
		return usagef(c, "invalid --format %q: want table or json", format)
	}
	st, err := openStore(c, s)
	if err != nil {
		return err
	}
	infos, err := st.Images(c.Context)
	if err != nil {
		return fmt.Errorf("listing images: %w", err)
	}
	sort.SliceStable(infos, func(i, j int) bool { return infos[i].Ref < infos[j].Ref })
	switch {
	case c.Bool("quiet"):
		seen := map[v1.Hash]bool{}
		for _, in := range infos {
			if !seen[in.Digest] {
				seen[in.Digest] = true
				fmt.Fprintln(s.stdout, in.Digest)
			}
		}
	case format == "json":
		enc := json.NewEncoder(s.stdout)
		for _, in := range infos {
			repo, tag := splitRef(in.Ref)
			if err := enc.Encode(imageLine{repo, tag, in.Digest.String(), in.Created.UTC(), in.Size}); err != nil {
				return err
			}
		}
	default:
		printImageTable(s, infos, time.Now())
	}
	return nil
}

func printImageTable(s *streams, infos []layers.ImageInfo, now time.Time) {
	tw := tabwriter.NewWriter(s.stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "REPOSITORY\tTAG\tDIGEST\tCREATED\tSIZE")
	for _, in := range infos {
		repo, tag := splitRef(in.Ref)
		created := "N/A"
		if !in.Created.IsZero() {
			created = units.HumanDuration(now.Sub(in.Created)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", repo, tag, shortDigest(in.Digest), created,
			units.HumanSizeWithPrecision(float64(in.Size), 3))
	}
	tw.Flush()
}

// splitRef splits "repo:tag" (or "repo@digest") into repository and tag.
func splitRef(ref string) (repo, tag string) {
	if ref == "" {
		return "<none>", "<none>"
	}
	if i := strings.Index(ref, "@"); i >= 0 {
		return ref[:i], "<none>"
	}
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return ref, "latest"
	}
	return ref[:i], ref[i+1:]
}

func shortDigest(h v1.Hash) string {
	if len(h.Hex) < 12 {
		return h.Hex
	}
	return h.Hex[:12]
}

func inspectCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "print a stored image's manifest, config and layers as JSON",
		ArgsUsage: "REF",
		Action:    func(c *cli.Context) error { return inspectAction(c, s) },
	}
}

// inspectOutput is the `inspect` JSON document.
type inspectOutput struct {
	Ref      string          `json:"Ref"`
	Digest   string          `json:"Digest"`
	Manifest json.RawMessage `json:"Manifest"`
	Config   json.RawMessage `json:"Config"`
	Layers   []inspectLayer  `json:"Layers"`
}

type inspectLayer struct {
	Digest    string          `json:"digest"`
	DiffID    string          `json:"diffID"`
	Size      int64           `json:"size"`
	MediaType types.MediaType `json:"mediaType"`
}

func inspectAction(c *cli.Context, s *streams) error {
	if err := needArgs(c, 1, 1); err != nil {
		return err
	}
	ref := c.Args().First()
	st, err := openStore(c, s)
	if err != nil {
		return err
	}
	img, err := st.Image(c.Context, ref)
	if err != nil {
		return err
	}
	out, err := describeImage(ref, img)
	if err != nil {
		return fmt.Errorf("inspecting %s: %w", ref, err)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(s.stdout, "%s\n", b)
	return err
}

func describeImage(ref string, img v1.Image) (*inspectOutput, error) {
	dgst, err := img.Digest()
	if err != nil {
		return nil, err
	}
	rawMan, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("manifest has %d layers, config %d diff IDs", len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	out := &inspectOutput{Ref: ref, Digest: dgst.String(), Manifest: rawMan, Config: rawCfg, Layers: []inspectLayer{}}
	for i, l := range m.Layers {
		out.Layers = append(out.Layers, inspectLayer{Digest: l.Digest.String(), DiffID: cfg.RootFS.DiffIDs[i].String(),
			Size: l.Size, MediaType: l.MediaType})
	}
	return out, nil
}

func tagCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:      "tag",
		Usage:     "give a stored image another name",
		ArgsUsage: "SRC DST",
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 2, 2); err != nil {
				return err
			}
			src, dst := c.Args().Get(0), c.Args().Get(1)
			if _, err := name.NewTag(dst); err != nil {
				return usagef(c, "invalid tag %q: %v", dst, err)
			}
			st, err := openStore(c, s)
			if err != nil {
				return err
			}
			img, err := st.Image(c.Context, src)
			if err != nil {
				return err
			}
			dgst, err := img.Digest()
			if err != nil {
				return fmt.Errorf("reading %s: %w", src, err)
			}
			return st.Tag(c.Context, dst, dgst)
		},
	}
}

func rmCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Aliases:   []string{"rmi"},
		Usage:     "remove tags from the local store (blobs stay until prune)",
		ArgsUsage: "REF...",
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, -1); err != nil {
				return err
			}
			st, err := openStore(c, s)
			if err != nil {
				return err
			}
			var errs []error
			for _, ref := range c.Args().Slice() {
				if err := st.Untag(c.Context, ref); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(s.stdout, "Untagged: %s\n", ref)
			}
			return errors.Join(errs...)
		},
	}
}
