package redis

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the server die with the test process, even when a
// timeout kills it before the cleanup runs. Pdeathsig is tied to the thread
// that started the process: server.start keeps that thread alive.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
