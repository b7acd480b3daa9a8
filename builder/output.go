package builder

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/imgbuild/imgbuild/registry"
)

// Output types accepted by ParseOutput.
const (
	OutputOCI      = "oci"      // OCI image layout directory
	OutputDocker   = "docker"   // docker-archive file (docker load, podman load)
	OutputTar      = "tar"      // flattened filesystem as a tar file
	OutputLocal    = "local"    // flattened filesystem in a directory
	OutputRegistry = "registry" // push to every tag
)

// outputKeys returns the keys an output type accepts besides "type", and
// false for an unknown type.
func outputKeys(typ string) (map[string]bool, bool) {
	switch typ {
	case OutputOCI:
		return map[string]bool{"dest": true, "name": true, "tar": true}, true
	case OutputDocker:
		return map[string]bool{"dest": true, "name": true}, true
	case OutputTar, OutputLocal:
		return map[string]bool{"dest": true}, true
	case OutputRegistry:
		return map[string]bool{"name": true}, true
	}
	return nil, false
}

// ParseOutput parses one -o/--output value. The long form is a CSV list of
// key=value pairs, as in `docker build`:
//
//	type=oci,dest=DIR        OCI image layout directory
//	type=docker,dest=FILE    docker-archive ("-" is stdout)
//	type=tar,dest=FILE       flattened filesystem as tar ("-" is stdout)
//	type=local,dest=DIR      flattened filesystem in a directory
//	type=registry            push to every tag
//
// type=oci, type=docker and type=registry accept name=REF (quote the whole
// pair to give several: "name=a:1,b:2") to use instead of the build's tags.
// type=oci accepts tar=false (the only form written: a directory).
// The shorthands "-o DIR" (type=local,dest=DIR) and "-o -" (type=tar to
// stdout) follow docker. An unknown type or key is an error.
func ParseOutput(s string) (Output, error) {
	if s == "" {
		return Output{}, errors.New("empty output")
	}
	if s == "-" {
		return Output{Type: OutputTar, Dest: "-"}, nil
	}
	if !strings.Contains(s, "=") {
		return Output{Type: OutputLocal, Dest: s}, nil
	}
	r := csv.NewReader(strings.NewReader(s))
	r.TrimLeadingSpace = true
	fields, err := r.Read()
	if err != nil {
		return Output{}, fmt.Errorf("output %q: %w", s, err)
	}
	var out Output
	kv := make(map[string]string, len(fields))
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok || k == "" {
			return Output{}, fmt.Errorf("output %q: %q is not key=value", s, f)
		}
		if _, dup := kv[k]; dup {
			return Output{}, fmt.Errorf("output %q: %s given twice", s, k)
		}
		kv[k] = v
	}
	out.Type = kv["type"]
	delete(kv, "type")
	if out.Type == "" {
		return Output{}, fmt.Errorf("output %q: type is required", s)
	}
	keys, ok := outputKeys(out.Type)
	if !ok {
		return Output{}, fmt.Errorf("output %q: unknown type %q (want oci, docker, tar, local or registry)", s, out.Type)
	}
	for k, v := range kv {
		if !keys[k] {
			return Output{}, fmt.Errorf("output %q: unknown key %q for type=%s", s, k, out.Type)
		}
		if k == "dest" {
			out.Dest = v
			continue
		}
		if out.Attrs == nil {
			out.Attrs = map[string]string{}
		}
		out.Attrs[k] = v
	}
	if err := checkOutput(out); err != nil {
		return Output{}, fmt.Errorf("output %q: %w", s, err)
	}
	return out, nil
}

// checkOutput validates the attributes of a parsed output.
func checkOutput(out Output) error {
	switch out.Type {
	case OutputOCI, OutputDocker, OutputTar, OutputLocal:
		if out.Dest == "" {
			return fmt.Errorf("type=%s needs dest=", out.Type)
		}
		if out.Dest == "-" && (out.Type == OutputOCI || out.Type == OutputLocal) {
			return fmt.Errorf("type=%s writes a directory, not stdout", out.Type)
		}
	}
	if t, ok := out.Attrs["tar"]; ok && t != "false" {
		return fmt.Errorf("tar=%s: only tar=false (a directory) is supported", t)
	}
	if _, ok := out.Attrs["name"]; ok {
		names := splitNames(out.Attrs["name"])
		if len(names) == 0 {
			return errors.New("name= is empty")
		}
		for _, n := range names {
			if _, err := name.NewTag(n); err != nil {
				return fmt.Errorf("name %q: %w", n, err)
			}
		}
	}
	return nil
}

