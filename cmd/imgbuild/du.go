package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/docker/go-units"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/imgbuild/imgbuild/builder"
	"github.com/imgbuild/imgbuild/layers"
)

func duCommand(s *streams) *cli.Command {
	return &cli.Command{
		Name:  "du",
		Usage: "show the disk usage of the local store",
		Description: "Images are the tagged images; Build cache the layers of the build cache records; Layer trees the\n" +
			"extracted layers in ROOT/layers; Unused blobs those neither uses (untagged images, leftovers); Cache mounts\n" +
			"the directories of RUN --mount=type=cache. Shared blobs count in Images and Build cache, once in Total.\n" +
			"RECLAIMABLE is what `imgbuild prune --all` frees: build cache layers no tagged image shares, unused\n" +
			"blobs, the trees of layers no tagged image has, and the cache mounts no running step uses. --verbose lists each build cache record.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "list every build cache record"},
		},
		Action: func(c *cli.Context) error { return duAction(c, s) },
	}
}

// diskUsage is what `imgbuild du` reports. Sizes are apparent sizes of
// regular files; a file hard-linked twice counts once.
type diskUsage struct {
	images, imageBytes int64 // tagged images (distinct digests); bytes of the blobs they use
	records            []cacheRow
	cacheBytes         int64 // layer blobs of the records, each counted once
	cacheReclaimable   int64 // of those, the blobs no tagged image uses
	trees              int64 // extracted layer trees
	treeBytes          int64
	treeReclaimable    int64
	unused, unusedB    int64 // blobs neither a tagged image nor a record uses
	mounts, mountBytes int64 // RUN --mount=type=cache directories (prune --all removes them)
	total              int64 // every blob, tree and cache mount
}

// cacheRow is one build cache record as du lists it.
type cacheRow struct {
	rec    layers.CacheRecord
	shared bool // a tagged image uses its layer
}

func (u *diskUsage) reclaimable() int64 {
	return u.cacheReclaimable + u.treeReclaimable + u.unusedB + u.mountBytes
}

func duAction(c *cli.Context, s *streams) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	st, err := openStore(c, s)
	if err != nil {
		return err
	}
	release, err := st.Lease(c.Context) // no prune while we look
	if err != nil {
		return err
	}
	defer release()
	u, err := measure(c.Context, st)
	if err != nil {
		return fmt.Errorf("disk usage: %w", err)
	}
	now := time.Now()
	if c.Bool("verbose") {
		printCacheRecords(s, u.records, now)
		fmt.Fprintln(s.stdout)
	}
	printUsage(s, u)
	return nil
}

// measure computes the disk usage of st.
func measure(ctx context.Context, st *layers.Store) (*diskUsage, error) {
	u := &diskUsage{}
	blobDir := filepath.Join(st.OCILayout(), "blobs", "sha256")
	tagged, diffIDs, err := taggedBlobs(blobDir, filepath.Join(st.OCILayout(), "index.json"), &u.images)
	if err != nil {
		return nil, err
	}
	sizes, err := blobSizes(blobDir)
	if err != nil {
		return nil, err
	}
	recs, err := st.CacheRecords(ctx)
	if err != nil {
		return nil, err
	}
	cached := map[v1.Hash]bool{}
	for _, r := range recs {
		u.records = append(u.records, cacheRow{rec: r, shared: tagged[r.Layer.Digest]})
		if n, ok := sizes[r.Layer.Digest]; ok && !cached[r.Layer.Digest] {
			cached[r.Layer.Digest] = true
			u.cacheBytes += n
			if !tagged[r.Layer.Digest] {
				u.cacheReclaimable += n
			}
		}
	}
	for h, n := range sizes {
		u.total += n
		switch {
		case tagged[h]:
			u.imageBytes += n
		case !cached[h]:
			u.unused++
			u.unusedB += n
		}
	}
	if err := measureTrees(u, filepath.Join(st.Root(), extractedDir), diffIDs); err != nil {
		return nil, err
	}
	if err := measureCacheMounts(u, builder.CacheMountsDir(st)); err != nil {
		return nil, err
	}
	u.total += u.treeBytes + u.mountBytes
	return u, nil
}

// taggedBlobs reads the layout's index and returns the blobs that tagged
// images use (manifests, configs, layers, through nested indexes) and
// their layers' diffIDs; it counts the tagged images into n. A blob
// that is missing (a platform's manifest of an index stored alone) is
// skipped.
func taggedBlobs(blobDir, indexPath string, n *int64) (blobs, diffIDs map[v1.Hash]bool, err error) {
	b, err := os.ReadFile(indexPath)
	if err != nil {
		return nil, nil, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", indexPath, err)
	}
	blobs, diffIDs = map[v1.Hash]bool{}, map[v1.Hash]bool{}
	for _, d := range idx.Manifests {
		if d.Annotations[layers.RefNameAnnotation] == "" {
			continue
		}
		if !blobs[d.Digest] {
			*n++
		}
		if err := markBlobs(blobDir, d.Digest, blobs, diffIDs); err != nil {
			return nil, nil, err
		}
	}
	return blobs, diffIDs, nil
}

// manifestish holds the fields of an image manifest or an index.
type manifestish struct {
	Manifests []v1.Descriptor `json:"manifests"`
	Config    *v1.Descriptor  `json:"config"`
	Layers    []v1.Descriptor `json:"layers"`
}

