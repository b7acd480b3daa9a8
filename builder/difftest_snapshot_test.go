package builder_test

// Snapshots of an image for the differential tests: its flattened filesystem
// (go-containerregistry mutate.Extract) and the config fields a Dockerfile
// controls, in a form that case.json differences can name and patch.

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"reflect"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// entry is one path of a flattened filesystem. Timestamps are ignored.
type entry struct {
	Type   string `json:"type"`           // file, dir, symlink, hardlink, char, block, fifo
	Mode   string `json:"mode,omitempty"` // octal permission and setuid/setgid/sticky bits; "" for symlinks
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Link   string `json:"link,omitempty"` // symlink or hard-link target
	// Xattrs are the extended attributes (PAX SCHILY.xattr.* records).
	Xattrs map[string]string `json:"xattrs,omitempty"`
}

func (e entry) equal(o entry) bool { return reflect.DeepEqual(e, o) }

// snapshot is what the differential test compares.
type snapshot struct {
	Files  map[string]entry           `json:"files"`
	Config map[string]json.RawMessage `json:"config"`
}

func takeSnapshot(img v1.Image) (*snapshot, error) {
	files, err := flatten(img)
	if err != nil {
		return nil, fmt.Errorf("flattening: %w", err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := configView(raw)
	if err != nil {
		return nil, err
	}
	return &snapshot{Files: files, Config: cfg}, nil
}

func flatten(img v1.Image) (map[string]entry, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]entry{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		p := path.Clean("/" + hdr.Name)
		if p == "/" {
			continue
		}
		e, err := entryOf(hdr, tr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		files[p] = e
	}
	addImplicitParents(files)
	return files, nil
}

func entryOf(hdr *tar.Header, r io.Reader) (entry, error) {
	e := entry{UID: hdr.Uid, GID: hdr.Gid, Mode: fmt.Sprintf("%04o", hdr.Mode&0o7777)}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if e.Xattrs == nil {
				e.Xattrs = map[string]string{}
			}
			e.Xattrs[name] = v
		}
	}
	switch hdr.Typeflag {
	case tar.TypeReg:
		e.Type, e.Size = "file", hdr.Size
		h := sha256.New()
		if _, err := io.Copy(h, r); err != nil {
			return e, err
		}
		e.SHA256 = hex.EncodeToString(h.Sum(nil))
	case tar.TypeDir:
		e.Type = "dir"
	case tar.TypeSymlink:
		e.Type, e.Link, e.Mode = "symlink", hdr.Linkname, ""
	case tar.TypeLink:
		e.Type, e.Link = "hardlink", path.Clean("/"+hdr.Linkname)
	case tar.TypeChar:
		e.Type, e.Link = "char", fmt.Sprintf("%d:%d", hdr.Devmajor, hdr.Devminor)
	case tar.TypeBlock:
		e.Type, e.Link = "block", fmt.Sprintf("%d:%d", hdr.Devmajor, hdr.Devminor)
	case tar.TypeFifo:
		e.Type = "fifo"
	default:
		return e, fmt.Errorf("unexpected tar type %q", hdr.Typeflag)
	}
	return e, nil
}

// addImplicitParents adds directories that only exist as parents of other
// entries, as a runtime extracting the image would create them.
func addImplicitParents(files map[string]entry) {
	for p := range files {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := files[d]; ok {
				break
			}
			files[d] = entry{Type: "dir", Mode: "0755"}
		}
	}
}

// rawConfig is the part of an image config a Dockerfile controls. It is
// decoded from the raw JSON because go-containerregistry's v1.HealthConfig
// has no StartInterval.
type rawConfig struct {
	Author       string `json:"author"`
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Env          []string            `json:"Env"`
		Cmd          []string            `json:"Cmd"`
		Entrypoint   []string            `json:"Entrypoint"`
		WorkingDir   string              `json:"WorkingDir"`
		User         string              `json:"User"`
		ExposedPorts map[string]struct{} `json:"ExposedPorts"`
		Volumes      map[string]struct{} `json:"Volumes"`
		Labels       map[string]string   `json:"Labels"`
		StopSignal   string              `json:"StopSignal"`
		Healthcheck  *rawHealthcheck     `json:"Healthcheck"`
		OnBuild      []string            `json:"OnBuild"`
		Shell        []string            `json:"Shell"`
	} `json:"config"`
}

type rawHealthcheck struct {
	Test          []string      `json:"Test"`
	Interval      time.Duration `json:"Interval"`
	Timeout       time.Duration `json:"Timeout"`
	StartPeriod   time.Duration `json:"StartPeriod"`
	StartInterval time.Duration `json:"StartInterval"`
	Retries       int           `json:"Retries"`
}

