package builder_test

// Differential corpus: loading testdata/diff/<case>/ and preparing its build
// context. See testdata/diff/README.md for the layout of a case.

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	diffCorpus       = "../testdata/diff"
	caseFile         = "case.json"
	registryToken    = "@REGISTRY@" // replaced with the test registry's host:port
	httpToken        = "@HTTP@"     // replaced with the URL of a server of the corpus directory
	minCorpusEntries = 25
)

// diffCase is one directory of the corpus plus its optional case.json.
type diffCase struct {
	Name string `json:"-"`
	Dir  string `json:"-"`

	Description string `json:"description"`
	// BuildArgs are passed to both builders on top of BASE, BASE_REPO and
	// BASE_DIGEST.
	BuildArgs map[string]string `json:"buildArgs"`
	// Target is the stage to build ("" = last).
	Target string `json:"target"`
	// Modes and Owners ("uid:gid") are applied to context paths after the
	// copy (git keeps neither); EmptyDirs are created and Hardlinks
	// ({"new": "existing"}) linked (git can hold neither).
	Modes     map[string]string `json:"modes"`
	Owners    map[string]string `json:"owners"`
	EmptyDirs []string          `json:"emptyDirs"`
	Hardlinks map[string]string `json:"hardlinks"`
	// Xattrs are extended attributes set on context paths.
	Xattrs map[string]map[string]string `json:"xattrs"`
	// BuildahDockerfile, when set, is what buildah builds instead of
	// Dockerfile: the same result spelled with features buildah 1.28 has.
	BuildahDockerfile string `json:"buildahDockerfile"`
	// Config and Files list where buildah's result departs from BuildKit's;
	// the harness checks buildah's value and replaces it with BuildKit's.
	Config []configDifference `json:"config"`
	Files  []fileDifference   `json:"files"`
}

// configDifference is a config field where buildah and BuildKit differ.
type configDifference struct {
	Field    string          `json:"field"`
	Buildah  json.RawMessage `json:"buildah"`
	BuildKit json.RawMessage `json:"buildkit"`
	Reason   string          `json:"reason"`
}

// fileDifference is a path where buildah and BuildKit differ. Path may end
// in "/**" to cover a directory and everything below it (patches only).
// A null side means the path is absent on that side.
type fileDifference struct {
	Path     string          `json:"path"`
	Buildah  json.RawMessage `json:"buildah"`
	BuildKit json.RawMessage `json:"buildkit"`
	Reason   string          `json:"reason"`
}

func loadCases(t *testing.T) []diffCase {
	t.Helper()
	ents, err := os.ReadDir(diffCorpus)
	if err != nil {
		t.Fatalf("reading corpus: %v", err)
	}
	var cases []diffCase
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		c, err := loadCase(filepath.Join(diffCorpus, e.Name()))
		if err != nil {
			t.Fatalf("case %s: %v", e.Name(), err)
		}
		cases = append(cases, c)
	}
	if len(cases) < minCorpusEntries {
		t.Fatalf("corpus has %d cases, want at least %d", len(cases), minCorpusEntries)
	}
	return cases
}

func loadCase(dir string) (diffCase, error) {
	c := diffCase{Name: filepath.Base(dir), Dir: dir}
	if _, err := os.Stat(filepath.Join(dir, "Dockerfile")); err != nil {
		return c, err
	}
	b, err := os.ReadFile(filepath.Join(dir, caseFile))
	if os.IsNotExist(err) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("%s: %w", caseFile, err)
	}
	for _, d := range c.Config {
		if d.Reason == "" {
			return c, fmt.Errorf("%s: config difference %s has no reason", caseFile, d.Field)
		}
	}
	for _, d := range c.Files {
		if d.Reason == "" {
			return c, fmt.Errorf("%s: file difference %s has no reason", caseFile, d.Path)
		}
	}
	return c, nil
}

// harnessOnly are case files that are not part of the build context.
func (c diffCase) harnessOnly(rel string) bool {
	return rel == caseFile || (c.BuildahDockerfile != "" && rel == c.BuildahDockerfile)
}

// prepareContext copies the case into dst with normalized metadata (files
// 0644, or 0755 when executable; directories 0755; owner 0:0), replaces the
// tokens (@REGISTRY@, @HTTP@) in Dockerfiles, then applies the case's setup.
// Both builders build from dst. It returns the path of the Dockerfile buildah
// builds (outside dst when the case has its own).
func (c diffCase) prepareContext(dst string, tokens *strings.Replacer) (buildahDockerfile string, err error) {
	err = filepath.WalkDir(c.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(c.Dir, p)
		if err != nil {
			return err
		}
		if c.harnessOnly(rel) {
			return nil
		}
		return copyNormalized(p, filepath.Join(dst, rel), d, rel == "Dockerfile", tokens)
	})
	if err != nil {
		return "", err
	}
	buildahDockerfile = filepath.Join(dst, "Dockerfile")
	if c.BuildahDockerfile != "" {
		buildahDockerfile = filepath.Join(filepath.Dir(dst), "buildah.Dockerfile")
		b, err := os.ReadFile(filepath.Join(c.Dir, c.BuildahDockerfile))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(buildahDockerfile, []byte(tokens.Replace(string(b))), 0o644); err != nil {
			return "", err
		}
	}
	return buildahDockerfile, c.applySetup(dst)
}

func copyNormalized(src, dst string, d fs.DirEntry, isDockerfile bool, tokens *strings.Replacer) error {
	switch {
	case d.IsDir():
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		return os.Chmod(dst, 0o755)
	case d.Type()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	case d.Type().IsRegular():
		info, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if isDockerfile {
			b = []byte(tokens.Replace(string(b)))
		}
		mode := fs.FileMode(0o644)
		if info.Mode()&0o111 != 0 {
			mode = 0o755
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			return err
		}
		return os.Chmod(dst, mode)
	default:
		return fmt.Errorf("%s: unsupported file type %v in corpus", src, d.Type())
	}
}

func (c diffCase) applySetup(dst string) error {
	for _, d := range c.EmptyDirs {
		if err := os.MkdirAll(filepath.Join(dst, d), 0o755); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(c.Hardlinks) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, p)), 0o755); err != nil {
			return err
		}
		if err := os.Link(filepath.Join(dst, c.Hardlinks[p]), filepath.Join(dst, p)); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(c.Modes) {
		m, err := strconv.ParseUint(c.Modes[p], 8, 32)
		if err != nil {
			return fmt.Errorf("mode of %s: %w", p, err)
		}
		if err := os.Chmod(filepath.Join(dst, p), fs.FileMode(m)&fs.ModePerm|unixModeBits(m)); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(c.Xattrs) {
		for _, k := range sortedKeys(c.Xattrs[p]) {
			if err := unix.Lsetxattr(filepath.Join(dst, p), k, []byte(c.Xattrs[p][k]), 0); err != nil {
				return fmt.Errorf("xattr %s on %s: %w", k, p, err)
			}
		}
	}
	for _, p := range sortedKeys(c.Owners) {
		var uid, gid int
		if _, err := fmt.Sscanf(c.Owners[p], "%d:%d", &uid, &gid); err != nil {
			return fmt.Errorf("owner of %s: %w", p, err)
		}
		if err := os.Lchown(filepath.Join(dst, p), uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// unixModeBits maps setuid/setgid/sticky octal bits to fs.FileMode bits.
func unixModeBits(m uint64) fs.FileMode {
	var r fs.FileMode
	if m&0o4000 != 0 {
		r |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		r |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		r |= fs.ModeSticky
	}
	return r
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
