package builder_test

// Applying a case's documented buildah-vs-BuildKit differences to buildah's
// snapshot. Each difference states buildah's value, which is checked, so a
// stale entry (buildah changed, or the case changed) fails the test instead
// of hiding a real difference.

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"testing"
)

// toBuildKit rewrites s (buildah's snapshot) into the BuildKit reference.
func toBuildKit(s *snapshot, c diffCase) error {
	for _, d := range c.Config {
		if err := applyConfigDifference(s, d); err != nil {
			return fmt.Errorf("config difference %s: %w", d.Field, err)
		}
	}
	for _, d := range c.Files {
		if err := applyFileDifference(s, d); err != nil {
			return fmt.Errorf("file difference %s: %w", d.Path, err)
		}
	}
	return nil
}

func applyConfigDifference(s *snapshot, d configDifference) error {
	have, ok := s.Config[d.Field]
	if !ok {
		return fmt.Errorf("unknown field (known: %s)", strings.Join(configFields, ", "))
	}
	want, err := canonicalRaw(d.Buildah)
	if err != nil {
		return fmt.Errorf("buildah value: %w", err)
	}
	if string(want) != string(have) {
		return fmt.Errorf("buildah has %s, case.json says %s: update case.json", have, want)
	}
	bk, err := canonicalRaw(d.BuildKit)
	if err != nil {
		return fmt.Errorf("buildkit value: %w", err)
	}
	s.Config[d.Field] = bk
	return nil
}

func applyFileDifference(s *snapshot, d fileDifference) error {
	if p, ok := strings.CutSuffix(d.Path, "/**"); ok {
		return applyTreeDifference(s, p, d)
	}
	p := path.Clean("/" + d.Path)
	have, exists := s.Files[p]
	if isNull(d.Buildah) {
		if exists {
			return fmt.Errorf("case.json says buildah lacks it, buildah has %s", have)
		}
		var e entry
		if err := strictUnmarshal(d.BuildKit, &e); err != nil || e.Type == "" {
			return fmt.Errorf("buildkit entry must be a full entry: %v", err)
		}
		s.Files[p] = e
		return nil
	}
	if !exists {
		return fmt.Errorf("buildah lacks it, case.json says it has %s", d.Buildah)
	}
	if isNull(d.BuildKit) {
		if err := checkPatch(have, d.Buildah); err != nil {
			return err
		}
		delete(s.Files, p)
		return nil
	}
	e, err := patchEntry(have, d.Buildah, d.BuildKit)
	if err != nil {
		return err
	}
	s.Files[p] = e
	return nil
}

// applyTreeDifference patches dir and every path below it.
func applyTreeDifference(s *snapshot, dir string, d fileDifference) error {
	dir = path.Clean("/" + dir)
	if isNull(d.Buildah) || isNull(d.BuildKit) {
		return fmt.Errorf("a /** difference patches fields; both sides must be objects")
	}
	n := 0
	for p, e := range s.Files {
		if p != dir && !strings.HasPrefix(p, dir+"/") {
			continue
		}
		ne, err := patchEntry(e, d.Buildah, d.BuildKit)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		s.Files[p] = ne
		n++
	}
	if n == 0 {
		return fmt.Errorf("no path at or below %s in buildah's image", dir)
	}
	return nil
}

// patchEntry checks that e has every field of buildahPatch and sets the
// fields of buildkitPatch.
func patchEntry(e entry, buildahPatch, buildkitPatch json.RawMessage) (entry, error) {
	if err := checkPatch(e, buildahPatch); err != nil {
		return e, err
	}
	fields, err := entryFields(e)
	if err != nil {
		return e, err
	}
	var set map[string]json.RawMessage
	if err := json.Unmarshal(buildkitPatch, &set); err != nil {
		return e, fmt.Errorf("buildkit patch: %w", err)
	}
	for k, v := range set {
		fields[k] = v
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return e, err
	}
	var out entry
	if err := strictUnmarshal(b, &out); err != nil {
		return e, fmt.Errorf("buildkit patch: %w", err)
	}
	return out, nil
}

func checkPatch(e entry, patch json.RawMessage) error {
	fields, err := entryFields(e)
	if err != nil {
		return err
	}
	var want map[string]json.RawMessage
	if err := json.Unmarshal(patch, &want); err != nil {
		return fmt.Errorf("buildah patch: %w", err)
	}
	for k, v := range want {
		wv, err := canonicalRaw(v)
		if err != nil {
			return err
		}
		hv, err := canonicalRaw(fields[k])
		if err != nil {
			return err
		}
		if string(wv) != string(hv) {
			return fmt.Errorf("buildah has %s=%s, case.json says %s: update case.json", k, hv, wv)
		}
	}
	return nil
}