// configFields are the compared fields, in report order.
var configFields = []string{
	"Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
	"Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell", "Author", "OS", "Architecture",
}

// configView maps each compared field to canonical JSON: empty values are
// null, sets (ExposedPorts, Volumes) are sorted lists, durations are strings.
func configView(raw []byte) (map[string]json.RawMessage, error) {
	var rc rawConfig
	if err := json.Unmarshal(raw, &rc); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	c := rc.Config
	vals := map[string]any{
		"Env": c.Env, "Cmd": c.Cmd, "Entrypoint": c.Entrypoint, "WorkingDir": c.WorkingDir,
		"User": c.User, "ExposedPorts": setKeys(c.ExposedPorts), "Volumes": setKeys(c.Volumes),
		"Labels": c.Labels, "StopSignal": c.StopSignal, "Healthcheck": healthView(c.Healthcheck),
		"OnBuild": c.OnBuild, "Shell": c.Shell, "Author": rc.Author, "OS": rc.OS,
		"Architecture": rc.Architecture,
	}
	out := map[string]json.RawMessage{}
	for k, v := range vals {
		b, err := canonicalJSON(v)
		if err != nil {
			return nil, err
		}
		out[k] = b
	}
	return out, nil
}

func setKeys(m map[string]struct{}) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func healthView(h *rawHealthcheck) map[string]any {
	if h == nil {
		return nil
	}
	v := map[string]any{"Test": h.Test}
	for k, d := range map[string]time.Duration{
		"Interval": h.Interval, "Timeout": h.Timeout,
		"StartPeriod": h.StartPeriod, "StartInterval": h.StartInterval,
	} {
		if d != 0 {
			v[k] = d.String()
		}
	}
	if h.Retries != 0 {
		v["Retries"] = h.Retries
	}
	return v
}

// canonicalJSON encodes v with empty strings, slices and maps as null, and
// re-encodes JSON input so that equal values have equal bytes.
func canonicalJSON(v any) (json.RawMessage, error) {
	if rv := reflect.ValueOf(v); !rv.IsValid() || rv.IsZero() ||
		((rv.Kind() == reflect.Slice || rv.Kind() == reflect.Map) && rv.Len() == 0) {
		return json.RawMessage("null"), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var generic any
	if err := json.Unmarshal(b, &generic); err != nil {
		return nil, err
	}
	return json.Marshal(generic) // maps come out with sorted keys
}

// canonicalRaw canonicalizes JSON text from case.json.
func canonicalRaw(raw json.RawMessage) (json.RawMessage, error) {
	if len(raw) == 0 {
		return json.RawMessage("null"), nil
	}
	var generic any
	if err := json.Unmarshal(raw, &generic); err != nil {
		return nil, err
	}
	if s, ok := generic.(string); ok && s == "" {
		return json.RawMessage("null"), nil
	}
	if generic == nil {
		return json.RawMessage("null"), nil
	}
	return canonicalJSON(generic)
}

// diffSnapshots lists the differences between want (buildah, corrected to
// BuildKit) and got (imgbuild), paths sorted.
func diffSnapshots(want, got *snapshot) []string {
	var out []string
	for _, f := range configFields {
		if string(want.Config[f]) != string(got.Config[f]) {
			out = append(out, fmt.Sprintf("config %s: want %s, imgbuild has %s", f, want.Config[f], got.Config[f]))
		}
	}
	paths := map[string]bool{}
	for p := range want.Files {
		paths[p] = true
	}
	for p := range got.Files {
		paths[p] = true
	}
	for _, p := range sortedKeys(paths) {
		w, inWant := want.Files[p]
		g, inGot := got.Files[p]
		switch {
		case !inGot:
			out = append(out, fmt.Sprintf("%s: missing in imgbuild (want %s)", p, w))
		case !inWant:
			out = append(out, fmt.Sprintf("%s: only in imgbuild (%s)", p, g))
		case !w.equal(g):
			out = append(out, fmt.Sprintf("%s: want %s, imgbuild has %s", p, w, g))
		}
	}
	return out
}

func (e entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", e.Type)
	if e.Mode != "" {
		fmt.Fprintf(&b, " %s", e.Mode)
	}
	fmt.Fprintf(&b, " %d:%d", e.UID, e.GID)
	if e.Type == "file" {
		fmt.Fprintf(&b, " %dB sha256:%.12s", e.Size, e.SHA256)
	}
	if e.Link != "" {
		fmt.Fprintf(&b, " -> %s", e.Link)
	}
	for _, k := range sortedKeys(e.Xattrs) {
		fmt.Fprintf(&b, " %s=%q", k, e.Xattrs[k])
	}
	return b.String()
}
