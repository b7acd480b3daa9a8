package run

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultHostname is the hostname of a sandbox whose Spec.Hostname is empty.
// It is fixed (BuildKit uses "buildkitsandbox") so that builds do not depend
// on a random container id.
const DefaultHostname = "imgbuild"

// Network modes of Spec.Network.
const (
	NetworkHost = "host" // the host's network namespace (docker build's default)
	NetworkNone = "none" // a new network namespace with only lo, which is up
)

// Spec is one process to run in an isolated root filesystem.
type Spec struct {
	// Rootfs is the writable root filesystem directory (e.g. an overlay
	// mount). Required.
	Rootfs string
	// Args is argv, already shell-wrapped by the caller. Args[0] without a
	// slash is looked up in the PATH of Env inside the root (in the default
	// PATH when Env has none).
	Args []string
	// Env is the complete environment of the process: nothing of the
	// host's environment is added.
	Env []string
	// Cwd is the absolute working directory inside the root ("" is "/").
	// Missing directories are created, owned by UID:GID, and stay.
	Cwd       string
	UID, GID  int
	ExtraGIDs []int // supplementary groups; none when empty
	// Hostname of the UTS namespace; "" means DefaultHostname.
	Hostname string
	// Network is NetworkHost ("" is the same) or NetworkNone.
	Network string
	// Stdout and Stderr receive the process's output; nil discards it.
	// They are written through pipes, so the process never holds a host
	// file. Stdin is /dev/null.
	Stdout, Stderr io.Writer
	// Hosts and ResolvConf are the contents of /etc/hosts and
	// /etc/resolv.conf. Nil Hosts means localhost lines plus the hostname;
	// nil ResolvConf means a copy of the host's /etc/resolv.conf.
	Hosts, ResolvConf []byte
	// Memory is the memory limit in bytes, the sandbox init's memory
	// included; 0 is no limit, else at least MinMemory.
	Memory int64
	// Scripts are written, executable, into the sandbox's /dev/pipes (a
	// tmpfs, never part of the root filesystem): BuildKit runs a heredoc
	// with a #! line as /dev/pipes/NAME.
	Scripts []Script
	// PidsLimit is the maximum number of tasks (processes and threads),
	// the sandbox init's (about 5 threads) included; 0 is no limit, else
	// at least MinPidsLimit.
	PidsLimit int64
	// Mounts are mounted in the sandbox after its own mounts, in order
	// (RUN --mount). See Mount.
	Mounts []Mount
}

// Mount types of Mount.Type.
const (
	MountBind  = "bind"  // a host file or directory
	MountTmpfs = "tmpfs" // an empty tmpfs
	MountFile  = "file"  // a read-only file of given content, kept in memory
)

// Mount is one extra mount of Spec.Mounts. Its Target is resolved inside
// the root filesystem as the process would see it (symlinks in it cannot
// lead out of the root) and created without following symlinks when
// missing; the mount points Run creates are removed after the run unless
// the process replaced or filled them, and what is mounted never reaches
// the root filesystem's directory. A target that is, contains or lies in
// the target of another mount (the sandbox's own /proc, /sys, /dev and
// /etc files included) is an error.
type Mount struct {
	// Type is MountBind, MountTmpfs or MountFile.
	Type string
	// Target is the absolute path of the mount inside the root; not "/".
	Target string
	// Source is what a bind mount shows: with SourceRoot set, a path inside
	// SourceRoot resolved with chroot semantics, so that its symlinks
	// cannot lead out of SourceRoot even while something changes it; else
	// an absolute host path whose last component is not followed. The
	// target is a directory when the source is one, else a file.
	Source, SourceRoot string
	// ReadOnly makes a bind or tmpfs mount read-only; a file mount always
	// is. Every extra mount is nodev; tmpfs and file mounts are nosuid.
	ReadOnly bool
	// Size limits a tmpfs, in bytes; 0 is the kernel's default (half of
	// the memory).
	Size int64
	// Data is the content of a file mount: it lives in a tmpfs private to
	// the sandbox, never on disk. Mode (permission bits), UID and GID are
	// the file's.
	Data     []byte
	Mode     uint32
	UID, GID int
}

// Script is a file of Spec.Scripts.
type Script struct {
	Name string // a plain file name
	Data []byte
}

// Smallest non-zero limits of a Spec.
const (
	MinPidsLimit = 16
	MinMemory    = 6 << 20
)

// Executor runs Specs. Implementations are safe for concurrent use.
type Executor interface {
	Run(ctx context.Context, spec Spec) error
}

// Options configures New. The zero value is usable.
type Options struct {
	// Executable is the program re-executed as the sandbox init; it must
	// call Init at the start of main. "" means /proc/self/exe.
	Executable string
	// StateDir holds one private directory per running Run (the files
	// bind-mounted as /etc/hosts, /etc/resolv.conf and /etc/hostname).
	// "" means $TMPDIR/imgbuild-run. New removes directories left there by
	// runs of processes that died.
	StateDir string
}