func entryFields(e entry) (map[string]json.RawMessage, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	return m, json.Unmarshal(b, &m)
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}

// TestDiffExpectations checks how case.json differences rewrite a buildah
// snapshot, and that stale ones are rejected.
func TestDiffExpectations(t *testing.T) {
	base := func() *snapshot {
		return &snapshot{
			Files: map[string]entry{
				"/d":   {Type: "dir", Mode: "0755"},
				"/d/f": {Type: "file", Mode: "0644", UID: 1000, GID: 1000, Size: 1, SHA256: "ab"},
				"/x":   {Type: "file", Mode: "0644", Size: 1, SHA256: "cd"},
			},
			Config: map[string]json.RawMessage{"WorkingDir": json.RawMessage("null"), "Env": json.RawMessage(`["A=1"]`)},
		}
	}
	for _, tc := range []struct {
		name    string
		c       diffCase
		wantErr string
		check   func(*snapshot) bool
	}{
		{
			name:  "config value replaced",
			c:     diffCase{Config: []configDifference{{Field: "WorkingDir", Buildah: nil, BuildKit: json.RawMessage(`"/"`)}}},
			check: func(s *snapshot) bool { return string(s.Config["WorkingDir"]) == `"/"` },
		},
		{
			name:    "stale config value",
			c:       diffCase{Config: []configDifference{{Field: "Env", Buildah: json.RawMessage(`["A=2"]`), BuildKit: json.RawMessage(`[]`)}}},
			wantErr: "update case.json",
		},
		{
			name:    "unknown config field",
			c:       diffCase{Config: []configDifference{{Field: "Nope"}}},
			wantErr: "unknown field",
		},
		{
			name:  "file patched",
			c:     diffCase{Files: []fileDifference{{Path: "/d", Buildah: json.RawMessage(`{"mode":"0755"}`), BuildKit: json.RawMessage(`{"mode":"0600"}`)}}},
			check: func(s *snapshot) bool { return s.Files["/d"].Mode == "0600" && s.Files["/d"].Type == "dir" },
		},
		{
			name:    "stale file patch",
			c:       diffCase{Files: []fileDifference{{Path: "/d", Buildah: json.RawMessage(`{"mode":"0700"}`), BuildKit: json.RawMessage(`{"mode":"0600"}`)}}},
			wantErr: "update case.json",
		},
		{
			name: "tree patched",
			c:    diffCase{Files: []fileDifference{{Path: "/d/**", Buildah: json.RawMessage(`{}`), BuildKit: json.RawMessage(`{"uid":7,"gid":8}`)}}},
			check: func(s *snapshot) bool {
				return s.Files["/d"].UID == 7 && s.Files["/d/f"].GID == 8 && s.Files["/x"].UID == 0
			},
		},
		{
			name:    "tree patch matching nothing",
			c:       diffCase{Files: []fileDifference{{Path: "/none/**", Buildah: json.RawMessage(`{}`), BuildKit: json.RawMessage(`{"uid":1}`)}}},
			wantErr: "no path",
		},
		{
			name:  "path added",
			c:     diffCase{Files: []fileDifference{{Path: "/new", BuildKit: json.RawMessage(`{"type":"dir","mode":"0755","uid":1,"gid":1}`)}}},
			check: func(s *snapshot) bool { return s.Files["/new"].equal(entry{Type: "dir", Mode: "0755", UID: 1, GID: 1}) },
		},
		{
			name:    "path said absent but present",
			c:       diffCase{Files: []fileDifference{{Path: "/x", BuildKit: json.RawMessage(`{"type":"dir"}`)}}},
			wantErr: "buildah has",
		},
		{
			name:  "path removed",
			c:     diffCase{Files: []fileDifference{{Path: "/x", Buildah: json.RawMessage(`{"type":"file"}`)}}},
			check: func(s *snapshot) bool { _, ok := s.Files["/x"]; return !ok },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			err := toBuildKit(s, tc.c)
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case !tc.check(s):
				t.Errorf("unexpected result: %+v %s", s.Files, s.Config)
			}
		})
	}
}
