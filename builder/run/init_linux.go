package run

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	initEnv  = "_IMGBUILD_RUN_INIT" // set (to "1") only in the sandbox init's environment
	initArg0 = "imgbuild-run-init"
	initComm = "imgbuild-init"
	// The init's extra files: the config (read end) and the status (write end).
	configFd = 3
	statusFd = 4
)

// defaultPath is the PATH used to look Args[0] up when Env has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// initConfig is what Run sends the init through its config pipe.
type initConfig struct {
	Rootfs    string // real path on the host
	Args, Env []string
	Cwd       string
	UID, GID  int
	ExtraGIDs []int
	Hostname  string
	NetNone   bool
	Proc      string       // resolved mount targets, relative to Rootfs
	Sys       string       //
	Dev       string       //
	Files     []fileMount  // read-only bind mounts of the run's /etc files
	Scripts   []Script     // written into /dev/pipes
	Mounts    []extraMount // Spec.Mounts, mounted last
	Staging   string       // host directory for the file mounts' tmpfs
}

type fileMount struct {
	Source string // host path in the run directory
	Target string // resolved, relative to Rootfs
}

// initStatus is what the init reports through its status pipe before it
// exits: a setup error, or how the command ended.
type initStatus struct {
	Error  string `json:",omitempty"`
	Code   int
	Signal int `json:",omitempty"`
}

// Init runs the sandbox init when the process was started as one by an
// Executor; it then exits the process and never returns. Otherwise it
// returns false at once. Call it first thing in main (and in TestMain), as
// the package documentation shows.
func Init() bool {
	if os.Getenv(initEnv) != "1" {
		return false
	}
	// Capabilities and the bounding set are per thread: the setup and the
	// fork of the command stay on this one.
	runtime.LockOSThread()
	os.Exit(initMain())
	return true
}

func initMain() int {
	status := os.NewFile(statusFd, "status")
	unix.CloseOnExec(statusFd)
	report := func(st initStatus) int {
		if err := json.NewEncoder(status).Encode(st); err != nil {
			fmt.Fprintf(os.Stderr, "imgbuild sandbox: reporting status: %v\n", err)
		}
		if st.Error != "" {
			return 1
		}
		return 0
	}
	cfg, err := readConfig(os.NewFile(configFd, "config"))
	if err != nil {
		return report(initStatus{Error: err.Error()})
	}
	pid, err := setupAndStart(cfg)
	if err != nil {
		return report(initStatus{Error: err.Error()})
	}
	return report(reap(pid))
}

func readConfig(f *os.File) (*initConfig, error) {
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading init config: %w", err)
	}
	var cfg initConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("decoding init config: %w", err)
	}
	return &cfg, nil
}

// setupAndStart prepares the namespaces and the root, then starts the
// command and returns its pid.
func setupAndStart(cfg *initConfig) (int, error) {
	// Non-dumpable: the command cannot open /proc/1/{exe,root,environ,fd}.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("prctl: %w", err)
	}
	// What ps shows as pid 1 in the sandbox (instead of "exe").
	os.WriteFile("/proc/self/comm", []byte(initComm), 0)
	// Signals from inside the pid namespace reach the init only when it
	// handles them, and Go handles many (dying on SIGTERM, SIGABRT, ...):
	// catch and drop them instead. Not signal.Ignore: ignored signals stay
	// ignored in the command after exec. Handling every signal (real-time
	// ones included: a runner may ignore signal 32) also
	// resets the ones imgbuild was started with ignored (nohup, a background
	// job, a CI runner's SIGTSTP) to their defaults across exec;
	// signal.Ignored cannot tell, since Go leaves SIGTSTP and friends alone
	// until asked.
	for sig := syscall.Signal(1); sig <= 64; sig++ {
		if sig != syscall.SIGKILL && sig != syscall.SIGSTOP {
			signal.Notify(make(chan os.Signal, 1), sig)
		}
	}
	resetIgnoredSignals()
	lastCap, err := readLastCap()
	if err != nil {
		return 0, err
	}
	if cfg.NetNone {
		if err := loopbackUp(); err != nil {
			return 0, err
		}
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return 0, fmt.Errorf("sethostname: %w", err)
	}
	if err := setupRoot(cfg); err != nil {
		return 0, err
	}
	unix.Umask(0o022)
	if err := enterCwd(cfg.Cwd, cfg.UID, cfg.GID); err != nil {
		return 0, err
	}
	if err := closeOnExecFrom(3); err != nil {
		return 0, err
	}
	if err := dropCapabilities(lastCap); err != nil {
		return 0, err
	}
	return startCommand(cfg)
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing loopback up: %w", err)
	}
	return nil
}

