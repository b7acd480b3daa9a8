package run

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// executor is the Linux Executor.
type executor struct {
	exe        string
	stateDir   string
	cgroupRoot string
}

// New returns an Executor. It creates opts.StateDir (mode 0700) if needed
// and removes the run directories and cgroups that runs of dead processes
// left there.
func New(opts Options) (Executor, error) {
	e := &executor{exe: opts.Executable, stateDir: opts.StateDir, cgroupRoot: cgroupRoot}
	if e.exe == "" {
		e.exe = "/proc/self/exe"
	}
	if e.stateDir == "" {
		e.stateDir = filepath.Join(os.TempDir(), "imgbuild-run")
	}
	if err := os.MkdirAll(e.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("run: state directory: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(e.stateDir, &st); err != nil {
		return nil, fmt.Errorf("run: state directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return nil, fmt.Errorf("run: state directory %s must be a directory owned by uid %d and writable only by it", e.stateDir, os.Geteuid())
	}
	if err := cleanStale(e.stateDir); err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	return e, nil
}

// sandboxTargets are the mount points Run prepares in the root.
func sandboxTargets() []mountTarget {
	return []mountTarget{
		{Path: "/proc", Dir: true},
		{Path: "/sys", Dir: true},
		{Path: "/dev", Dir: true},
		{Path: "/etc/hosts"},
		{Path: "/etc/resolv.conf"},
		{Path: "/etc/hostname"},
	}
}

// Run runs spec in a sandbox and returns when the process and every process
// it started are gone: nil when it exited with status 0, an *ExitError when
// it failed, ctx.Err() when ctx was cancelled (the whole process tree is
// then killed), other errors when the sandbox could not be set up.
func (e *executor) Run(ctx context.Context, spec Spec) (err error) {
	if err := normalize(&spec); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("run: the RUN sandbox needs root (a rootless sandbox is not implemented)")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rd, err := newRunDir(e.stateDir)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer func() { err = errors.Join(err, rd.remove()) }()
	files, err := writeEtcFiles(rd, &spec)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	root, err := os.OpenFile(spec.Rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer root.Close()
	extra, err := extraTargets(spec.Mounts)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	targets, stubs, err := prepareTargets(root, spec.Rootfs, append(sandboxTargets(), extra...))
	defer func() {
		_, cerr := stubs.cleanup(root)
		err = errors.Join(err, cerr)
	}()
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	cg, err := newCgroup(e.cgroupRoot, rd.name(), limits{memory: spec.Memory, pids: spec.PidsLimit})
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if cg != nil {
		defer func() { err = errors.Join(err, cg.remove()) }()
		if err := rd.recordCgroups(cg.dirs()); err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	cfg := &initConfig{
		Rootfs: spec.Rootfs, Args: spec.Args, Env: spec.Env, Cwd: spec.Cwd,
		UID: spec.UID, GID: spec.GID, ExtraGIDs: spec.ExtraGIDs,
		Hostname: spec.Hostname, NetNone: spec.Network == NetworkNone,
		Proc: targets[0].Rel, Sys: targets[1].Rel, Dev: targets[2].Rel,
		Scripts: spec.Scripts,
	}
	if cfg.Mounts, cfg.Staging, err = extraMounts(rd, spec.Mounts, targets); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	for i, src := range files {
		cfg.Files = append(cfg.Files, fileMount{Source: src, Target: targets[3+i].Rel})
	}
	return e.runInit(ctx, &spec, cfg, cg)
}

// writeEtcFiles writes the run's hosts, resolv.conf and hostname (in the
// order of sandboxTargets) and returns their paths.
func writeEtcFiles(rd *runDir, spec *Spec) ([]string, error) {
	hosts := spec.Hosts
	if hosts == nil {
		hosts = defaultHosts(spec.Hostname)
	}
	resolv := spec.ResolvConf
	if resolv == nil {
		var err error
		resolv, err = os.ReadFile("/etc/resolv.conf")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("reading the host's resolv.conf: %w", err)
		}
	}
	var paths []string
	for _, f := range []struct {
		name string
		data []byte
	}{{"hosts", hosts}, {"resolv.conf", resolv}, {"hostname", []byte(spec.Hostname + "\n")}} {
		p, err := rd.writeFile(f.name, f.data)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// runInit starts the init, hands it cfg and waits for it.
func (e *executor) runInit(ctx context.Context, spec *Spec, cfg *initConfig, cg *cgroup) error {
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer cfgW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		return fmt.Errorf("run: %w", err)
	}
	defer statusR.Close()
	cmd := e.initCommand(spec, cfgR, statusW)
	// The parent-death signal fires when the thread that started the child
	// exits: keep this goroutine on its thread until the init is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = cmd.Start()
	cfgR.Close()
	statusW.Close()
	if err != nil {
		return fmt.Errorf("run: starting the sandbox init: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	defer stop()
	if err := handOver(cmd.Process.Pid, cg, cfgW, cfg); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("run: %w", err)
	}
	waitErr := cmd.Wait()
	var st initStatus
	decErr := json.NewDecoder(statusR).Decode(&st)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return result(st, decErr, waitErr, cg)
}

func (e *executor) initCommand(spec *Spec, cfgR, statusW *os.File) *exec.Cmd {
	cmd := exec.Command(e.exe)
	cmd.Args = []string{initArg0}
	cmd.Env = []string{initEnv + "=1"}
	cmd.Stdout, cmd.Stderr = pipeWriter{spec.Stdout}, pipeWriter{spec.Stderr}
	if spec.Stdout == nil {
		cmd.Stdout = pipeWriter{io.Discard}
	}
	if spec.Stderr == nil {
		cmd.Stderr = pipeWriter{io.Discard}
	}
	if spec.Stdout == spec.Stderr {
		cmd.Stderr = cmd.Stdout // one pipe, no concurrent writes
	}
	cmd.ExtraFiles = []*os.File{cfgR, statusW} // fds 3 and 4
	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS)
	if spec.Network == NetworkNone {
		flags |= unix.CLONE_NEWNET
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	// Once the init is reaped its pid namespace is empty, so the output
	// pipes close; the delay only guards against the unexpected.
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// pipeWriter hides an *os.File from exec.Cmd, which then copies through a
// pipe instead of passing the file itself into the sandbox.
type pipeWriter struct{ w io.Writer }

func (p pipeWriter) Write(b []byte) (int, error) { return p.w.Write(b) }

// handOver puts the init into its cgroup, then sends it its config; the
// init waits for the config before it does anything.
func handOver(pid int, cg *cgroup, cfgW *os.File, cfg *initConfig) error {
	if cg != nil {
		if err := cg.attach(pid); err != nil {
			return err
		}
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if _, err := cfgW.Write(data); err != nil && !errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("sending the init config: %w", err)
	}
	return cfgW.Close()
}

// result turns the init's report into Run's error.
func result(st initStatus, decErr, waitErr error, cg *cgroup) error {
	reason := ""
	if cg != nil {
		reason = cg.reason()
	}
	var exitErr *exec.ExitError
	switch {
	case decErr != nil: // the init died without reporting
		msg := "run: the sandbox init exited without reporting"
		if waitErr != nil {
			msg = fmt.Sprintf("run: the sandbox init died: %v", waitErr)
		}
		if reason != "" {
			msg += " (" + reason + ")"
		} else if waitErr == nil || errors.As(waitErr, &exitErr) && exitErr.Exited() {
			msg += " (does the program call run.Init first thing in main?)"
		}
		return errors.New(msg)
	case st.Error != "":
		return fmt.Errorf("run: sandbox: %s", st.Error)
	case st.Code != 0 || st.Signal != 0:
		return &ExitError{Code: st.Code, Signal: syscall.Signal(st.Signal), Reason: reason}
	case waitErr != nil && !errors.As(waitErr, &exitErr):
		return fmt.Errorf("run: copying the output: %w", waitErr)
	}
	return nil
}
