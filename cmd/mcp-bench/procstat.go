package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/internal/testenv"
	"github.com/prometheus/procfs"
)

// What the bench reads about its children from /proc (Linux, through
// prometheus/procfs): memory, CPU time, the open-files limit; and the
// memory peak it resets before a measurement. internal/testenv starts the
// processes; measuring them is the bench's own.

// procMem is a process's memory use, in bytes: VmRSS and VmHWM (the peak).
type procMem struct {
	rss, hwm int64
}

// readMem returns the memory use of process pid.
func readMem(pid int) (procMem, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procMem{}, err
	}
	st, err := p.NewStatus()
	return procMem{rss: int64(st.VmRSS), hwm: int64(st.VmHWM)}, err
}

// readCPU returns the CPU time process pid has used (user + system), 0 when
// unknown.
func readCPU(pid int) time.Duration {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return time.Duration(st.CPUTime() * float64(time.Second))
}

// resetPeak resets the process's VmHWM to its current RSS (clear_refs 5,
// Linux ≥ 4.0), so that a phase's peak is its own. It reports whether that
// worked.
func resetPeak(pid int) bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}

// openFilesLimit returns the soft "Max open files" of process pid.
func openFilesLimit(pid int) uint64 {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	l, _ := p.Limits()
	return l.OpenFiles
}

// sampler records the peak VmRSS of a process and the peak number of Redis
// connections while it runs.
type sampler struct {
	stop, done chan struct{}
	maxRSS     int64
	maxRedis   int // -1: not asked or no answer
}

func startSampler(ctx context.Context, pid int, redisAddr string, every time.Duration) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{}), maxRedis: -1}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; ; n++ {
			if m, err := readMem(pid); err == nil {
				s.maxRSS = max(s.maxRSS, m.rss)
			}
			// Redis is asked less often: its answer is not free.
			if redisAddr != "" && n%4 == 0 {
				if c, err := testenv.RedisClients(ctx, redisAddr); err == nil {
					s.maxRedis = max(s.maxRedis, c)
				}
			}
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
