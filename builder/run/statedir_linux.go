package run

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	runDirPrefix = "run-"
	newDirPrefix = ".new-" // a run directory before its lock exists
	newDirMaxAge = 10 * time.Minute
	lockName     = "lock"    // flocked by the owning process while it runs
	cgroupsName  = "cgroups" // the cgroup directories of the run, one a line
)

// runDir is the private directory of one Run under the state directory. Its
// lock file is flocked for as long as the run lives, so that New can tell
// the directories of dead processes from those of concurrent runs.
type runDir struct {
	path string
	lock *os.File
}

// newRunDir creates and locks the directory under a temporary name, then
// renames it, so that every run-* directory has a lock file.
func newRunDir(stateDir string) (*runDir, error) {
	tmp, err := os.MkdirTemp(stateDir, newDirPrefix)
	if err != nil {
		return nil, fmt.Errorf("creating run directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(tmp, lockName), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err == nil {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	dir := filepath.Join(stateDir, runDirPrefix+strings.TrimPrefix(filepath.Base(tmp), newDirPrefix))
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("creating run directory: %w", err)
	}
	return &runDir{path: dir, lock: lock}, nil
}

// name is the base name of the directory, unique among live runs.
func (d *runDir) name() string { return filepath.Base(d.path) }

// writeFile writes a file of the run (0644: the sandbox's user reads it
// through a bind mount).
func (d *runDir) writeFile(name string, data []byte) (string, error) {
	p := filepath.Join(d.path, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", name, err)
	}
	// WriteFile's mode is subject to the umask.
	return p, os.Chmod(p, 0o644)
}

// recordCgroups notes the run's cgroups so that a later New can remove them
// if this process dies.
func (d *runDir) recordCgroups(dirs []string) error {
	_, err := d.writeFile(cgroupsName, []byte(strings.Join(dirs, "\n")))
	return err
}

func (d *runDir) remove() error {
	err := os.RemoveAll(d.path)
	d.lock.Close()
	if err != nil {
		return fmt.Errorf("removing run directory: %w", err)
	}
	return nil
}

// cleanStale removes the run directories in stateDir whose lock no live
// process holds, with the cgroups they record. It is best effort: what it
// cannot remove now (say, a cgroup whose last task is still exiting) is
// left for the next call.
func cleanStale(stateDir string) error {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return fmt.Errorf("reading state directory: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(stateDir, e.Name())
		switch {
		case !e.IsDir():
		case strings.HasPrefix(e.Name(), newDirPrefix):
			// Left between MkdirTemp and Rename: empty but for a lock.
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > newDirMaxAge {
				os.RemoveAll(p)
			}
		case strings.HasPrefix(e.Name(), runDirPrefix):
			cleanStaleDir(p)
		}
	}
	return nil
}

// cleanStaleDir removes one run directory unless its owner is alive, and
// reports whether it did.
func cleanStaleDir(dir string) bool {
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err == nil {
		defer lock.Close()
		if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			return false // a live run owns it
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false
	}
	if data, err := os.ReadFile(filepath.Join(dir, cgroupsName)); err == nil {
		for _, cg := range strings.Fields(string(data)) {
			if !strings.HasPrefix(cg, cgroupRoot+"/") {
				continue // not ours to remove
			}
			if removeCgroupDir(cg) != nil {
				return false
			}
		}
	}
	return os.RemoveAll(dir) == nil
}
