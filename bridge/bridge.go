// Package bridge serves legacy MCP HTTP+SSE clients (protocol 2024-11-05)
// from Streamable HTTP MCP servers. It is plain net/http: the Caddy module in
// caddymodule/ wires it into Caddy, and tests drive it with httptest.
//
// Every piece of session state lives in a sessionstore.Store, so that any
// replica sharing the store can take any request.
package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Bridge handles the legacy endpoints for one upstream.
type Bridge struct {
	cfg   Config
	store sessionstore.Store
	// givenStore is the store New was given (store may wrap it), which
	// identifies the store for the admin API.
	givenStore sessionstore.Store
	// client carries calls (bounded by MaxUpstreamConns); streamClient the
	// long-lived GET streams, which must not take the calls' connections.
	client, streamClient *http.Client
	log                  *zap.Logger

	// background carries upstream work that outlives the POST that started
	// it; it ends on Shutdown, not on Close, so that a config reload does
	// not drop answers in flight.
	background context.Context
	cancelBG   context.CancelFunc
	// shuttingDown is closed by Stop to end every stream and refuse new
	// requests.
	shuttingDown chan struct{}
	shutdownOnce sync.Once
	// work counts the goroutines answering requests (forwards, orphans),
	// which Drain waits for.
	work sync.WaitGroup
	// busy counts the same goroutines, for Busy.
	busy atomic.Int64
	// streams counts the open legacy streams, for WaitStreams (a counter,
	// not a WaitGroup: a stream may still open while WaitStreams waits).
	streams atomic.Int64
	// pokes is closed, and replaced, to make every stream look for
	// requests whose replica stopped (see takeOverLapsed).
	// An atomic pointer: every stream reads it at every wake-up.
	pokes atomic.Pointer[chan struct{}]
	// stopJanitor ends the expiry loop (Close).
	stopJanitor chan struct{}
	closeOnce   sync.Once
	wg          sync.WaitGroup

	// sessionCache keeps settled sessions' records briefly for POSTs
	// (sessioncache.go).
	sessionCache *sessionCache
	// discovered is what the upstream's server/discover said (modern.go).
	discovered discoveryCache
	// params are the argument headers its tools want (paramheaders.go).
	params *paramHeaders

	mu sync.Mutex
	// inflight counts upstream requests per session on this replica.
	inflight map[string]int
	// cancelled remembers request ids the client cancelled, per session, so
	// that their missing responses are not turned into errors.
	cancelled map[string]map[string]struct{}
	// translating holds, per session and request (cancelKey), how to stop
	// a translated call forwarded here: 2026-07-28 cancels a call by
	// closing its stream.
	translating map[string]map[string]context.CancelFunc
	// credentials remembers, per session streamed here, the headers needed
	// for background upstream requests (GET stream, DELETE). Never stored.
	credentials map[string]*credential
	// reinit serialises upstream re-initialisation per session.
	reinit map[string]*sync.Mutex
	// seen holds the upstream event ids relayed per session, so that an
	// upstream replaying them on resume is not relayed twice.
	seen map[string]*seenEvents
	// rate bounds how fast each client address opens sessions.
	rate *sessionRate
	// ownTransports are the transports New made (none when Config gave
	// one); their idle connections are closed with the bridge.
	ownTransports []*http.Transport
	// upstreamMetadataURL is the protected-resource metadata URL named by
	// the upstream's last authorization challenge.
	upstreamMetadataURL atomic.Pointer[string]
	// metadata is the upstream's protected-resource metadata, cached.
	metadata atomic.Pointer[cachedMetadata]
	// upstreamOpenUntil (Unix ns) is until when anonymous streams skip the
	// authorization probe (probeAuthorization).
	upstreamOpenUntil atomic.Int64
	// anonymousChallenge is the upstream's last refusal of an anonymous
	// probe, reused for a few seconds.
	anonymousChallenge atomic.Pointer[cachedChallenge]
	// metrics is nil without Config.Metrics.
	metrics *Metrics
	// identityKey keys the fingerprints (loadIdentityKey).
	identityKey atomic.Pointer[[]byte]
}

// New returns a bridge over store. Call Close when the configuration that
// made it is unloaded, and Shutdown when the process is exiting.
func New(cfg Config, store sessionstore.Store) (*Bridge, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = randomID()
	}
	calls, streams := cfg.Transport, cfg.Transport
	var own []*http.Transport
	if cfg.Transport == nil {
		callTransport, streamTransport := newUpstreamTransports(cfg)
		calls, streams = callTransport, streamTransport
		own = []*http.Transport{callTransport, streamTransport}
	}
	givenStore := store
	if cfg.Metrics != nil {
		store = sessionstore.Observe(store, cfg.Metrics.observeStore)
	}
	bg, cancel := context.WithCancel(context.Background())
	b := &Bridge{
		metrics:       cfg.Metrics,
		cfg:           cfg,
		store:         store,
		givenStore:    givenStore,
		client:        &http.Client{Transport: calls, CheckRedirect: noRedirects},
		streamClient:  &http.Client{Transport: streams, CheckRedirect: noRedirects},
		log:           cfg.Logger,
		background:    bg,
		cancelBG:      cancel,
		shuttingDown:  make(chan struct{}),
		stopJanitor:   make(chan struct{}),
		inflight:      make(map[string]int),
		cancelled:     make(map[string]map[string]struct{}),
		translating:   make(map[string]map[string]context.CancelFunc),
		credentials:   make(map[string]*credential),
		sessionCache:  newSessionCache(),
		params:        newParamHeaders(),
		reinit:        make(map[string]*sync.Mutex),
		seen:          make(map[string]*seenEvents),
		rate:          newSessionRate(cfg.NewSessionRate, cfg.NewSessionBurst),
		ownTransports: own,
	}
	pokes := make(chan struct{})
	b.pokes.Store(&pokes)
	b.wg.Add(1)
	go b.runJanitor()
	return b, nil
}

