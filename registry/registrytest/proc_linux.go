package registrytest

import "syscall"

// childAttr makes the registry die with the test process.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
