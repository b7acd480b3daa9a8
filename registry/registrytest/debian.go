//go:build linux

package registrytest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

// Debian base image fixture: a `debootstrap --variant=minbase bookworm`
// rootfs, built once per machine by the script DebianRootfsScript and cached
// under the test cache directory, and a one-layer image of it whose
// compressed layer is cached beside it.
const (
	// DebianRootfsScript, relative to the repository root, builds (once) and
	// prints the rootfs; .ci/bench uses it too.
	DebianRootfsScript = ".ci/debian-rootfs"
	// CacheEnv overrides DefaultCacheDir, the directory the rootfs and its
	// layer are cached in (kept between runs of the suite); the script reads
	// it.
	CacheEnv        = "IMGBUILD_TEST_CACHE"
	DefaultCacheDir = "/var/cache/imgbuild-test"
	// DebianRepo is where PushDebian pushes.
	DebianRepo = "library/debian:bookworm"
)

// debianName is the rootfs directory under the cache dir; the script writes
// debianName+".complete" once the rootfs is in place and takes the lock
// debianLock (which the layer cache shares).
const (
	debianName = "debian-bookworm-minbase"
	debianLock = "debian.lock"
)

// DebianRootfs returns the path of the cached Debian bookworm minbase
// rootfs, building it with debootstrap the first time on this machine
// (several minutes; concurrent test processes wait for one build). It needs
// root (RequireRoot: skips, or fails under IMGBUILD_REQUIRE_ROOT=1) and fails
// when debootstrap is missing. Callers must not modify the tree.
func DebianRootfs(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	dir, err := MakeDebianRootfs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// MakeDebianRootfs is DebianRootfs for programs (benchmarks): it runs
// DebianRootfsScript, found in the current directory or one of its parents,
// and returns the rootfs path it prints.
func MakeDebianRootfs(ctx context.Context) (string, error) {
	script, err := findScript()
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", DebianRootfsScript, err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := lines[len(lines)-1]
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%s printed %q, not a directory", DebianRootfsScript, dir)
	}
	return dir, nil
}

// findScript looks for DebianRootfsScript from the working directory up
// (go test runs in the package directory, programs in the repository root).
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, DebianRootfsScript)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s not found in the working directory or its parents", DebianRootfsScript)
		}
		dir = parent
	}
}

// DebianImage is a one-layer Docker image of DebianRootfs: the whole tree
// (numeric owners, modes with setuid/setgid bits, hard links, xattrs, every
// timestamp EpochUnix) in one gzip layer, config Env PATH=DefaultPath, Cmd
// ["bash"], os linux and the host's architecture, created at EpochUnix. Its
// digest depends only on the cached rootfs; the compressed layer is cached
// beside the rootfs, so after the first call this costs milliseconds.
func DebianImage(t testing.TB) v1.Image {
	t.Helper()
	RequireRoot(t)
	img, err := MakeDebianImage(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// MakeDebianImage is DebianImage for programs (benchmarks).
func MakeDebianImage(ctx context.Context) (v1.Image, error) {
	rootfs, err := MakeDebianRootfs(ctx)
	if err != nil {
		return nil, err
	}
	stamp, err := os.ReadFile(rootfs + ".complete")
	if err != nil {
		return nil, fmt.Errorf("debian rootfs marker: %w", err)
	}
	layer, err := CachedDirLayer(ctx, rootfs, filepath.Dir(rootfs), debianName, string(stamp))
	if err != nil {
		return nil, err
	}
	return debianImage(layer, "debootstrap --variant=minbase bookworm")
}

func debianImage(layer v1.Layer, createdBy string) (v1.Image, error) {
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Created:      v1.Time{Time: epoch()},
		OS:           "linux",
		Architecture: runtime.GOARCH,
		Config: v1.Config{
			Env: []string{"PATH=" + DefaultPath},
			Cmd: []string{"bash"},
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("debian image config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch()}, CreatedBy: createdBy},
	})
	if err != nil {
		return nil, fmt.Errorf("debian image layer: %w", err)
	}
	return img, nil
}

// PushDebian pushes DebianImage to host/library/debian:bookworm over plain
// HTTP and returns that reference.
func PushDebian(t testing.TB, host string) string {
	t.Helper()
	return PushImage(t, host, DebianRepo, DebianImage(t))
}

// layerMeta is the sidecar NAME.layer.json of a cached layer NAME.layer.tar.gz;
// it is written last, so its presence means the layer is complete.
type layerMeta struct {
	Source string  `json:"source"` // the stamp of the tree the layer was made from
	Digest v1.Hash `json:"digest"`
	DiffID v1.Hash `json:"diffID"`
	Size   int64   `json:"size"`
}

// CachedDirLayer returns a gzip layer of the tree at dir (see WriteDirLayer),
// cached in cacheDir as NAME.layer.tar.gz with its hashes in NAME.layer.json.
// The cache is used while it was made from a tree with the same stamp (e.g.
// the rootfs's build time), and rebuilt otherwise. Concurrent processes
// serialise on an flock of cacheDir/debian.lock.
func CachedDirLayer(ctx context.Context, dir, cacheDir, name, stamp string) (v1.Layer, error) {
	blob := filepath.Join(cacheDir, name+".layer.tar.gz")
	metaPath := filepath.Join(cacheDir, name+".layer.json")
	if l, err := readCachedLayer(blob, metaPath, stamp); err == nil {
		return l, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(cacheDir, debianLock))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if l, err := readCachedLayer(blob, metaPath, stamp); err == nil {
		return l, nil // made by another process while we waited
	}
	tmp, err := os.CreateTemp(cacheDir, name+".layer.tmp.*")
	if err != nil {
		return nil, fmt.Errorf("caching layer of %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	digest, diffID, size, err := WriteDirLayer(ctx, tmp, dir)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), blob)
	}
	if err != nil {
		return nil, fmt.Errorf("caching layer of %s: %w", dir, err)
	}
	meta := layerMeta{Source: stamp, Digest: digest, DiffID: diffID, Size: size}
	if err := writeJSONAtomic(metaPath, meta); err != nil {
		return nil, fmt.Errorf("caching layer of %s: %w", dir, err)
	}
	return &fileLayer{path: blob, meta: meta}, nil
}

func readCachedLayer(blob, metaPath, stamp string) (v1.Layer, error) {
	data, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, err
	}
	var meta layerMeta
	if err := json.Unmarshal(data, &meta); err != nil {
		return nil, err
	}
	if meta.Source != stamp {
		return nil, errors.New("cached layer is of another tree")
	}
	fi, err := os.Stat(blob)
	if err != nil {
		return nil, err
	}
	if fi.Size() != meta.Size {
		return nil, fmt.Errorf("cached layer %s has %d bytes, want %d", blob, fi.Size(), meta.Size)
	}
	return &fileLayer{path: blob, meta: meta}, nil
}

func writeJSONAtomic(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// lockFile takes an exclusive flock on path (created if missing), waiting
// until ctx is done, and returns the function releasing it.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WriteDirLayer writes to w a gzip layer of the tree at dir and returns its
// digest, diffID and compressed size. The tar is deterministic: entries in
// lexical order, PAX format, numeric owners only, every timestamp EpochUnix,
// permission bits with setuid/setgid/sticky, xattrs as SCHILY.xattr records,
// the second and later names of a multiply-linked file as hard links, device
// nodes and fifos kept, sockets skipped.
func WriteDirLayer(ctx context.Context, w io.Writer, dir string) (digest, diffID v1.Hash, size int64, err error) {
	zsum, tsum := sha256.New(), sha256.New()
	cw := &countingWriter{w: io.MultiWriter(w, zsum)}
	zw := gzip.NewWriter(cw)
	tw := tar.NewWriter(io.MultiWriter(zw, tsum))
	links := map[[2]uint64]string{}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		return writeDirEntry(tw, path, filepath.ToSlash(rel), links)
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		return v1.Hash{}, v1.Hash{}, 0, fmt.Errorf("layer of %s: %w", dir, err)
	}
	digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(zsum.Sum(nil))}
	diffID = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(tsum.Sum(nil))}
	return digest, diffID, cw.n, nil
}