// Close stops the bridge's background loop. Open streams and upstream
// requests in flight carry on until they end by themselves, so that a config
// reload keeps them.
func (b *Bridge) Close() {
	b.closeOnce.Do(func() { close(b.stopJanitor) })
	b.wg.Wait()
	b.closeIdleConnections()
}

// Stop begins a shutdown: every open stream ends with a final comment, so
// that clients reconnect elsewhere, and new requests get 503. Upstream
// requests in flight run on; see Drain.
func (b *Bridge) Stop() {
	b.shutdownOnce.Do(func() { close(b.shuttingDown) })
}

// Drain waits until the requests in flight here are answered, or ctx ends;
// then it cancels what still runs, leaving it (recorded in the store with
// its upstream event id) to the other replicas, which this replica's
// stopped heartbeat tells to take over at once. For process exit, after
// Stop.
func (b *Bridge) Drain(ctx context.Context) {
	b.Stop()
	if !b.WaitIdle(ctx) {
		b.log.Info("shutting down with requests still in flight: left to the other replicas")
	}
	// Detached streams (detach.go) are not the HTTP server's to wait for,
	// and run under b.background: they get what is left of ctx, and at
	// least a moment of their own, to send their final comment before it
	// is cancelled.
	grace := time.Now().Add(streamEndGrace)
	if deadline, ok := ctx.Deadline(); ok && deadline.After(grace) {
		grace = deadline
	}
	endCtx, endCancel := context.WithDeadline(context.Background(), grace)
	b.WaitStreams(endCtx)
	endCancel()
	b.cancelBG()
	stopCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := b.store.Heartbeat(stopCtx, b.cfg.ReplicaID, 0); err != nil {
		b.log.Warn("marking this replica stopped", zap.Error(err))
	}
	b.closeIdleConnections()
}

// streamEndGrace bounds how long a shutdown waits for its streams to send
// what their mailbox holds and their final comment.
const streamEndGrace = 2 * time.Second

// WaitIdle waits until no request is being answered here, or ctx ends; it
// reports whether the bridge is idle.
func (b *Bridge) WaitIdle(ctx context.Context) bool {
	idle := make(chan struct{})
	go func() {
		b.work.Wait()
		close(idle)
	}()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// WaitStreams waits until every stream has ended (after Stop), or ctx ends.
func (b *Bridge) WaitStreams(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for b.streams.Load() > 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// Busy reports whether requests are being answered here.
func (b *Bridge) Busy() bool { return b.busy.Load() > 0 }

// startWork and endWork bracket a goroutine that answers a request.
func (b *Bridge) startWork() {
	b.work.Add(1)
	b.busy.Add(1)
}

func (b *Bridge) endWork() {
	b.busy.Add(-1)
	b.work.Done()
}

// Shutdown stops without draining: requests in flight are left to the
// other replicas at once; streams still get streamEndGrace to end.
func (b *Bridge) Shutdown() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.Drain(ctx)
}

// stopping reports whether Stop was called.
func (b *Bridge) stopping() bool {
	select {
	case <-b.shuttingDown:
		return true
	default:
		return false
	}
}

// pokeStreams makes every stream of this replica look for requests whose
// replica stopped.
func (b *Bridge) pokeStreams() {
	next := make(chan struct{})
	close(*b.pokes.Swap(&next))
}

// streamPokes returns the channel the next pokeStreams closes.
func (b *Bridge) streamPokes() <-chan struct{} { return *b.pokes.Load() }

// closeIdleConnections releases pooled upstream connections; connections in
// use (streams, requests in flight) stay until their requests end.
func (b *Bridge) closeIdleConnections() {
	for _, t := range b.ownTransports {
		t.CloseIdleConnections()
	}
}

// Handles reports whether the request path is one of the bridge's endpoints.
func (b *Bridge) Handles(r *http.Request) bool {
	return r.URL.Path == b.cfg.SSEPath || r.URL.Path == b.cfg.MessagePath || isResourceMetadataPath(r.URL.Path)
}

// ServeHTTP serves the event stream and the message endpoint. Requests to
// other paths get 404; use Handles to route them elsewhere.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !b.checkOrigin(w, r) {
		return
	}
	if len(r.Header.Values("Authorization")) > 1 {
		// A single-valued field sent twice: which one counts would be up
		// to whoever reads it (the session check, the upstream).
		b.refuse(w, http.StatusBadRequest, "bad_request", "Authorization must be sent once")
		return
	}
	if err := b.loadIdentityKey(r.Context()); err != nil {
		b.storeError(w, err)
		return
	}
	if tokenInQuery(r) {
		b.refuse(w, http.StatusBadRequest, "bad_request", "access tokens are not accepted in the URL; send them in the Authorization header")
		return
	}
	if b.stopping() && r.Method != http.MethodOptions {
		// Refused before anything is accepted: the client retries on
		// another replica, and nothing it sent is lost here.
		w.Header().Set("Retry-After", "1")
		b.refuse(w, http.StatusServiceUnavailable, "shutting_down", "server shutting down")
		return
	}
	switch r.URL.Path {
	case b.cfg.SSEPath:
		switch r.Method {
		case http.MethodGet:
			b.serveStream(w, r)
		case http.MethodOptions:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "GET, OPTIONS")
			b.refuse(w, http.StatusMethodNotAllowed, "method_not_allowed", "the event stream endpoint takes GET")
		}
	case b.cfg.MessagePath:
		switch r.Method {
		case http.MethodPost:
			b.serveMessage(w, r)
		case http.MethodOptions:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "POST, OPTIONS")
			b.refuse(w, http.StatusMethodNotAllowed, "method_not_allowed", "the message endpoint takes POST")
		}
	default:
		if isResourceMetadataPath(r.URL.Path) {
			b.serveResourceMetadata(w, r)
			return
		}
		http.NotFound(w, r)
	}
}

