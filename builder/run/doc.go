// Package run is the RUN sandbox: it runs one process in an isolated root
// filesystem, the way `docker build` (BuildKit with runc) runs a RUN step.
//
// # The re-exec init
//
// The sandbox re-executes the current program (Options.Executable, by
// default /proc/self/exe) into new mount, pid, ipc and uts namespaces (and a
// new network namespace for Network "none"). That child is the sandbox init:
// pid 1 of the new pid namespace. It mounts the sandbox's /proc, /dev, /sys
// and /etc files, pivots into the root filesystem, drops capabilities to
// Docker's default set, starts the command, reaps zombies and reports the
// command's exit status. When the init exits, the kernel kills every process
// left in its pid namespace.
//
// Every program that uses an Executor (directly or through package builder)
// must therefore call Init first thing in main:
//
//	func main() {
//		if run.Init() {
//			return // not reached: Init exits the process in init mode
//		}
//		// ... the program
//	}
//
// Tests of packages that run RUN steps do the same in TestMain, because the
// test binary is the program that gets re-executed:
//
//	func TestMain(m *testing.M) {
//		if run.Init() {
//			return
//		}
//		os.Exit(m.Run())
//	}
//
// Init recognises the init mode by an environment variable that only the
// Executor sets; in every other case it returns false at once and does
// nothing else.
//
// # Isolation
//
// Inside the sandbox the command sees:
//   - the root filesystem Spec.Rootfs (bind-mounted with nodev, so device
//     nodes created by a step cannot be opened; mknod itself still works),
//   - a fresh /proc of its own pid namespace, with Docker's masked
//     (/proc/kcore, /proc/keys, ...) and read-only (/proc/sys,
//     /proc/sysrq-trigger, ...) paths,
//   - a read-only sysfs at /sys,
//   - a tmpfs /dev holding the host's null, zero, full, random, urandom
//     and tty nodes as read-only bind mounts (reads and writes work, chmod
//     and chown fail with EROFS, so the host's nodes cannot be changed),
//     the fd, stdin, stdout, stderr and ptmx links, a private devpts at
//     /dev/pts and a tmpfs /dev/shm,
//   - read-only /etc/hosts, /etc/resolv.conf and /etc/hostname, bind-mounted
//     from files the sandbox writes in its own state directory.
//
// Every mount target is resolved inside the root filesystem, symlinks
// included, with chroot semantics (a symlink /etc/hosts -> /x/hosts lands on
// <rootfs>/x/hosts). Targets that do not exist are created as empty stub
// files and directories before the run and removed after it (only when they
// are still empty, without following symlinks the step may have planted, and
// with the parent directory's timestamps restored), so nothing the sandbox
// creates stays in the root filesystem and leaks into a layer.
//
// The command runs with exactly Spec.Env, Spec.UID, Spec.GID and
// Spec.ExtraGIDs, in a new session, with only fds 0 (/dev/null), 1 and 2.
// Root keeps Docker's default capabilities (bounding, permitted and
// effective set 0xa80425fb, no inheritable or ambient capabilities);
// no_new_privs is not set. There is no seccomp filter (a known gap).
//
// # Limits
//
// Spec.Memory and Spec.PidsLimit use a cgroup per run: under
// /sys/fs/cgroup/imgbuild/ on cgroup v2 (the memory and pids controllers
// are enabled there), or below the process's own memory and pids cgroups on
// cgroup v1. Both limits count the sandbox init (a Go process: about 5
// threads and 10 MB) as well as the command, hence the minimums
// MinPidsLimit and MinMemory. memory.swap.max (v1:
// memory.memsw.limit_in_bytes) is set so that the limit cannot be
// exceeded through swap. When a limit is set and no usable cgroup exists,
// Run fails with an error saying why. Zero means no limit and no cgroup.
//
// # Cleanup
//
// When Run returns, on success, failure or cancellation, no process of the
// sandbox is left (the init is SIGKILLed on cancellation and the kernel
// kills the rest of its pid namespace), its mounts are gone with its mount
// namespace, and its cgroup, stubs and state directory are removed. If the
// calling process is killed with SIGKILL, the init dies with it (parent
// death signal) and takes the pid namespace along; the run's directory under
// Options.StateDir (and its cgroup) is removed by the next New on the same
// state directory. Stubs created in the root filesystem by a killed run stay
// there (the root filesystem of an interrupted build is normally discarded).
package run
