//go:build linux

package layers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/imgbuild/imgbuild/layers"
)

func TestPrune(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	shared := bytesLayerTar(t, s, "shared")
	onlyB := bytesLayerTar(t, s, "only-b")
	stray := bytesLayerTar(t, s, "stray") // in no image
	imgA := ociImage(t, time.Unix(1, 0), shared)
	imgB := ociImage(t, time.Unix(2, 0), shared, onlyB)
	dA := putImage(t, s, imgA, "a:1")
	dB := putImage(t, s, imgB) // untagged
	leftover, err := s.TempDir(ctx, "build-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(leftover, "f"), make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-layers.TempGrace - time.Minute)
	if err := os.Chtimes(leftover, old, old); err != nil {
		t.Fatal(err)
	}
	recent, err := s.TempDir(ctx, "recent-")
	if err != nil {
		t.Fatal(err)
	}
	var wantBytes int64 = 1000
	for _, h := range blobsOf(t, imgB) {
		if h == mustDigest(t, shared) {
			continue
		}
		wantBytes += fileSize(t, blobFile(s, h))
	}
	wantBytes += fileSize(t, blobFile(s, mustDigest(t, stray)))

	rep, err := s.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// B's manifest, config and only layer, plus the stray layer.
	if want := (layers.PruneReport{Images: 1, Blobs: 4, Bytes: wantBytes}); rep != want {
		t.Errorf("report %+v, want %+v", rep, want)
	}
	img, err := s.Image(ctx, "a:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Errorf("tagged image damaged: %v", err)
	}
	if _, err := s.Image(ctx, dB.String()); !errors.Is(err, layers.ErrNotFound) {
		t.Errorf("untagged image still there: %v", err)
	}
	if n := dirNames(t, filepath.Join(s.Root(), "tmp")); len(n) != 1 || n[0] != filepath.Base(recent) {
		t.Errorf("tmp/ holds %v, want only the recent %s", n, filepath.Base(recent))
	}
	if got, want := len(dirNames(t, filepath.Join(s.Root(), "oci", "blobs", "sha256"))), len(blobsOf(t, imgA)); got != want {
		t.Errorf("%d blobs left, want %d", got, want)
	}
	if rep, err := s.Prune(ctx); err != nil || rep != (layers.PruneReport{}) {
		t.Errorf("second prune: %+v %v", rep, err)
	}
	_ = dA
}

// TestPruneWaitsForLeases: a build in progress (holding a lease) keeps its
// untagged blobs.
func TestPruneWaitsForLeases(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	release, err := s.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := bytesLayerTar(t, s, "in progress")
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := s.Prune(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Prune during a lease: err %v, want DeadlineExceeded", err)
	}
	if _, err := os.Stat(blobFile(s, mustDigest(t, l))); err != nil {
		t.Fatalf("leased blob removed: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Prune(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Prune returned while a lease is held: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(blobFile(s, mustDigest(t, l))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unreferenced blob kept after the lease ended: %v", err)
	}
}

// storeWorker builds n images on the store at root, each inside a lease,
// tagging each "<name>/img:<i>" and "shared:latest"; with prune it prunes
// after every image.
func storeWorker(ctx context.Context, root, name string, n int, prune bool) error {
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		release, err := s.Lease(ctx)
		if err != nil {
			return err
		}
		l, err := s.WriteLayer(ctx, func(w io.Writer) error {
			return writeOneFileTar(w, name+strconv.Itoa(i), strings.Repeat(name, 1000*i+1))
		}, layers.LayerOptions{})
		if err != nil {
			release()
			return err
		}
		img, err := imageOf(time.Unix(int64(i), 0), l)
		if err == nil {
			var d v1.Hash
			if d, err = s.PutImage(ctx, img); err == nil {
				err = s.Tag(ctx, fmt.Sprintf("%s/img:%d", name, i), d)
				if err == nil {
					err = s.Tag(ctx, "shared", d)
				}
			}
		}
		release()
		if err != nil {
			return err
		}
		if prune {
			if _, err := s.Prune(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkWorkers checks that every tag the workers made is there and whole.
func checkWorkers(t *testing.T, root string, names []string, n int) {
	t.Helper()
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	infos, err := s.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range infos {
		got = append(got, in.Ref)
	}
	var want []string
	for _, name := range names {
		for i := 0; i < n; i++ {
			want = append(want, fmt.Sprintf("%s/img:%d", name, i))
		}
	}
	want = append(want, "shared:latest")
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("images %q, want %q", got, want)
	}
	for _, ref := range want {
		img, err := s.Image(ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
	}
}

func TestStoreConcurrentGoroutines(t *testing.T) {
	root := t.TempDir()
	names := []string{"g0", "g1", "g2"}
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = storeWorker(context.Background(), root, name, 6, i == 0)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	checkWorkers(t, root, names, 6)
}

const helperEnv = "IMGBUILD_LAYERS_STORE_WORKER"

// TestStoreConcurrentProcesses runs two processes (this test binary again)
// building on one root at once, one of them pruning after every image.
func TestStoreConcurrentProcesses(t *testing.T) {
	root := t.TempDir()
	names := []string{"p0", "p1"}
	var cmds []*exec.Cmd
	for i, name := range names {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStoreWorkerProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d,%v", helperEnv, root, name, 8, i == 0))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("worker: %v", err)
		}
	}
	if t.Failed() {
		return
	}
	checkWorkers(t, root, names, 8)
}

// TestStoreWorkerProcess is the body of TestStoreConcurrentProcesses'
// workers; it does nothing unless started by it.
func TestStoreWorkerProcess(t *testing.T) {
	v := os.Getenv(helperEnv)
	if v == "" {
		t.Skip("[allowed-skip] helper process for TestStoreConcurrentProcesses")
	}
	f := strings.Split(v, ",")
	n, _ := strconv.Atoi(f[2])
	if err := storeWorker(context.Background(), f[0], f[1], n, f[3] == "true"); err != nil {
		t.Fatal(err)
	}
}