// checkOrigin refuses requests whose Origin is present and neither the
// request's own host nor allowed, and answers CORS for allowed ones.
func (b *Bridge) checkOrigin(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	allowed := false
	if u, err := url.Parse(origin); err == nil && strings.EqualFold(u.Host, r.Host) {
		allowed = true
	}
	for _, o := range b.cfg.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			allowed = true
		}
	}
	if !allowed {
		b.refuse(w, http.StatusForbidden, "origin", "origin not allowed")
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Allow-Credentials", "true")
	if r.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID, MCP-Protocol-Version")
		h.Set("Access-Control-Max-Age", "600")
	}
	return true
}

// randomID returns 128 random bits as 32 hex digits.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg + "\n"))
}

// refuse answers a request refused before anything was forwarded, and
// counts it by reason (the check or limit).
func (b *Bridge) refuse(w http.ResponseWriter, status int, reason, msg string) {
	b.metrics.refusedFor(reason)
	httpError(w, status, msg)
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// storeError answers a failure to find or make a session: 404 for missing
// sessions, 429 with Retry-After for too many new ones from one address,
// 503 with Retry-After when the store is out of reach or full.
func (b *Bridge) storeError(w http.ResponseWriter, err error) {
	var tooMany tooManyNewSessions
	switch {
	case errors.Is(err, sessionstore.ErrNotFound):
		b.refuse(w, http.StatusNotFound, "not_found", "session not found")
	case errors.As(err, &tooMany):
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(tooMany.wait, time.Second).Seconds()))))
		b.refuse(w, http.StatusTooManyRequests, "rate_limit", tooMany.Error())
	case errors.Is(err, sessionstore.ErrTooManyForCaller):
		// The soonest one of the caller's sessions can free its place: a
		// dropped session its client never initialised.
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(b.cfg.UninitializedTTL.Seconds()))))
		b.refuse(w, http.StatusTooManyRequests, "caller_limit", "too many sessions for this caller")
	default:
		// The details (addresses, causes) go to the log, not to the client.
		reason, msg := "store_unavailable", "session store unavailable"
		switch {
		case errors.Is(err, sessionstore.ErrTooManySessions):
			reason, msg = "store_full", "too many sessions"
		case errors.Is(err, sessionstore.ErrMailboxFull):
			reason, msg = "store_full", "session mailbox full"
		}
		b.log.Warn("session store failed", zap.Error(err))
		w.Header().Set("Retry-After", "1")
		b.refuse(w, http.StatusServiceUnavailable, reason, msg)
	}
}

func (b *Bridge) now() time.Time { return time.Now() }

// storeRetryBudget bounds how long a request retries a store that is out of
// reach before it is answered 503: it bridges the moment after the store
// comes back in which its client has not reconnected yet (go-redis probes a
// failed server once a second).
const storeRetryBudget = 1500 * time.Millisecond

// retryUnavailable runs op until it succeeds, fails for another reason than
// sessionstore.ErrUnavailable, or storeRetryBudget has passed.
func (b *Bridge) retryUnavailable(ctx context.Context, op func() error) error {
	deadline := time.Now().Add(storeRetryBudget)
	backoff := 50 * time.Millisecond
	for {
		err := op()
		if err == nil || !errors.Is(err, sessionstore.ErrUnavailable) || time.Now().Add(backoff).After(deadline) {
			return err
		}
		if !sleepCtx(ctx, backoff) {
			return err
		}
		backoff = min(2*backoff, 400*time.Millisecond)
	}
}
