package run

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultCapabilities is Docker's default capability set (0xa80425fb), the
// bounding, permitted and effective set of root in the sandbox.
const DefaultCapabilities uint64 = 1<<unix.CAP_CHOWN |
	1<<unix.CAP_DAC_OVERRIDE |
	1<<unix.CAP_FSETID |
	1<<unix.CAP_FOWNER |
	1<<unix.CAP_MKNOD |
	1<<unix.CAP_NET_RAW |
	1<<unix.CAP_SETGID |
	1<<unix.CAP_SETUID |
	1<<unix.CAP_SETFCAP |
	1<<unix.CAP_SETPCAP |
	1<<unix.CAP_NET_BIND_SERVICE |
	1<<unix.CAP_SYS_CHROOT |
	1<<unix.CAP_KILL |
	1<<unix.CAP_AUDIT_WRITE

func readLastCap() (int, error) {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("reading cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("bad cap_last_cap %q", data)
	}
	return n, nil
}

// dropCapabilities limits the calling thread (and what it execs) to
// DefaultCapabilities: it drops the others from the bounding set, sets the
// permitted and effective sets to DefaultCapabilities and clears the
// inheritable and ambient sets. The kernel then gives a root command
// exactly DefaultCapabilities and a non-root one none.
func dropCapabilities(lastCap int) error {
	for c := 0; c <= lastCap; c++ {
		if DefaultCapabilities&(1<<c) != 0 {
			continue
		}
		err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0)
		if err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: uint32(DefaultCapabilities), Permitted: uint32(DefaultCapabilities)},
		{Effective: uint32(DefaultCapabilities >> 32), Permitted: uint32(DefaultCapabilities >> 32)},
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	return nil
}
