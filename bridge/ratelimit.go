package bridge

import (
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxRateKeys bounds the client addresses whose new-session rate a replica
// follows; past it, the idlest are forgotten first.
const maxRateKeys = 10000

// sessionRate limits how fast each client address opens sessions on this
// replica, so that one client cannot fill the store (an attacker opening
// and dropping streams as fast as it can).
type sessionRate struct {
	every rate.Limit
	burst int

	mu       sync.Mutex
	limiters map[string]*addressLimiter
}

type addressLimiter struct {
	*rate.Limiter
	last time.Time
}

func newSessionRate(perSecond float64, burst int) *sessionRate {
	return &sessionRate{every: rate.Limit(perSecond), burst: burst, limiters: make(map[string]*addressLimiter)}
}

// allow takes one new session for addr now; when none is left it reports
// how long until one is.
func (s *sessionRate) allow(addr string, now time.Time) (bool, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limiters[addr]
	if l == nil {
		if len(s.limiters) >= maxRateKeys {
			s.pruneLocked(now)
		}
		l = &addressLimiter{Limiter: rate.NewLimiter(s.every, s.burst)}
		s.limiters[addr] = l
	}
	l.last = now
	r := l.ReserveN(now, 1)
	if delay := r.DelayFrom(now); delay > 0 {
		r.CancelAt(now)
		return false, delay
	}
	return true, 0
}

// pruneLocked forgets the addresses whose bucket is full again (they lose
// nothing) and, if that is not enough, the idlest half.
func (s *sessionRate) pruneLocked(now time.Time) {
	for addr, l := range s.limiters {
		if l.TokensAt(now) >= float64(s.burst) {
			delete(s.limiters, addr)
		}
	}
	if len(s.limiters) < maxRateKeys {
		return
	}
	cut := now.Add(-time.Minute)
	for addr, l := range s.limiters {
		if l.last.Before(cut) || len(s.limiters) >= maxRateKeys/2 {
			delete(s.limiters, addr)
		}
	}
}

// tooManyNewSessions refuses a new session: its client's address opened
// sessions faster than NewSessionRate allows; wait is when it may again.
type tooManyNewSessions struct{ wait time.Duration }

func (tooManyNewSessions) Error() string { return "too many new sessions from this address" }

// admitNewSession takes a new session for the request's client address, or
// returns tooManyNewSessions.
func (b *Bridge) admitNewSession(r *http.Request) error {
	if ok, wait := b.rate.allow(b.cfg.ClientAddress(r), b.now()); !ok {
		return tooManyNewSessions{wait}
	}
	return nil
}

// remoteHost is the default ClientAddress: the peer's IP.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
