// Command gencontext writes the build context of `make bench` (.ci/bench):
// a fixed number of files of pseudo-random (incompressible) bytes, of
// pseudo-random sizes adding up to an exact total, spread over nested
// directories d0 .. d9 (one per COPY step), with a fixed mtime. The same
// flags give the same tree byte for byte; it prints a sha256 over every
// path, size and content so runs can be compared.
//
//	go run .ci/bench.d/gencontext.go -dir DIR [-files 5000] [-bytes 52428800] [-seed 1]
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"
)

func main() {
	dir := flag.String("dir", "", "directory to create (must not exist)")
	files := flag.Int("files", 5000, "number of files (a multiple of 500)")
	total := flag.Int64("bytes", 50<<20, "total size of the files in bytes")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if *dir == "" || *files <= 0 || *files%500 != 0 || *total < int64(*files) {
		fmt.Fprintln(os.Stderr, "usage: gencontext -dir DIR [-files N*500] [-bytes B] [-seed S]")
		os.Exit(2)
	}
	sum, err := generate(*dir, *files, *total, *seed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gencontext:", err)
		os.Exit(1)
	}
	fmt.Printf("sha256:%x\n", sum)
}

// sizes draws n sizes from 0.1 to 1.9 times the mean and adjusts the last
// one so that they add up to exactly total.
func sizes(r *rand.Rand, n int, total int64) []int64 {
	w := make([]float64, n)
	var sum float64
	for i := range w {
		w[i] = 0.1 + 1.8*r.Float64()
		sum += w[i]
	}
	out := make([]int64, n)
	var got int64
	for i := range w {
		out[i] = max(1, int64(float64(total)*w[i]/sum))
		got += out[i]
	}
	out[n-1] += total - got
	return out
}

// generate lays out d<0-9>/s<0-9>/t<0-4>/f<NNNN>: 10 top directories of
// files/10 files each, 10 files (files/500 per leaf directory set) per leaf.
func generate(dir string, files int, total int64, seed uint64) ([]byte, error) {
	r := rand.New(rand.NewChaCha8(seedBytes(seed)))
	sz := sizes(r, files, total)
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	h := sha256.New()
	buf := make([]byte, 0, 64<<10)
	perLeaf := files / 500
	for i, n := range sz {
		top, rest := i/(files/10), i%(files/10)
		leaf := rest / perLeaf
		rel := filepath.Join(fmt.Sprintf("d%d", top), fmt.Sprintf("s%d", leaf/5), fmt.Sprintf("t%d", leaf%5), fmt.Sprintf("f%04d", i))
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if cap(buf) < int(n) {
			buf = make([]byte, 0, n)
		}
		buf = buf[:n]
		for j := 0; j < len(buf); j += 8 {
			var v [8]byte
			binary.LittleEndian.PutUint64(v[:], r.Uint64())
			copy(buf[j:], v[:])
		}
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			return nil, err
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			return nil, err
		}
		fmt.Fprintf(h, "%s %d\n", rel, n)
		h.Write(buf)
	}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chtimes(p, mtime, mtime)
	})
	return h.Sum(nil), err
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return s
}
