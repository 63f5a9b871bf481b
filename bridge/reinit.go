package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// reinitID is the id of the initialize request the bridge replays; its
// result is the bridge's, never the client's.
var reinitID = json.RawMessage(`"mcp-sse-bridge-reinitialize"`)

var initializedNotification = []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)

// reinitialize opens a new upstream session for a bridge session whose
// upstream session is gone, by replaying the client's initialize and
// notifications/initialized, as the spec asks of the client (legacy clients
// cannot). Concurrent callers for the same session share one attempt.
func (b *Bridge) reinitialize(ctx context.Context, stale *sessionstore.Session, client http.Header) (*sessionstore.Session, error) {
	lock := b.reinitLock(stale.ID)
	lock.Lock()
	defer lock.Unlock()

	cur, err := b.store.Get(ctx, stale.ID)
	if err != nil {
		return nil, fmt.Errorf("loading session: %w", err)
	}
	if cur.UpstreamSessionID != stale.UpstreamSessionID {
		return cur, nil // another request already did it
	}
	if len(cur.Initialize) == 0 {
		return nil, errors.New("the client never sent initialize")
	}
	b.metrics.reinitialized()
	return b.openUpstreamSession(ctx, cur, cur.Initialize, client)
}

// openUpstreamSession opens a new upstream session for the bridge session
// with the initialize request init (the bridge's own request: its result
// never reaches the client) and notifications/initialized, asks it for
// what the client had asked of its session (settings.go), records it, and
// tells the stream owner to (re)open the upstream GET stream.
func (b *Bridge) openUpstreamSession(ctx context.Context, cur *sessionstore.Session, init []byte, client http.Header) (*sessionstore.Session, error) {
	// Two round trips with the session's lock held, bounded; then the
	// client's settings (restoreTimeout).
	ctx, cancel := context.WithTimeout(ctx, 2*b.cfg.UpstreamHeaderTimeout)
	defer cancel()
	env, err := PeekEnvelope(init)
	if err != nil {
		return nil, fmt.Errorf("stored initialize: %w", err)
	}
	fresh := *cur
	fresh.UpstreamSessionID, fresh.ProtocolVersion = "", ""
	resp, err := b.do(ctx, "initialize", http.MethodPost, &fresh, client, ReplaceID(init, env, reinitID), "")
	if err != nil {
		return nil, fmt.Errorf("replaying initialize: %w", err)
	}
	result, err := b.initializeResult(resp)
	if err != nil {
		return nil, fmt.Errorf("replaying initialize: %w", err)
	}
	fresh.UpstreamSessionID = resp.Header.Get("Mcp-Session-Id")
	fresh.ProtocolVersion = result.ProtocolVersion

	resp, err = b.do(ctx, "notifications/initialized", http.MethodPost, &fresh, client, initializedNotification, "")
	if err != nil {
		return nil, fmt.Errorf("sending notifications/initialized: %w", err)
	}
	drain(resp)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("sending notifications/initialized: upstream answered HTTP %d", resp.StatusCode)
	}
	// Before the new upstream session is stored: nothing else reaches it
	// until it has what the client asked of the old one.
	b.restoreSettings(ctx, &fresh, client)

	updated, err := b.store.Update(ctx, cur.ID, func(s *sessionstore.Session) error {
		s.UpstreamSessionID = fresh.UpstreamSessionID
		s.ProtocolVersion = fresh.ProtocolVersion
		s.Translated = false // relayed from now on, whatever it was
		if len(s.Initialize) == 0 {
			s.Initialize = init
		}
		s.Initialized = true
		s.NoAdopt = true
		s.StreamLastEventID = ""
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storing the new upstream session: %w", err)
	}
	b.signalUpstreamSession(ctx, cur.ID)
	return updated, nil
}

type initializeResult struct {
	ProtocolVersion string `json:"protocolVersion"`
}

// initializeResult reads the response to a replayed initialize, JSON or SSE.
func (b *Bridge) initializeResult(resp *http.Response) (*initializeResult, error) {
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("upstream answered HTTP %d", resp.StatusCode)
	}
	found, err := b.firstResponse(resp)
	if err != nil {
		return nil, fmt.Errorf("no initialize result: %w", err)
	}
	var r struct {
		Result *initializeResult `json:"result"`
		Error  json.RawMessage   `json:"error"`
	}
	if err := json.Unmarshal(found, &r); err != nil {
		return nil, err
	}
	if r.Result == nil {
		return nil, fmt.Errorf("initialize failed: %s", r.Error)
	}
	return r.Result, nil
}

// signalUpstreamSession tells the stream owner (whichever replica) that the
// upstream session is ready, so that it (re)opens the upstream GET stream.
func (b *Bridge) signalUpstreamSession(ctx context.Context, id string) {
	b.signal(ctx, id, controlUpstreamSession)
}

func (b *Bridge) reinitLock(id string) *sync.Mutex {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.reinit[id]
	if l == nil {
		l = new(sync.Mutex)
		b.reinit[id] = l
	}
	return l
}