// enterCwd creates the working directory (missing components owned by
// uid:gid) and changes to it. It runs after pivot_root, so the kernel
// resolves the path inside the root; Getwd fails for a directory outside
// it (e.g. reached through a /proc/self/fd link).
func enterCwd(cwd string, uid, gid int) error {
	p := "/"
	for _, name := range strings.Split(strings.TrimPrefix(cwd, "/"), "/") {
		if name == "" {
			continue
		}
		p = path.Join(p, name)
		if err := mkdirP(p, uid, gid, 0); err != nil {
			return fmt.Errorf("creating working directory %s: %w", cwd, err)
		}
	}
	if err := unix.Chdir(cwd); err != nil {
		return fmt.Errorf("working directory %s: %w", cwd, err)
	}
	if wd, err := unix.Getwd(); err != nil || !strings.HasPrefix(wd, "/") {
		return fmt.Errorf("working directory %s is outside the root filesystem", cwd)
	}
	return nil
}

// mkdirP creates directory p of the (pivoted) root unless it exists,
// owned by uid:gid; when p's parent is a symlink to a missing directory,
// that directory is created first, as mkdir -p does.
func mkdirP(p string, uid, gid, depth int) error {
	if depth > 40 {
		return unix.ELOOP
	}
	err := unix.Mkdir(p, 0o755)
	switch {
	case err == nil:
		return unix.Lchown(p, uid, gid)
	case errors.Is(err, unix.EEXIST):
		return nil
	case !errors.Is(err, unix.ENOENT):
		return err
	}
	parent := path.Dir(p)
	if parent == p {
		return err
	}
	if target, lerr := os.Readlink(parent); lerr == nil {
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(parent), target)
		}
		parent = path.Clean(target)
	}
	if err := mkdirP(parent, uid, gid, depth+1); err != nil {
		return err
	}
	return mkdirP(p, uid, gid, depth+1)
}

// closeOnExecFrom marks every fd from min on close-on-exec.
func closeOnExecFrom(min int) error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("listing fds: %w", err)
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= min {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

// startCommand forks and execs the command with its credentials, in a new
// session, with /dev/null as stdin and the init's stdout and stderr.
func startCommand(cfg *initConfig) (int, error) {
	argv0, err := lookPath(cfg.Args[0], cfg.Env)
	if err != nil {
		return 0, err
	}
	devnull, err := os.Open("/dev/null")
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	groups := make([]uint32, len(cfg.ExtraGIDs))
	for i, g := range cfg.ExtraGIDs {
		groups[i] = uint32(g)
	}
	attr := &syscall.ProcAttr{
		Env:   cfg.Env,
		Files: []uintptr{devnull.Fd(), 1, 2},
		Sys: &syscall.SysProcAttr{
			Setsid:     true,
			Credential: &syscall.Credential{Uid: uint32(cfg.UID), Gid: uint32(cfg.GID), Groups: groups},
		},
	}
	pid, err := syscall.ForkExec(argv0, cfg.Args, attr)
	if err != nil {
		return 0, fmt.Errorf("exec %s: %w", argv0, err)
	}
	return pid, nil
}

// lookPath finds file in the PATH of env (defaultPath when env has none),
// inside the root.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	pathEnv := defaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", file)
}

// reap waits for the command, reaping every other child that exits (the
// orphans of the pid namespace) on the way. When the init then exits, the
// kernel kills what is left in the namespace.
func reap(pid int) initStatus {
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return initStatus{Error: fmt.Sprintf("waiting for the command: %v", err)}
		}
		if wpid != pid {
			continue
		}
		if ws.Signaled() {
			return initStatus{Code: 128 + int(ws.Signal()), Signal: int(ws.Signal())}
		}
		if ws.Exited() {
			return initStatus{Code: ws.ExitStatus()}
		}
	}
}

// resetIgnoredSignals sets every signal still ignored (those Go does not
// manage, such as 32, used by C threading libraries) back to SIG_DFL, so
// that the command does not inherit the ignore. A zeroed kernel sigaction is
// SIG_DFL with no flags on every architecture; the handler is its first word.
func resetIgnoredSignals() {
	const sigIgn = 1
	for sig := uintptr(1); sig <= 64; sig++ {
		var old, dfl [4]uint64
		if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, sig, 0, uintptr(unsafe.Pointer(&old)), 8, 0, 0); e != 0 {
			continue
		}
		if old[0] == sigIgn {
			unix.RawSyscall6(unix.SYS_RT_SIGACTION, sig, uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
		}
	}
}
