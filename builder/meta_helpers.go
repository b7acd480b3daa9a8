package builder

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"golang.org/x/sys/unix"
)

// expose records EXPOSE ports as "port/proto", expanding ranges as BuildKit.
func (r *stageRun) expose(c *instructions.ExposeCommand) error {
	var ports []string
	for _, p := range c.Ports {
		words, err := r.lex.ProcessWords(p, shell.EnvsFromSlice(r.runEnv))
		if err != nil {
			return err
		}
		for _, w := range words {
			ps, err := parsePort(w)
			if err != nil {
				return err
			}
			ports = append(ports, ps...)
		}
	}
	if r.cfg.Config.ExposedPorts == nil {
		r.cfg.Config.ExposedPorts = map[string]struct{}{}
	}
	for _, p := range ports {
		r.cfg.Config.ExposedPorts[p] = struct{}{}
	}
	r.history(fmt.Sprintf("EXPOSE %v", ports), false)
	return nil
}

// parsePort parses [[ip:]hostPort:]containerPort[-end][/proto].
func parsePort(raw string) ([]string, error) {
	spec := raw
	if i := strings.LastIndex(spec, ":"); i >= 0 {
		spec = spec[i+1:]
	}
	portPart, proto, _ := strings.Cut(spec, "/")
	if proto == "" {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	switch proto {
	case "tcp", "udp", "sctp":
	default:
		return nil, fmt.Errorf("invalid port: %q: invalid proto: %s", raw, proto)
	}
	startS, endS, isRange := strings.Cut(portPart, "-")
	start, err := strconv.ParseUint(startS, 10, 16)
	end := start
	if err == nil && isRange {
		end, err = strconv.ParseUint(endS, 10, 16)
	}
	if err != nil || end < start {
		return nil, fmt.Errorf("invalid containerPort: %s", portPart)
	}
	var out []string
	for p := start; p <= end; p++ {
		out = append(out, fmt.Sprintf("%d/%s", p, proto))
	}
	return out, nil
}

// validateSignal accepts a signal number or a name like SIGTERM / TERM / SIGRTMIN+3.
func validateSignal(s string) error {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return fmt.Errorf("invalid signal: %s", s)
		}
		return nil
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if strings.HasPrefix(name, "RTMIN") || strings.HasPrefix(name, "RTMAX") {
		return nil
	}
	if unix.SignalNum("SIG"+name) == 0 {
		return fmt.Errorf("invalid signal: %s", s)
	}
	return nil
}

// mkdirAllInRoot creates dir (absolute, inside root) and its missing parents
// with mode 0755 owned by uid:gid, resolving symlinks inside root. It returns
// the created entries relative to root.
func mkdirAllInRoot(root, dir string, uid, gid int, epoch *time.Time) ([]string, error) {
	var created []string
	cur := "/"
	for _, part := range strings.Split(strings.Trim(path.Clean(dir), "/"), "/") {
		if part == "" {
			continue
		}
		cur = path.Join(cur, part)
		full, err := securejoin.SecureJoin(root, cur)
		if err != nil {
			return nil, err
		}
		fi, err := os.Lstat(full)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("mkdir %s: not a directory", cur)
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		err = os.Mkdir(full, 0o755)
		if errors.Is(err, os.ErrNotExist) {
			// cur went through a symlink to a path whose parents are
			// missing: create them inside the root first, as mkdir -p.
			parent, rerr := relInRoot(root, filepath.Dir(full))
			if rerr != nil {
				return nil, rerr
			}
			more, perr := mkdirAllInRoot(root, "/"+parent, uid, gid, epoch)
			if perr != nil {
				return nil, perr
			}
			created = append(created, more...)
			err = os.Mkdir(full, 0o755)
		}
		if err != nil {
			rel, _ := relInRoot(root, full)
			return nil, fmt.Errorf("mkdir /%s: %w", rel, errors.Unwrap(err))
		}
		if err := os.Chmod(full, 0o755); err != nil {
			return nil, err
		}
		if err := os.Lchown(full, uid, gid); err != nil && !(errors.Is(err, syscall.EPERM) && os.Geteuid() != 0 && uid == os.Geteuid()) {
			return nil, err
		}
		if epoch != nil {
			_ = os.Chtimes(full, *epoch, *epoch)
		}
		rel, err := relInRoot(root, full)
		if err != nil {
			return nil, err
		}
		created = append(created, rel)
	}
	return created, nil
}
