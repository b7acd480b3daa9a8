package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/layers"
	"github.com/imgbuild/imgbuild/registry"
)

func pushCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "push stored images, each to the registry its name points at",
		ArgsUsage: "REF...",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "use plain HTTP or unverified TLS for `HOST[:PORT]` (repeatable)"},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, -1); err != nil {
				return err
			}
			opts := registry.Options{Insecure: c.StringSlice("insecure-registry")}
			if err := checkInsecure(opts.Insecure); err != nil {
				return usagef(c, "%v", err)
			}
			for _, ref := range c.Args().Slice() {
				if normalizeTag(ref) == "" {
					return usagef(c, "cannot push %q: not a NAME[:TAG] reference", ref)
				}
			}
			st, err := openStore(c, s)
			if err != nil {
				return err
			}
			// An image built with --push may hold lazy layers: the push
			// mounts them, or fetches them from where they came from.
			st = st.WithFetcher(c.Context, registry.NewFetcher(opts, nil))
			for _, ref := range c.Args().Slice() {
				img, err := st.Image(c.Context, ref)
				if err != nil {
					return err
				}
				if err := registry.Push(c.Context, img, []string{ref}, opts); err != nil {
					return err
				}
				dgst, err := img.Digest()
				if err != nil {
					return err
				}
				fmt.Fprintf(s.stdout, "%s: pushed %s\n", ref, dgst)
			}
			return nil
		},
	}
}

func saveCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:      "save",
		Usage:     "write stored images as a docker-archive (docker load, podman load)",
		ArgsUsage: "REF...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to `FILE` (- or none: stdout, unless it is a terminal)"},
		},
		Action: func(c *cli.Context) error { return saveAction(c, s) },
	}
}

func saveAction(c *cli.Context, s *streams) error {
	if err := needArgs(c, 1, -1); err != nil {
		return err
	}
	dest := c.String("output")
	if dest == "" {
		dest = "-"
	}
	if dest == "-" && isTerminal(s.stdout) {
		return usagef(c, "refusing to write an archive to a terminal: give -o FILE or redirect stdout")
	}
	st, err := openStore(c, s)
	if err != nil {
		return err
	}
	st = st.WithFetcher(c.Context, registry.NewFetcher(registry.Options{}, nil)) // lazy layers of a --push build
	tags, err := storeTags(c, st)
	if err != nil {
		return err
	}
	// One entry per image; every tag naming it becomes a RepoTag. An image
	// given by digest only is saved untagged.
	var tagged []registry.Tagged
	index := map[v1.Hash]int{}
	for _, ref := range c.Args().Slice() {
		img, err := st.Image(c.Context, ref)
		if err != nil {
			return err
		}
		dgst, err := img.Digest()
		if err != nil {
			return fmt.Errorf("reading %s: %w", ref, err)
		}
		i, ok := index[dgst]
		if !ok {
			i = len(tagged)
			index[dgst] = i
			tagged = append(tagged, registry.Tagged{Image: img})
		}
		if tags[normalizeTag(ref)] {
			tagged[i].Tags = append(tagged[i].Tags, ref)
		}
	}
	err = writeFile(dest, s.stdout, func(w io.Writer) error {
		return registry.WriteDockerArchive(c.Context, w, tagged)
	})
	if err != nil {
		return fmt.Errorf("saving to %s: %w", dest, err)
	}
	return nil
}

// storeTags returns the normalized names of the store's tags.
func storeTags(c *cli.Context, st *layers.Store) (map[string]bool, error) {
	infos, err := st.Images(c.Context)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	tags := make(map[string]bool, len(infos))
	for _, in := range infos {
		if n := normalizeTag(in.Ref); n != "" {
			tags[n] = true
		}
	}
	return tags, nil
}

// normalizeTag returns ref's full tag name ("index.docker.io/library/x:latest"
// for "x"), or "" when ref is not a tag reference.
func normalizeTag(ref string) string {
	if strings.HasPrefix(ref, "sha256:") {
		return ""
	}
	t, err := name.NewTag(ref)
	if err != nil {
		return ""
	}
	return t.Name()
}

// writeFile runs write into dest: stdout for "-", else a temporary file
// beside dest renamed over it once complete, so that a failure leaves no
// truncated archive behind.
func writeFile(dest string, stdout io.Writer, write func(io.Writer) error) error {
	if dest == "-" {
		return write(stdout)
	}
	if fi, err := os.Stat(dest); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", dest)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dest)
}