func markBlobs(blobDir string, h v1.Hash, blobs, diffIDs map[v1.Hash]bool) error {
	if blobs[h] {
		return nil
	}
	blobs[h] = true
	b, err := readBlobFile(blobDir, h)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var m manifestish
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("manifest %s: %w", h, err)
	}
	for _, d := range m.Manifests {
		if err := markBlobs(blobDir, d.Digest, blobs, diffIDs); err != nil {
			return err
		}
	}
	for _, l := range m.Layers {
		blobs[l.Digest] = true
	}
	if m.Config == nil {
		return nil
	}
	blobs[m.Config.Digest] = true
	b, err = readBlobFile(blobDir, m.Config.Digest)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []v1.Hash `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	for _, d := range cfg.RootFS.DiffIDs {
		diffIDs[d] = true
	}
	return nil
}

// readBlobFile reads a manifest or config blob (at most 64 MiB).
func readBlobFile(blobDir string, h v1.Hash) ([]byte, error) {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 || strings.ContainsAny(h.Hex, "./") {
		return nil, fmt.Errorf("invalid digest %q", h)
	}
	p := filepath.Join(blobDir, h.Hex)
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.Size() > 64<<20 {
		return nil, fmt.Errorf("manifest %s: %d bytes is too large", h, fi.Size())
	}
	return os.ReadFile(p)
}

// blobSizes lists the blobs of the layout with their sizes.
func blobSizes(blobDir string) (map[v1.Hash]int64, error) {
	ents, err := os.ReadDir(blobDir)
	if err != nil {
		return nil, err
	}
	out := make(map[v1.Hash]int64, len(ents))
	for _, e := range ents {
		if !e.Type().IsRegular() || len(e.Name()) != 64 {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out[v1.Hash{Algorithm: "sha256", Hex: e.Name()}] = fi.Size()
	}
	return out, nil
}

// measureTrees adds up the extracted layer trees in dir: <diffID hex>,
// <diffID hex>-u, and c-<chain ID> (merged stacks, which prune always
// removes). A tree is reclaimable unless a tagged image has its layer.
func measureTrees(u *diskUsage, dir string, diffIDs map[v1.Hash]bool) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	seen := map[[2]uint64]bool{}
	for _, e := range ents {
		if !e.IsDir() {
			continue // lock files
		}
		name := e.Name()
		hexPart := strings.TrimSuffix(name, "-u")
		keep := !strings.HasPrefix(name, "c-") && diffIDs[v1.Hash{Algorithm: "sha256", Hex: hexPart}]
		n := dirSize(filepath.Join(dir, name), seen)
		u.trees++
		u.treeBytes += n
		if !keep {
			u.treeReclaimable += n
		}
	}
	return nil
}

// measureCacheMounts adds up the directories of RUN --mount=type=cache in
// dir, one per cache key.
func measureCacheMounts(u *diskUsage, dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	seen := map[[2]uint64]bool{}
	for _, e := range ents {
		if e.IsDir() {
			u.mounts++
			u.mountBytes += dirSize(filepath.Join(dir, e.Name()), seen)
		}
	}
	return nil
}

// dirSize returns the apparent size of the regular files below dir,
// counting a file with several links once (seen holds device and inode).
func dirSize(dir string, seen map[[2]uint64]bool) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			k := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		n += fi.Size()
		return nil
	})
	return n
}

// extractedDir is the directory of the extracted layer trees in the state
// directory (package layers).
const extractedDir = "layers"

// createdByWidth is how much of a record's CREATED BY the table shows.
const createdByWidth = 60

// printCacheRecords writes the --verbose table of build cache records,
// the most recently used first.
func printCacheRecords(s *streams, rows []cacheRow, now time.Time) {
	slices.SortFunc(rows, func(a, b cacheRow) int {
		if c := b.rec.LastUsed.Compare(a.rec.LastUsed); c != 0 {
			return c
		}
		return strings.Compare(a.rec.Key.Hex, b.rec.Key.Hex)
	})
	tw := tabwriter.NewWriter(s.stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "CACHE KEY\tSIZE\tLAST USED\tSHARED\tCREATED BY")
	for _, r := range rows {
		shared := "no"
		if r.shared {
			shared = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", shortDigest(r.rec.Key), humanSize(r.rec.Layer.Size),
			ago(now, r.rec.LastUsed), shared, truncate(oneLine(r.rec.CreatedBy), createdByWidth))
	}
	tw.Flush()
}

// printUsage writes the summary table.
func printUsage(s *streams, u *diskUsage) {
	tw := tabwriter.NewWriter(s.stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tTOTAL\tSIZE\tRECLAIMABLE")
	fmt.Fprintf(tw, "Images\t%d\t%s\t%s\n", u.images, humanSize(u.imageBytes), humanSize(0))
	fmt.Fprintf(tw, "Build cache\t%d\t%s\t%s\n", len(u.records), humanSize(u.cacheBytes), humanSize(u.cacheReclaimable))
	fmt.Fprintf(tw, "Layer trees\t%d\t%s\t%s\n", u.trees, humanSize(u.treeBytes), humanSize(u.treeReclaimable))
	fmt.Fprintf(tw, "Unused blobs\t%d\t%s\t%s\n", u.unused, humanSize(u.unusedB), humanSize(u.unusedB))
	fmt.Fprintf(tw, "Cache mounts\t%d\t%s\t%s\n", u.mounts, humanSize(u.mountBytes), humanSize(u.mountBytes))
	fmt.Fprintf(tw, "Total\t\t%s\t%s\n", humanSize(u.total), humanSize(u.reclaimable()))
	tw.Flush()
}

func humanSize(n int64) string { return units.HumanSizeWithPrecision(float64(n), 3) }

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "N/A"
	}
	return units.HumanDuration(now.Sub(t)) + " ago"
}

// truncate shortens s to at most n runes, marking the cut with "...".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-3]) + "..."
}
