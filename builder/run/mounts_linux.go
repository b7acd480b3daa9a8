package run

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Docker's masked and read-only paths (moby's oci defaults), relative to
// the /proc and /sys mounts.
var (
	maskedProc = []string{"asound", "acpi", "interrupts", "kcore", "keys", "latency_stats",
		"timer_list", "timer_stats", "sched_debug", "scsi"}
	maskedSys    = []string{"firmware", "devices/virtual/powercap"}
	readonlyProc = []string{"bus", "fs", "irq", "sys", "sysrq-trigger"}
	// Host device nodes bind-mounted into /dev.
	devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}
	devLinks = [][2]string{{"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
		{"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"}, {"ptmx", "pts/ptmx"}, {"core", "/proc/kcore"}}
)

const roFlags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// setupRoot builds the sandbox's mount tree in the init's private mount
// namespace and pivots into it. Every target is opened below the root
// without following symlinks, and mounted on through /proc/self/fd.
func setupRoot(cfg *initConfig) error {
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making / rslave: %w", err)
	}
	if err := unix.Mount(cfg.Rootfs, cfg.Rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting the root filesystem: %w", err)
	}
	// Opened after the bind mount, so that it is the new mount's root.
	root, err := unix.Open(cfg.Rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the root filesystem: %w", err)
	}
	defer unix.Close(root)
	// nodev: device nodes a step creates (mknod works) cannot be opened.
	if err := remount(root, unix.MS_NODEV); err != nil {
		return fmt.Errorf("root filesystem: %w", err)
	}
	if err := mountProc(root, cfg.Proc); err != nil {
		return err
	}
	if err := mountSys(root, cfg.Sys); err != nil {
		return err
	}
	if err := mountDev(root, cfg.Dev, cfg.Scripts); err != nil {
		return err
	}
	for _, f := range cfg.Files {
		if err := bindReadOnly(root, f.Target, f.Source); err != nil {
			return err
		}
	}
	if err := mountExtras(root, cfg); err != nil {
		return err
	}
	return pivot(root)
}

// mountAt mounts on rel below dirfd and returns an O_PATH fd of the new
// mount's root.
func mountAt(dirfd int, rel string, dir bool, source, fstype string, flags uintptr, data string) (int, error) {
	fd, err := openBeneath(dirfd, rel, dir)
	if err != nil {
		return -1, fmt.Errorf("mount target /%s: %w", rel, err)
	}
	err = unix.Mount(source, procFdPath(fd), fstype, flags, data)
	unix.Close(fd)
	if err != nil {
		kind := fstype
		if kind == "" {
			kind = "bind mount"
		}
		return -1, fmt.Errorf("mounting %s on /%s: %w", kind, rel, err)
	}
	fd, err = openBeneath(dirfd, rel, dir)
	if err != nil {
		return -1, fmt.Errorf("reopening /%s: %w", rel, err)
	}
	return fd, nil
}

// bindAt bind-mounts the file or directory open as srcfd on rel below dirfd
// and remounts it with flags.
func bindAt(dirfd int, rel string, dir bool, srcfd int, flags uintptr) error {
	fd, err := mountAt(dirfd, rel, dir, procFdPath(srcfd), "", unix.MS_BIND, "")
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return remount(fd, flags)
}

// remount adds flags to the bind mount whose root is open as fd, keeping
// the flags it has (the kernel refuses to clear locked ones).
func remount(fd int, flags uintptr) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return err
	}
	for _, f := range [][2]uintptr{{unix.ST_RDONLY, unix.MS_RDONLY}, {unix.ST_NOSUID, unix.MS_NOSUID},
		{unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME}} {
		if uintptr(st.Flags)&f[0] != 0 {
			flags |= f[1]
		}
	}
	if err := unix.Mount("", procFdPath(fd), "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
		return fmt.Errorf("remounting: %w", err)
	}
	return nil
}

// openHost opens a host path (before pivot_root) as O_PATH without
// following a symlink in its last component.
func openHost(path string) (int, error) {
	return unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

func bindReadOnly(root int, target, source string) error {
	src, err := openHost(source)
	if err != nil {
		return fmt.Errorf("opening %s: %w", source, err)
	}
	defer unix.Close(src)
	if err := bindAt(root, target, false, src, roFlags); err != nil {
		return fmt.Errorf("mounting /%s: %w", target, err)
	}
	return nil
}

func mountProc(root int, rel string) error {
	proc, err := mountAt(root, rel, true, "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	if err != nil {
		return err
	}
	defer unix.Close(proc)
	if err := maskPaths(proc, maskedProc); err != nil {
		return fmt.Errorf("masking /proc paths: %w", err)
	}
	for _, p := range readonlyProc {
		fd, err := openBeneath(proc, p, false)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("/proc/%s: %w", p, err)
		}
		err = bindAt(proc, p, false, fd, roFlags)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("making /proc/%s read-only: %w", p, err)
		}
	}
	return nil
}