// ExitError is the error of a process that exited with a non-zero status
// or was killed by a signal.
type ExitError struct {
	Code   int            // exit status; 128+signal when killed by a signal
	Signal syscall.Signal // the signal that killed the process, or 0
	// Reason says which limit of the Spec was hit, if any ("pids limit
	// 64 reached", "memory limit 67108864 bytes reached").
	Reason string
}

func (e *ExitError) Error() string {
	s := fmt.Sprintf("exit status %d", e.Code)
	if e.Signal != 0 {
		s = fmt.Sprintf("exit status %d (killed by signal: %v)", e.Code, e.Signal)
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// normalize checks spec and fills its defaults.
func normalize(spec *Spec) error {
	if spec.Rootfs == "" {
		return fmt.Errorf("no root filesystem")
	}
	root, err := filepath.Abs(spec.Rootfs)
	if err != nil {
		return fmt.Errorf("root filesystem %s: %w", spec.Rootfs, err)
	}
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return fmt.Errorf("root filesystem: %w", err)
	}
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return fmt.Errorf("root filesystem %s is not a directory", root)
	}
	spec.Rootfs = root
	if len(spec.Args) == 0 || spec.Args[0] == "" {
		return fmt.Errorf("no command")
	}
	if spec.Cwd == "" {
		spec.Cwd = "/"
	}
	if !path.IsAbs(spec.Cwd) {
		return fmt.Errorf("working directory %q is not absolute", spec.Cwd)
	}
	spec.Cwd = path.Clean(spec.Cwd)
	switch spec.Network {
	case "":
		spec.Network = NetworkHost
	case NetworkHost, NetworkNone:
	default:
		return fmt.Errorf("unknown network mode %q (want %q or %q)", spec.Network, NetworkHost, NetworkNone)
	}
	if spec.Hostname == "" {
		spec.Hostname = DefaultHostname
	}
	if len(spec.Hostname) > 64 || strings.ContainsAny(spec.Hostname, "/\x00 \t\n") {
		return fmt.Errorf("invalid hostname %q", spec.Hostname)
	}
	if spec.UID < 0 || spec.GID < 0 || spec.Memory < 0 || spec.PidsLimit < 0 {
		return fmt.Errorf("negative uid, gid or limit")
	}
	if spec.PidsLimit != 0 && spec.PidsLimit < MinPidsLimit {
		return fmt.Errorf("pids limit %d is below the minimum %d (the limit counts the sandbox init's threads)", spec.PidsLimit, MinPidsLimit)
	}
	if spec.Memory != 0 && spec.Memory < MinMemory {
		return fmt.Errorf("memory limit %d bytes is below the minimum %d (6 MiB, as Docker's)", spec.Memory, MinMemory)
	}
	for _, sc := range spec.Scripts {
		if sc.Name == "" || sc.Name == "." || sc.Name == ".." || strings.ContainsAny(sc.Name, "/\x00") {
			return fmt.Errorf("invalid script name %q", sc.Name)
		}
	}
	for _, g := range spec.ExtraGIDs {
		if g < 0 {
			return fmt.Errorf("negative supplementary group %d", g)
		}
	}
	for i := range spec.Mounts {
		if err := normalizeMount(&spec.Mounts[i]); err != nil {
			return err
		}
	}
	return nil
}

// normalizeMount checks m and cleans its paths.
func normalizeMount(m *Mount) error {
	if !path.IsAbs(m.Target) || path.Clean(m.Target) == "/" || strings.ContainsRune(m.Target, 0) {
		return fmt.Errorf("invalid mount target %q (want an absolute path other than /)", m.Target)
	}
	m.Target = path.Clean(m.Target)
	switch m.Type {
	case MountBind:
		if m.Source == "" || m.SourceRoot == "" && !filepath.IsAbs(m.Source) {
			return fmt.Errorf("mount at %s: bind source %q is not an absolute path", m.Target, m.Source)
		}
		if m.SourceRoot != "" && !filepath.IsAbs(m.SourceRoot) {
			return fmt.Errorf("mount at %s: source root %q is not an absolute path", m.Target, m.SourceRoot)
		}
	case MountTmpfs:
		if m.Size < 0 {
			return fmt.Errorf("mount at %s: negative tmpfs size", m.Target)
		}
	case MountFile:
		if m.UID < 0 || m.GID < 0 || m.Mode&^0o7777 != 0 {
			return fmt.Errorf("mount at %s: invalid file owner or mode", m.Target)
		}
	default:
		return fmt.Errorf("mount at %s: unknown mount type %q", m.Target, m.Type)
	}
	return nil
}

// defaultHosts is BuildKit's /etc/hosts for a sandbox named hostname.
func defaultHosts(hostname string) []byte {
	return []byte("127.0.0.1\tlocalhost " + hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}