// splitNames splits a name= attribute into references.
func splitNames(s string) []string {
	var names []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

// ExportOptions configure Export. The zero value pushes with the default
// registry options and fails for outputs to stdout.
type ExportOptions struct {
	// Registry configures pushes (type=registry).
	Registry registry.Options
	// Stdout receives outputs whose Dest is "-".
	Stdout io.Writer
}

// Export writes res to every output, in order. Outputs are checked before
// anything is written; the first failing output stops the export.
func Export(ctx context.Context, res *Result, outs []Output, opts ExportOptions) error {
	if res == nil || res.Image == nil {
		return errors.New("export: no image")
	}
	for _, out := range outs {
		if err := checkExport(res, out, opts); err != nil {
			return err
		}
	}
	for _, out := range outs {
		if err := exportOne(ctx, res.Image, outputNames(res, out), out, opts); err != nil {
			return fmt.Errorf("exporting type=%s%s: %w", out.Type, destSuffix(out), err)
		}
	}
	return nil
}

// checkExport reports the errors of one output that need no I/O to find.
func checkExport(res *Result, out Output, opts ExportOptions) error {
	keys, ok := outputKeys(out.Type)
	if !ok {
		return fmt.Errorf("export: unknown output type %q", out.Type)
	}
	for k := range out.Attrs {
		if !keys[k] {
			return fmt.Errorf("export type=%s: unknown key %q", out.Type, k)
		}
	}
	if err := checkOutput(out); err != nil {
		return fmt.Errorf("export type=%s: %w", out.Type, err)
	}
	if out.Type == OutputRegistry && len(outputNames(res, out)) == 0 {
		return errors.New("export type=registry: no tag to push to (give -t or name=)")
	}
	if out.Dest == "-" && opts.Stdout == nil {
		return fmt.Errorf("export type=%s: no stdout to write to", out.Type)
	}
	return nil
}

// outputNames returns the references an output names the image by.
func outputNames(res *Result, out Output) []string {
	if n, ok := out.Attrs["name"]; ok {
		return splitNames(n)
	}
	return res.Tags
}

func destSuffix(out Output) string {
	if out.Dest == "" {
		return ""
	}
	return " dest=" + out.Dest
}

func exportOne(ctx context.Context, img v1.Image, tags []string, out Output, opts ExportOptions) error {
	tagged := []registry.Tagged{{Image: img, Tags: tags}}
	switch out.Type {
	case OutputOCI:
		return registry.WriteOCILayout(ctx, out.Dest, tagged)
	case OutputLocal:
		return registry.ExtractFlat(ctx, out.Dest, img)
	case OutputRegistry:
		return registry.Push(ctx, img, tags, opts.Registry)
	case OutputDocker:
		return writeDest(out.Dest, opts.Stdout, func(w io.Writer) error {
			return registry.WriteDockerArchive(ctx, w, tagged)
		})
	case OutputTar:
		return writeDest(out.Dest, opts.Stdout, func(w io.Writer) error {
			return registry.WriteFlatTar(ctx, w, img)
		})
	}
	return fmt.Errorf("unknown output type %q", out.Type)
}

// writeDest runs write into dest: stdout for "-", the existing file for a
// non-regular file (a FIFO, /dev/stdout), otherwise a temporary file beside
// dest renamed over it once complete and synced, so a failed export never
// leaves a truncated file behind.
func writeDest(dest string, stdout io.Writer, write func(io.Writer) error) error {
	if dest == "-" {
		return write(stdout)
	}
	if fi, err := os.Stat(dest); err == nil && !fi.Mode().IsRegular() {
		if fi.IsDir() {
			return fmt.Errorf("%s is a directory", dest)
		}
		f, err := os.OpenFile(dest, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if err := write(f); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	dir, base := filepath.Split(dest)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := write(tmp); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return err
	}
	ok = true
	return nil
}
