package layers_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/imgbuild/imgbuild/layers"
)

// TestPruneExtractedTrees: Prune keeps the extracted trees of tagged images'
// layers and removes the others.
func TestPruneExtractedTrees(t *testing.T) {
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	dgst, err := s.PutImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "keep/me:1", dgst); err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	kept := cfg.RootFS.DiffIDs[0].Hex
	gone := strings.Repeat("ab", 32)
	for _, name := range []string{kept, gone, gone + "-u", "not-a-digest"} {
		dir := filepath.Join(s.Root(), "layers", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := s.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Trees != 2 {
		t.Errorf("Trees = %d, want 2", rep.Trees)
	}
	for name, want := range map[string]bool{kept: true, gone: false, gone + "-u": false, "not-a-digest": true} {
		_, err := os.Stat(filepath.Join(s.Root(), "layers", name))
		if got := err == nil; got != want {
			t.Errorf("layers/%s present = %v, want %v (%v)", name, got, want, err)
		}
	}
	if _, err := s.Image(ctx, "keep/me:1"); err != nil {
		t.Errorf("tagged image lost: %v", err)
	}
}
