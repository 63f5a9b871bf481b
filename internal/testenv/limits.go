package testenv

import "syscall"

// RaiseNoFile raises this process's RLIMIT_NOFILE to at least want (soft),
// raising the hard limit too when allowed, else to the hard limit. The
// processes started afterwards inherit it: a load of thousands of
// connections needs as many descriptors in the client and in Caddy. It
// returns the soft limit in effect.
func RaiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			return want, nil
		}
	}
	// Within the hard limit: take all of it. Calling Setrlimit also makes
	// os/exec pass the raised limit on to children.
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}
