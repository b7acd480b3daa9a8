package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// openStatIndex opens the index of s with a clock an hour ahead, so that
// files written by the test are not racy.
func openStatIndex(t testing.TB, s *Store) *StatIndex {
	t.Helper()
	x, err := OpenStatIndex(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	x.now = func() time.Time { return time.Now().Add(time.Hour) }
	return x
}

func newStatStore(t testing.TB) *Store {
	t.Helper()
	s, err := OpenStore(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func contentHash(s string) v1.Hash {
	d := sha256.Sum256([]byte(s))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(d[:])}
}

func writeFile(t testing.TB, p, data string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkDigest asserts FileDigest(p) is the hash of want and that it read
// exactly reads files.
func checkDigest(t *testing.T, x *StatIndex, p, want string, reads int64) {
	t.Helper()
	before := x.Hashed()
	got, err := x.FileDigest(p)
	if err != nil {
		t.Fatal(err)
	}
	if got != contentHash(want) {
		t.Errorf("FileDigest(%s) = %s, want hash of %q", filepath.Base(p), got, want)
	}
	if n := x.Hashed() - before; n != reads {
		t.Errorf("FileDigest(%s) read %d files, want %d", filepath.Base(p), n, reads)
	}
}

func TestStatIndexReuse(t *testing.T) {
	ctx := context.Background()
	s := newStatStore(t)
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	writeFile(t, a, "alpha")
	writeFile(t, b, "beta")
	writeFile(t, c, "")

	x := openStatIndex(t, s)
	checkDigest(t, x, a, "alpha", 1)
	checkDigest(t, x, b, "beta", 1)
	checkDigest(t, x, c, "", 1)
	checkDigest(t, x, a, "alpha", 0)
	if err := x.Save(ctx); err != nil {
		t.Fatal(err)
	}

	y := openStatIndex(t, s)
	if y.Len() != 3 {
		t.Fatalf("reopened index has %d entries, want 3", y.Len())
	}
	for _, f := range []struct{ p, data string }{{a, "alpha"}, {b, "beta"}, {c, ""}} {
		checkDigest(t, y, f.p, f.data, 0)
	}
	if y.Hashed() != 0 {
		t.Fatalf("reopened index read %d files", y.Hashed())
	}

	old, err := os.Lstat(a)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name   string
		change func()
		p      string
		want   string
	}{
		{"new size", func() { writeFile(t, b, "beta2") }, b, "beta2"},
		{"same size, mtime restored", func() {
			writeFile(t, a, "ALPHA")
			if err := os.Chtimes(a, old.ModTime(), old.ModTime()); err != nil {
				t.Fatal(err)
			}
		}, a, "ALPHA"},
		{"replaced by rename", func() {
			writeFile(t, c+".new", "gamma")
			if err := os.Rename(c+".new", c); err != nil {
				t.Fatal(err)
			}
		}, c, "gamma"},
		{"touched only", func() {
			if err := os.Chtimes(a, time.Unix(1, 0), time.Unix(1, 0)); err != nil {
				t.Fatal(err)
			}
		}, a, "ALPHA"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change()
			checkDigest(t, y, st.p, st.want, 1)
			checkDigest(t, y, st.p, st.want, 0)
		})
	}
}

func TestStatIndexErrors(t *testing.T) {
	s := newStatStore(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "f"), "x")
	if err := os.Symlink("f", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	x := openStatIndex(t, s)
	for _, p := range []string{"f", filepath.Join(dir, "link"), dir, filepath.Join(dir, "missing"), filepath.Join(dir, "fifo")} {
		if h, err := x.FileDigest(p); err == nil {
			t.Errorf("FileDigest(%s) = %s, want an error", p, h)
		}
	}
	if x.Len() != 0 || x.Hashed() != 0 {
		t.Errorf("errors left %d entries, %d reads", x.Len(), x.Hashed())
	}
}

// TestStatIndexRacy: a file rewritten with the same size right after it was
// hashed (within one timestamp tick, so its stat may not change) must not
// be served from the index. Kernels with multigrain timestamps (6.13+ on
// ext4, xfs, btrfs, tmpfs) give the rewrite a new ctime anyway; the second
// part checks the window itself with a clock set relative to the ctime.
func TestStatIndexRacy(t *testing.T) {
	s := newStatStore(t)
	x, err := OpenStatIndex(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "f")
	for i := range 200 {
		a, b := fmt.Sprintf("a%04d", i), fmt.Sprintf("b%04d", i)
		writeFile(t, p, a)
		if got, err := x.FileDigest(p); err != nil || got != contentHash(a) {
			t.Fatalf("round %d: first digest %s, %v", i, got, err)
		}
		writeFile(t, p, b)
		if got, err := x.FileDigest(p); err != nil || got != contentHash(b) {
			t.Fatalf("round %d: digest after a same-size rewrite is %s (%v), want the hash of %q", i, got, err, b)
		}
	}
	if x.Len() != 0 {
		t.Errorf("%d entries recorded for a file changed just now", x.Len())
	}

	// The window, with a clock placed relative to the file's ctime.
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	ctime := time.Unix(0, st.Ctim.Nano())
	for _, tc := range []struct {
		after  time.Duration
		record bool
	}{{0, false}, {StatIndexRacyWindow / 2, false}, {-StatIndexRacyWindow / 2, false}, {2 * StatIndexRacyWindow, true}} {
		y, err := OpenStatIndex(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		y.now = func() time.Time { return ctime.Add(tc.after) }
		if _, err := y.FileDigest(p); err != nil {
			t.Fatal(err)
		}
		if got := y.Len() == 1; got != tc.record {
			t.Errorf("hashed %v after the last change: recorded %v, want %v", tc.after, got, tc.record)
		}
	}
}

func TestStatIndexCorruptFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	writeFile(t, f, "data")
	valid := func(t *testing.T, s *Store) []byte {
		x := openStatIndex(t, s)
		checkDigest(t, x, f, "data", 1)
		if err := x.Save(ctx); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(s.Root(), "cache", "statindex"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name    string
		corrupt func(p string, b []byte) error
	}{
		{"flipped byte", func(p string, b []byte) error { b[len(b)/2] ^= 0x40; return os.WriteFile(p, b, 0o644) }},
		{"truncated", func(p string, b []byte) error { return os.WriteFile(p, b[:len(b)-7], 0o644) }},
		{"empty", func(p string, b []byte) error { return os.WriteFile(p, nil, 0o644) }},
		{"garbage", func(p string, b []byte) error { return os.WriteFile(p, []byte("{\"not\":\"an index\"}"), 0o644) }},
		{"directory", func(p string, b []byte) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Mkdir(p, 0o755)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStatStore(t)
			b := valid(t, s)
			p := filepath.Join(s.Root(), "cache", "statindex")
			if err := tc.corrupt(p, b); err != nil {
				t.Fatal(err)
			}
			x := openStatIndex(t, s)
			if x.Len() != 0 {
				t.Fatalf("corrupt index loaded with %d entries", x.Len())
			}
			checkDigest(t, x, f, "data", 1)
			err := x.Save(ctx)
			if tc.name == "directory" {
				if err == nil {
					t.Fatal("Save over a directory succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkDigest(t, openStatIndex(t, s), f, "data", 0)
		})
	}
}

// indexFileID identifies the index file as written (a new rename gives a
// new inode).
func indexFileID(t *testing.T, s *Store) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(s.Root(), "cache", "statindex"), &st); err != nil {
		if os.IsNotExist(err) {
			return 0
		}
		t.Fatal(err)
	}
	return st.Ino
}

func TestStatIndexSaveOnlyWhenChanged(t *testing.T) {
	ctx := context.Background()
	s := newStatStore(t)
	f := filepath.Join(t.TempDir(), "f")
	writeFile(t, f, "data")
	x := openStatIndex(t, s)
	if err := x.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if id := indexFileID(t, s); id != 0 {
		t.Fatal("Save of an unchanged empty index wrote a file")
	}
	checkDigest(t, x, f, "data", 1)
	if err := x.Save(ctx); err != nil {
		t.Fatal(err)
	}
	first := indexFileID(t, s)
	if first == 0 {
		t.Fatal("Save wrote no file")
	}
	y := openStatIndex(t, s)
	checkDigest(t, y, f, "data", 0)
	if err := y.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if id := indexFileID(t, s); id != first {
		t.Error("Save after hits only rewrote the index")
	}
	// Two days later a hit refreshes the entry's last use: worth a write.
	y.now = func() time.Time { return time.Now().Add(48 * time.Hour) }
	checkDigest(t, y, f, "data", 0)
	if err := y.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if id := indexFileID(t, s); id == first {
		t.Error("a refreshed last use was not saved")
	}
}

func TestStatIndexTrim(t *testing.T) {
	ctx := context.Background()
	s := newStatStore(t)
	dir := t.TempDir()
	x := openStatIndex(t, s)
	base := time.Now().Add(time.Hour)
	var paths []string
	for i := range 5 {
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		writeFile(t, p, p)
		paths = append(paths, p)
		// f0 used 40 days ago, f1 39 days ago, ... f4 36 days ago.
		x.now = func() time.Time { return base.Add(time.Duration(i-40) * 24 * time.Hour) }
		checkDigest(t, x, p, p, 1)
	}
	x.now = func() time.Time { return base }
	x.maxAge = 38 * 24 * time.Hour // f0, f1 expire
	x.maxEntries = 2               // of f2, f3, f4: f2 goes
	if err := x.Save(ctx); err != nil {
		t.Fatal(err)
	}
	y := openStatIndex(t, s)
	for i, p := range paths {
		want := int64(1)
		if i >= 3 {
			want = 0
		}
		checkDigest(t, y, p, p, want)
	}
}

func TestStatIndexMerge(t *testing.T) {
	ctx := context.Background()
	s := newStatStore(t)
	dir := t.TempDir()
	f1, f2 := filepath.Join(dir, "f1"), filepath.Join(dir, "f2")
	writeFile(t, f1, "one")
	writeFile(t, f2, "two")
	a, b := openStatIndex(t, s), openStatIndex(t, s)
	checkDigest(t, a, f1, "one", 1)
	checkDigest(t, b, f2, "two", 1)
	if err := a.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(ctx); err != nil {
		t.Fatal(err)
	}
	c := openStatIndex(t, s)
	checkDigest(t, c, f1, "one", 0)
	checkDigest(t, c, f2, "two", 0)
}

// TestStatIndexConcurrent: FileDigest and Save from many goroutines (run
// with -race).
func TestStatIndexConcurrent(t *testing.T) {
	ctx := context.Background()
	s := newStatStore(t)
	dir := t.TempDir()
	var files []string
	for i := range 20 {
		p := filepath.Join(dir, strconv.Itoa(i))
		writeFile(t, p, p)
		files = append(files, p)
	}
	x := openStatIndex(t, s)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				p := files[(g+i)%len(files)]
				if h, err := x.FileDigest(p); err != nil || h != contentHash(p) {
					errs <- fmt.Errorf("FileDigest(%s) = %s, %v", p, h, err)
					return
				}
				if i%10 == 0 {
					if err := x.Save(ctx); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := x.Hashed(); n < int64(len(files)) || n > 8*int64(len(files)) {
		t.Errorf("read %d files for %d distinct files", n, len(files))
	}
}

const statIndexWorkerEnv = "IMGBUILD_LAYERS_STATINDEX_WORKER"

// TestStatIndexProcesses: two processes (this test binary again) save their
// own entries into one root again and again while this one keeps reading
// the file: it is never torn, and in the end it holds both sets.
func TestStatIndexProcesses(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	s, err := OpenStore(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	for _, name := range []string{"p0", "p1"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStatIndexWorkerProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%s", statIndexWorkerEnv, root, dir, name))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	done := make(chan error, len(cmds))
	for _, cmd := range cmds {
		go func() { done <- cmd.Wait() }()
	}
	p := filepath.Join(root, "cache", "statindex")
	reads := 0
	for finished := 0; finished < len(cmds); {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker: %v", err)
			}
			finished++
		default:
			if _, err := readStatIndex(p); err != nil && !os.IsNotExist(err) {
				t.Fatalf("reading the index while it is saved: %v", err)
			} else if err == nil {
				reads++
			}
		}
	}
	if t.Failed() {
		return
	}
	x := openStatIndex(t, s)
	if x.Len() != 2*statWorkerFiles {
		t.Errorf("index holds %d entries, want %d (%d reads while saving)", x.Len(), 2*statWorkerFiles, reads)
	}
}

const statWorkerFiles = 30

// TestStatIndexWorkerProcess is the body of TestStatIndexProcesses'
// workers; it does nothing unless started by it.
func TestStatIndexWorkerProcess(t *testing.T) {
	v := os.Getenv(statIndexWorkerEnv)
	if v == "" {
		t.Skip("[allowed-skip] helper process for TestStatIndexProcesses")
	}
	f := strings.Split(v, ",")
	ctx := context.Background()
	s, err := OpenStore(ctx, f[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := range statWorkerFiles {
		p := filepath.Join(f[1], fmt.Sprintf("%s-%d", f[2], i))
		writeFile(t, p, p)
		x := openStatIndex(t, s)
		if _, err := x.FileDigest(p); err != nil {
			t.Fatal(err)
		}
		if err := x.Save(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStatIndexSum: Sum with the caller's lstat, extended attributes cached
// with the content, and a nil index that reads every time.
func TestStatIndexSum(t *testing.T) {
	s := newStatStore(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	writeFile(t, p, "data")
	if err := unix.Lsetxattr(p, "user.b", []byte("2"), 0); err != nil {
		t.Skipf("[allowed-skip] no user xattrs on the test filesystem: %v", err)
	}
	if err := unix.Lsetxattr(p, "user.a", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	x := openStatIndex(t, s)
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := x.Sum(p, fi)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Content != contentHash("data") || sum.Xattrs != XattrsDigest(p) || sum.Xattrs == XattrsDigest(dir) {
		t.Fatalf("Sum = %+v; content want %s, xattrs want %s (a dir without any: %s)", sum, contentHash("data"), XattrsDigest(p), XattrsDigest(dir))
	}
	again, err := x.Sum(p, fi)
	if err != nil || again != sum || x.Hashed() != 1 {
		t.Fatalf("second Sum = %+v, %v after %d reads", again, err, x.Hashed())
	}
	// The order attributes were set in does not matter; their values do.
	q := filepath.Join(dir, "g")
	writeFile(t, q, "data")
	for _, kv := range [][2]string{{"user.a", "1"}, {"user.b", "2"}} {
		if err := unix.Lsetxattr(q, kv[0], []byte(kv[1]), 0); err != nil {
			t.Fatal(err)
		}
	}
	if XattrsDigest(q) != sum.Xattrs {
		t.Error("xattrs digest depends on the order attributes were set in")
	}
	if err := unix.Lsetxattr(p, "user.a", []byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	changed, err := x.Sum(p, nil)
	if err != nil || changed.Xattrs == sum.Xattrs || changed.Content != sum.Content || x.Hashed() != 2 {
		t.Fatalf("after setxattr: Sum = %+v, %v after %d reads", changed, err, x.Hashed())
	}
	if _, err := x.Sum(p, fi); err != nil {
		t.Fatal(err) // a stale fi is trusted as given: no error
	}
	if dfi, _ := os.Lstat(dir); dfi != nil {
		if _, err := x.Sum(dir, dfi); err == nil {
			t.Error("Sum of a directory succeeded")
		}
	}

	if err := x.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	y := openStatIndex(t, s)
	if got, err := y.Sum(p, nil); err != nil || got != changed || y.Hashed() != 0 {
		t.Fatalf("after Save and reopening: Sum = %+v, %v after %d reads", got, err, y.Hashed())
	}

	var none *StatIndex
	for range 2 {
		got, err := none.Sum(p, nil)
		if err != nil || got != changed {
			t.Fatalf("nil index Sum = %+v, %v, want %+v", got, err, changed)
		}
	}
	if h, err := none.FileDigest(p); err != nil || h != contentHash("data") || none.Hashed() != 0 || none.Len() != 0 {
		t.Fatalf("nil index FileDigest = %s, %v", h, err)
	}
}
