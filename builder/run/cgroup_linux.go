package run

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where the cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// cgroupParentV2 is the cgroup v2 directory (below the root of the
// process's cgroup namespace) holding one child cgroup per limited run.
const cgroupParentV2 = "imgbuild"

// cgroup is the cgroup of one run with limits: one directory on cgroup v2,
// one per controller (memory, pids) on cgroup v1.
type cgroup struct {
	v2     bool
	memory string // directory with the memory controller, or ""
	pids   string // directory with the pids controller, or ""
	limits limits
}

type limits struct{ memory, pids int64 }

func (l limits) controllers() []string {
	var c []string
	if l.memory > 0 {
		c = append(c, "memory")
	}
	if l.pids > 0 {
		c = append(c, "pids")
	}
	return c
}

// newCgroup creates the cgroup named name for the limits below root
// (normally cgroupRoot), or returns nil when there are no limits.
func newCgroup(root, name string, l limits) (*cgroup, error) {
	if len(l.controllers()) == 0 {
		return nil, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return nil, fmt.Errorf("memory and pids limits need cgroups: %w", err)
	}
	var cg *cgroup
	var err error
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		cg, err = newCgroupV2(root, name, l)
	} else {
		cg, err = newCgroupV1(root, name, l)
	}
	if err != nil {
		return nil, fmt.Errorf("memory and pids limits: %w", err)
	}
	return cg, nil
}

func newCgroupV2(root, name string, l limits) (*cgroup, error) {
	parent := filepath.Join(root, cgroupParentV2)
	if err := enableControllers(root, l.controllers()); err != nil {
		return nil, err
	}
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating cgroup: %w", err)
	}
	if err := enableControllers(parent, l.controllers()); err != nil {
		return nil, err
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating cgroup: %w", err)
	}
	cg := &cgroup{v2: true, limits: l}
	files := map[string]int64{}
	if l.memory > 0 {
		cg.memory = dir
		files["memory.max"] = l.memory
		files["memory.swap.max"] = 0
	}
	if l.pids > 0 {
		cg.pids = dir
		files["pids.max"] = l.pids
	}
	for f, v := range files {
		err := writeCgroupFile(filepath.Join(dir, f), strconv.FormatInt(v, 10))
		if err != nil && !(f == "memory.swap.max" && errors.Is(err, os.ErrNotExist)) {
			cg.remove()
			return nil, err
		}
	}
	return cg, nil
}

// enableControllers makes sure dir hands the controllers to its children.
func enableControllers(dir string, ctrls []string) error {
	have, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return fmt.Errorf("cgroup v2 at %s: %w", dir, err)
	}
	avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup v2 at %s: %w", dir, err)
	}
	for _, c := range ctrls {
		if hasWord(have, c) {
			continue
		}
		if !hasWord(avail, c) {
			return fmt.Errorf("cgroup v2 controller %q is not available in %s", c, dir)
		}
		err := writeCgroupFile(filepath.Join(dir, "cgroup.subtree_control"), "+"+c)
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("enabling cgroup v2 controller %q in %s: %w (the cgroup holds processes; run imgbuild in a cgroup of its own, e.g. as BuildKit's entrypoint moves its processes to /init)", c, dir, err)
		}
		if err != nil {
			return fmt.Errorf("enabling cgroup v2 controller %q in %s: %w", c, dir, err)
		}
	}
	return nil
}

func hasWord(b []byte, w string) bool {
	for _, f := range strings.Fields(string(b)) {
		if f == w {
			return true
		}
	}
	return false
}

// newCgroupV1 creates the run's cgroups below the process's own cgroup in
// the memory and pids hierarchies.
func newCgroupV1(root, name string, l limits) (*cgroup, error) {
	own, err := ownCgroupsV1()
	if err != nil {
		return nil, err
	}
	cg := &cgroup{limits: l}
	for _, c := range l.controllers() {
		base := filepath.Join(root, c)
		var st unix.Statfs_t
		if err := unix.Statfs(base, &st); err != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			return nil, fmt.Errorf("no cgroup v2 at %s and no cgroup v1 %s hierarchy at %s", root, c, base)
		}
		dir := filepath.Join(base, own[c], "imgbuild-"+name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			cg.remove()
			return nil, fmt.Errorf("creating cgroup: %w", err)
		}
		if c == "memory" {
			cg.memory = dir
			err = writeCgroupFile(filepath.Join(dir, "memory.limit_in_bytes"), strconv.FormatInt(l.memory, 10))
			if err == nil {
				err = writeCgroupFile(filepath.Join(dir, "memory.memsw.limit_in_bytes"), strconv.FormatInt(l.memory, 10))
				if errors.Is(err, os.ErrNotExist) { // no swap accounting
					err = nil
				}
			}
		} else {
			cg.pids = dir
			err = writeCgroupFile(filepath.Join(dir, "pids.max"), strconv.FormatInt(l.pids, 10))
		}
		if err != nil {
			cg.remove()
			return nil, err
		}
	}
	return cg, nil
}

// ownCgroupsV1 maps v1 controllers to the process's cgroup paths.
func ownCgroupsV1() (map[string]string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	own := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			own[c] = filepath.Clean("/" + f[2])
		}
	}
	return own, nil
}

func writeCgroupFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %q to %s: %w", value, path, err)
	}
	return nil
}

// dirs lists the cgroup's directories.
func (c *cgroup) dirs() []string {
	var d []string
	if c.memory != "" {
		d = append(d, c.memory)
	}
	if c.pids != "" && c.pids != c.memory {
		d = append(d, c.pids)
	}
	return d
}

// attach moves the process pid into the cgroup.
func (c *cgroup) attach(pid int) error {
	for _, d := range c.dirs() {
		if err := writeCgroupFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("joining cgroup: %w", err)
		}
	}
	return nil
}

// reason says which limit was hit, from the cgroup's event counters.
func (c *cgroup) reason() string {
	var r []string
	if c.pids != "" && eventCount(filepath.Join(c.pids, "pids.events"), "max") > 0 {
		r = append(r, fmt.Sprintf("pids limit %d reached", c.limits.pids))
	}
	if c.memory != "" {
		f := "memory.events"
		if !c.v2 {
			f = "memory.oom_control"
		}
		if eventCount(filepath.Join(c.memory, f), "oom_kill") > 0 {
			r = append(r, fmt.Sprintf("memory limit %d bytes reached (OOM kill)", c.limits.memory))
		}
	}
	return strings.Join(r, ", ")
}

func eventCount(path, key string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == key {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// remove removes the cgroup's directories; its processes must be dead.
func (c *cgroup) remove() error {
	var errs []error
	for _, d := range c.dirs() {
		errs = append(errs, removeCgroupDir(d))
	}
	return errors.Join(errs...)
}

// removeCgroupDir removes one (empty) cgroup directory, retrying while the
// kernel finishes the exit of its last tasks.
func removeCgroupDir(dir string) error {
	if !strings.HasPrefix(dir, cgroupRoot+"/") {
		return fmt.Errorf("refusing to remove %s: not a cgroup", dir)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := unix.Rmdir(dir)
		switch {
		case err == nil || errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && time.Now().Before(deadline):
			time.Sleep(10 * time.Millisecond)
		default:
			return fmt.Errorf("removing cgroup %s: %w", dir, err)
		}
	}
}