func mountSys(root int, rel string) error {
	sys, err := mountAt(root, rel, true, "sysfs", "sysfs", roFlags, "")
	if err != nil {
		return err
	}
	defer unix.Close(sys)
	if err := maskPaths(sys, maskedSys); err != nil {
		return fmt.Errorf("masking /sys paths: %w", err)
	}
	return nil
}

// maskPaths hides files under /dev/null and directories under an empty
// read-only tmpfs, as runc does for Docker's masked paths.
func maskPaths(dirfd int, paths []string) error {
	null, err := openHost("/dev/null")
	if err != nil {
		return err
	}
	defer unix.Close(null)
	for _, p := range paths {
		fd, err := openBeneath(dirfd, p, false)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		if err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = unix.Mount("tmpfs", procFdPath(fd), "tmpfs", roFlags, "size=0")
		} else if err == nil {
			// Read-only: chmod must not reach the host's /dev/null.
			err = bindAt(dirfd, p, false, null, roFlags)
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// mountDev mounts a tmpfs /dev with the host's basic device nodes (bind
// mounts of empty files, so that it works in user namespaces; read-only,
// so that chmod or chown cannot reach the host's inodes), the usual links,
// a private devpts, /dev/shm and /dev/mqueue, as Docker's /dev.
func mountDev(root int, rel string, scripts []Script) error {
	dev, err := mountAt(root, rel, true, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_STRICTATIME, "mode=755,size=65536k")
	if err != nil {
		return err
	}
	defer unix.Close(dev)
	for _, name := range devNodes {
		if err := bindDevNode(dev, name); err != nil {
			return err
		}
	}
	for _, l := range devLinks {
		if err := unix.Symlinkat(l[1], dev, l[0]); err != nil {
			return fmt.Errorf("/dev/%s: %w", l[0], err)
		}
	}
	for _, d := range []struct {
		name string
		mode uint32
	}{{"pts", 0o755}, {"shm", 0o1777}, {"mqueue", 0o755}} {
		if err := unix.Mkdirat(dev, d.name, d.mode); err != nil {
			return fmt.Errorf("/dev/%s: %w", d.name, err)
		}
		if err := unix.Fchmodat(dev, d.name, d.mode, 0); err != nil {
			return fmt.Errorf("/dev/%s: %w", d.name, err)
		}
	}
	pts, err := mountAt(dev, "pts", true, "devpts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
	if err != nil { // gid 5 may be unmapped in a user namespace
		pts, err = mountAt(dev, "pts", true, "devpts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
	}
	if err != nil {
		return err
	}
	unix.Close(pts)
	for _, m := range []struct{ name, source, fstype, data string }{
		{"shm", "shm", "tmpfs", "mode=1777,size=65536k"},
		{"mqueue", "mqueue", "mqueue", ""}, // of the sandbox's ipc namespace
	} {
		fd, err := mountAt(dev, m.name, true, m.source, m.fstype, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, m.data)
		if err != nil {
			return err
		}
		unix.Close(fd)
	}
	return writeScripts(dev, scripts)
}

// writeScripts writes scripts into dev's pipes directory, mode 0755.
func writeScripts(dev int, scripts []Script) error {
	if len(scripts) == 0 {
		return nil
	}
	if err := unix.Mkdirat(dev, "pipes", 0o755); err != nil {
		return fmt.Errorf("/dev/pipes: %w", err)
	}
	dir, err := unix.Openat(dev, "pipes", unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("/dev/pipes: %w", err)
	}
	defer unix.Close(dir)
	for _, sc := range scripts {
		fd, err := unix.Openat(dir, sc.Name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o755)
		if err != nil {
			return fmt.Errorf("/dev/pipes/%s: %w", sc.Name, err)
		}
		_, werr := unix.Write(fd, sc.Data)
		if werr == nil {
			werr = unix.Fchmod(fd, 0o755)
		}
		unix.Close(fd)
		if werr != nil {
			return fmt.Errorf("/dev/pipes/%s: %w", sc.Name, werr)
		}
	}
	return nil
}

func bindDevNode(dev int, name string) error {
	src, err := openHost("/dev/" + name)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) {
		return nil // not on this host
	}
	if err != nil {
		return fmt.Errorf("host /dev/%s: %w", name, err)
	}
	defer unix.Close(src)
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return fmt.Errorf("host /dev/%s is not a character device", name)
	}
	fd, err := unix.Openat(dev, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o666)
	if err != nil {
		return fmt.Errorf("/dev/%s: %w", name, err)
	}
	unix.Close(fd)
	if err := bindAt(dev, name, false, src, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC); err != nil {
		return fmt.Errorf("/dev/%s: %w", name, err)
	}
	return nil
}

// pivot makes root the root of the mount namespace and detaches the old
// root (runc's pivot_root(".", ".") sequence).
func pivot(root int) error {
	oldRoot, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(oldRoot)
	if err := unix.Fchdir(root); err != nil {
		return fmt.Errorf("chdir to the root filesystem: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Fchdir(oldRoot); err != nil {
		return fmt.Errorf("chdir to the old root: %w", err)
	}
	if err := unix.Mount("", ".", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making the old root rslave: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	return unix.Chdir("/")
}