func writeDirEntry(tw *tar.Writer, path, name string, links map[[2]uint64]string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat_t", path)
	}
	hdr := &tar.Header{
		Name: name, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
		ModTime: epoch(), Format: tar.FormatPAX,
	}
	switch fi.Mode().Type() {
	case fs.ModeDir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
	case fs.ModeSymlink:
		hdr.Typeflag = tar.TypeSymlink
		if hdr.Linkname, err = os.Readlink(path); err != nil {
			return err
		}
	case fs.ModeDevice | fs.ModeCharDevice, fs.ModeDevice:
		hdr.Typeflag = tar.TypeBlock
		if fi.Mode()&fs.ModeCharDevice != 0 {
			hdr.Typeflag = tar.TypeChar
		}
		hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	case fs.ModeNamedPipe:
		hdr.Typeflag = tar.TypeFifo
	case fs.ModeSocket:
		return nil
	case 0:
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := links[key]; ok {
			hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
			break
		}
		if st.Nlink > 1 {
			links[key] = name
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size
	default:
		return fmt.Errorf("%s: unsupported file type %v", path, fi.Mode().Type())
	}
	if err := addXattrs(hdr, path); err != nil {
		return err
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if n, err := io.Copy(tw, f); err != nil {
		return err
	} else if n != hdr.Size {
		return fmt.Errorf("%s changed while read", path)
	}
	return nil
}

// addXattrs records the extended attributes of path in hdr.
func addXattrs(hdr *tar.Header, path string) error {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if errors.Is(err, unix.ENOTSUP) || n == 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing xattrs of %s: %w", path, err)
	}
	for _, key := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		val := make([]byte, 4096)
		m, err := unix.Lgetxattr(path, key, val)
		if err != nil {
			return fmt.Errorf("xattr %s of %s: %w", key, path, err)
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+key] = string(val[:m])
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// fileLayer is a cached gzip layer file whose hashes are known, so that
// neither reading the image nor pushing it hashes or decompresses it again.
type fileLayer struct {
	path string
	meta layerMeta
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.meta.Digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.meta.DiffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.meta.Size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.DockerLayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("layer %s: %w", l.path, err)
	}
	return &gzipFile{Reader: zr, f: f}, nil
}

type gzipFile struct {
	*gzip.Reader
	f *os.File
}

func (g *gzipFile) Close() error {
	err := g.Reader.Close()
	if ferr := g.f.Close(); err == nil {
		err = ferr
	}
	return err
}
