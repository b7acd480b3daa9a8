package layers_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/imgbuild/imgbuild/layers"
)

// TestCacheMeta: small records beside the step cache; PruneCache drops
// them with All, and with Until only when older.
func TestCacheMeta(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		prune layers.CachePruneOptions
		kept  bool
	}{
		{name: "no prune", kept: true},
		{name: "until an hour: recent record kept", prune: layers.CachePruneOptions{Until: time.Hour}, kept: true},
		{name: "all", prune: layers.CachePruneOptions{All: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := openTestStore(t)
			if _, err := st.CacheMeta(ctx, "url", "http://x/f"); !errors.Is(err, layers.ErrNotFound) {
				t.Fatalf("empty store: %v", err)
			}
			if err := st.PutCacheMeta(ctx, "url", "http://x/f", []byte("v1")); err != nil {
				t.Fatal(err)
			}
			if err := st.PutCacheMeta(ctx, "url", "http://x/f", []byte("v2")); err != nil {
				t.Fatal(err)
			}
			if err := st.PutCacheMeta(ctx, "Bad/kind", "k", nil); err == nil {
				t.Error("an invalid kind was accepted")
			}
			if tc.prune != (layers.CachePruneOptions{}) {
				if _, err := st.PruneCache(ctx, tc.prune); err != nil {
					t.Fatal(err)
				}
			}
			b, err := st.CacheMeta(ctx, "url", "http://x/f")
			if tc.kept && (err != nil || string(b) != "v2") {
				t.Errorf("got %q, %v; want the last record", b, err)
			}
			if !tc.kept && !errors.Is(err, layers.ErrNotFound) {
				t.Errorf("after prune: %q, %v; want none", b, err)
			}
		})
	}
}
