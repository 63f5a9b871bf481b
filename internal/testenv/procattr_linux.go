package testenv

import "syscall"

// sysProcAttr puts the child in a process group of its own (Kill and Stop
// signal the group) and has the kernel kill it when the thread that started
// it ends, which Start makes the lifetime of the child: a test binary killed
// by its timeout, or a benchmark killed by a signal, leaves no server
// behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
