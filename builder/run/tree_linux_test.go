package run_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"golang.org/x/sys/unix"
)

// tree describes every entry below a directory (the directory itself
// included) by type, mode, owner, mtime, symlink target and content hash.
type tree map[string]string

func snapshot(t *testing.T, dir string) tree {
	t.Helper()
	m := tree{}
	sums := map[uint64]string{} // by inode: busybox has hundreds of hard links
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		desc := fmt.Sprintf("mode=%o owner=%d:%d mtime=%d.%09d", st.Mode, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		case unix.S_IFREG:
			if _, ok := sums[st.Ino]; !ok {
				sums[st.Ino] = fileSum(t, p)
			}
			desc += " sha256=" + sums[st.Ino]
		}
		m[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", dir, err)
	}
	return m
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// diff lists the differences between two snapshots.
func (a tree) diff(b tree) []string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "removed "+k+" ("+v+")")
		} else if v != w {
			d = append(d, "changed "+k+": "+v+" => "+w)
		}
	}
	for k, w := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "added "+k+" ("+w+")")
		}
	}
	sort.Strings(d)
	return d
}

// checkSame fails t when dir no longer matches before.
func checkSame(t *testing.T, what, dir string, before tree) {
	t.Helper()
	if d := before.diff(snapshot(t, dir)); len(d) != 0 {
		t.Errorf("%s changed by the run:\n%s", what, joinLines(d))
	}
}

func joinLines(l []string) string {
	s := ""
	for _, x := range l {
		s += "  " + x + "\n"
	}
	return s
}
