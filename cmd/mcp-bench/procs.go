package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

// child is a process the benchmark started, in its own process group, killed
// with it (Pdeathsig) should the benchmark die without cleaning up.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // cmd.Wait's result, valid after done
}

// children tracks every child so that all are ended on exit.
type children struct {
	mu   sync.Mutex
	list []*child
}

// start runs bin with args; its output goes to logPath (stdout too, unless
// stdout is given).
func (cs *children) start(name, dir, logPath string, env []string, stdout io.Writer, bin string, args ...string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	cs.mu.Lock()
	cs.list = append(cs.list, c)
	cs.mu.Unlock()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop asks the process group to terminate, and kills it after a grace
// period.
func (c *child) stop() {
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGTERM)
	select {
	case <-c.done:
		return
	case <-time.After(3 * time.Second):
	}
	c.kill()
}

// kill ends the process group at once and waits for the process.
func (c *child) kill() {
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
	<-c.done
}

// logTail returns the last lines of the child's output.
func (c *child) logTail(lines int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// killAll kills every child still running.
func (cs *children) killAll() { cs.each((*child).kill) }

// stopAll stops every child still running, politely first.
func (cs *children) stopAll() { cs.each((*child).stop) }

// each runs f on every child at once and waits for all.
func (cs *children) each(f func(*child)) {
	cs.mu.Lock()
	list := append([]*child(nil), cs.list...)
	cs.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range list {
		wg.Go(func() { f(c) })
	}
	wg.Wait()
}

// ---------------------------------------------------------------------------
// Ports and readiness
// ---------------------------------------------------------------------------

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitTCP polls a TCP connect to addr until it succeeds, the child exits, or
// the timeout passes.
func waitTCP(ctx context.Context, c *child, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s accepts no connections after %v: %v", c.name, addr, timeout, err)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-c.done:
			return fmt.Errorf("%s exited (%v) before listening on %s:\n%s", c.name, c.err, addr, c.logTail(20))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var listeningRe = regexp.MustCompile(`^listening on (http://127\.0\.0\.1:[0-9]+/mcp)$`)

// readListening reads the upstream's first stdout line (its URL) from r,
// then copies the rest of r to rest.
func readListening(ctx context.Context, c *child, r io.Reader, rest io.Writer, timeout time.Duration) (string, error) {
	type result struct {
		line string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		br := bufio.NewReader(r)
		line, err := br.ReadString('\n')
		got <- result{strings.TrimRight(line, "\r\n"), err}
		_, _ = io.Copy(rest, br)
	}()
	select {
	case res := <-got:
		if res.err != nil {
			return "", fmt.Errorf("%s: reading its address: %v\n%s", c.name, res.err, c.logTail(20))
		}
		m := listeningRe.FindStringSubmatch(res.line)
		if m == nil {
			return "", fmt.Errorf("%s: first line %q is not %q", c.name, res.line, listeningRe)
		}
		return m[1], nil
	case <-time.After(timeout):
		return "", fmt.Errorf("%s did not announce its address within %v", c.name, timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

// procMem is a process's memory use, in bytes.
type procMem struct {
	rss, hwm int64
}

// parseStatus reads VmRSS and VmHWM (reported in kB) from the text of
// /proc/<pid>/status.
func parseStatus(text string) (procMem, error) {
	var m procMem
	found := 0
	for _, line := range strings.Split(text, "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("unexpected %s line %q", key, line)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("unexpected %s line %q", key, line)
		}
		if key == "VmRSS" {
			m.rss = n << 10
		} else {
			m.hwm = n << 10
		}
		found++
	}
	if found != 2 {
		return m, errors.New("VmRSS or VmHWM missing")
	}
	return m, nil
}

// readMem returns the memory use of process pid.
func readMem(pid int) (procMem, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return procMem{}, err
	}
	return parseStatus(string(b))
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat
// (100 on every Linux platform Go supports).
const clockTicks = 100

// parseStatCPU returns utime+stime from the text of /proc/<pid>/stat.
func parseStatCPU(text string) (time.Duration, error) {
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its closing parenthesis.
	i := strings.LastIndexByte(text, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(text[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed utime/stime")
	}
	return time.Duration(u+s) * time.Second / clockTicks, nil
}

// readCPU returns the CPU time process pid has used (user + system).
func readCPU(pid int) time.Duration {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	d, _ := parseStatCPU(string(b))
	return d
}

// resetPeak resets the process's VmHWM to its current RSS (clear_refs 5,
// Linux ≥ 4.0). It reports whether that worked.
func resetPeak(pid int) bool {
	return os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "clear_refs"), []byte("5"), 0) == nil
}

// openFilesLimit returns the soft "Max open files" of process pid.
func openFilesLimit(pid int) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "limits"))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(strings.TrimPrefix(line, "Max open files"))
			if len(f) >= 2 {
				return f[0] + " (hard " + f[1] + ")"
			}
		}
	}
	return "?"
}

// raiseNoFile raises this process's RLIMIT_NOFILE to at least want (soft),
// raising the hard limit too when allowed. Children started afterwards
// inherit it. It returns the soft limit in effect.
func raiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Max < want {
		raised := lim
		raised.Max, raised.Cur = want, want
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

// ---------------------------------------------------------------------------
// Sampling during a run
// ---------------------------------------------------------------------------

// sampler records the peak VmRSS of a process and the peak number of Redis
// connections while it runs.
type sampler struct {
	stop chan struct{}
	done chan struct{}

	maxRSS   int64
	maxRedis int
	redisErr error
}

func startSampler(pid int, redisAddr string, every time.Duration) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{}), maxRedis: -1}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		n := 0
		for {
			if m, err := readMem(pid); err == nil {
				s.maxRSS = max(s.maxRSS, m.rss)
			}
			// Redis is asked less often: CLIENT LIST is not free.
			if redisAddr != "" && n%4 == 0 {
				if c, err := redisClients(redisAddr); err == nil {
					s.maxRedis = max(s.maxRedis, c)
				} else {
					s.redisErr = err
				}
			}
			n++
			select {
			case <-tick.C:
			case <-s.stop:
				return
			}
		}
	}()
	return s
}

// finish stops sampling; the peaks are valid afterwards.
func (s *sampler) finish() {
	close(s.stop)
	<-s.done
}
