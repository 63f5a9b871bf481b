package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Translation for upstreams that speak only MCP 2026-07-28, which has no
// initialize, no sessions and no server→client requests: every request
// carries the client's protocol version, capabilities and info in its
// _meta and names its method in headers. The bridge learns what the
// upstream speaks from server/discover at a client's initialize, answers
// that initialize itself from the discovery (capabilities, server info,
// instructions) in the legacy version the client asked for, keeps the
// client's initialize in the session, and from then on stamps each of the
// client's requests; what the new revision dropped (ping,
// logging/setLevel, client notifications) it answers or absorbs itself.
// Multi-round-trip results (input requests) become server→client requests
// (inputs.go); list-changed and resource notifications come from one
// subscriptions/listen stream per session (listen.go). A client
// asking server/discover is told, as by an initialize-era server, that
// there is no such method.

// modernVersion is the initialize-less revision the bridge speaks upstream.
const modernVersion = "2026-07-28"

// legacyVersions are the initialize-based revisions, oldest first; the
// bridge answers a translated initialize with the client's own if listed,
// else the newest.
var legacyVersions = []string{"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"}

// discoveryTTL is how long what server/discover said is trusted; an
// upstream changing era (a rollout) is noticed within it.
const discoveryTTL = time.Minute

// _meta keys of the 2026-07-28 request envelope.
const (
	metaProtocolVersion    = "io.modelcontextprotocol/protocolVersion"
	metaClientCapabilities = "io.modelcontextprotocol/clientCapabilities"
	metaClientInfo         = "io.modelcontextprotocol/clientInfo"
	metaLogLevel           = "io.modelcontextprotocol/logLevel"
	metaServerInfo         = "io.modelcontextprotocol/serverInfo"
)

// discovery is what an upstream's server/discover said of it.
type discovery struct {
	modernOnly   bool // it lists modernVersion and no initialize-based version
	capabilities json.RawMessage
	serverInfo   json.RawMessage
	instructions string
	at           time.Time
}

// discoveryCache holds the upstream's last discovery.
type discoveryCache struct {
	mu   sync.Mutex
	last *discovery
}

// translates reports whether a client's initialize is to be answered by
// the bridge (the upstream speaks only 2026-07-28), with the discovery to
// answer it from. Whatever cannot be discovered is relayed as it comes:
// the upstream's own answer to initialize tells the client best.
func (b *Bridge) translates(ctx context.Context, client http.Header) (*discovery, bool) {
	if b.cfg.UpstreamEra == EraLegacy {
		return nil, false
	}
	d, err := b.discover(ctx, client)
	switch {
	case err != nil:
		if b.cfg.UpstreamEra == EraModern {
			b.log.Warn("discovering the upstream", zap.Error(err))
		} else {
			b.log.Debug("discovering the upstream: relaying initialize", zap.Error(err))
		}
		return nil, false
	case b.cfg.UpstreamEra == EraModern || d.modernOnly:
		return d, true
	}
	return nil, false
}

// discover asks the upstream which revisions it speaks, or returns the
// answer of the last minute.
func (b *Bridge) discover(ctx context.Context, client http.Header) (*discovery, error) {
	b.discovered.mu.Lock()
	last := b.discovered.last
	b.discovered.mu.Unlock()
	if last != nil && time.Since(last.at) < discoveryTTL {
		return last, nil
	}
	d, err := b.askDiscover(ctx, client)
	if err != nil {
		return nil, err
	}
	b.discovered.mu.Lock()
	defer b.discovered.mu.Unlock()
	if prev := b.discovered.last; prev == nil || prev.modernOnly != d.modernOnly {
		if d.modernOnly {
			b.log.Info("the upstream speaks only MCP " + modernVersion + ": translating for legacy clients")
		} else {
			b.log.Info("the upstream speaks initialize-based MCP revisions: relaying")
		}
	}
	b.discovered.last = d
	return d, nil
}

// askDiscover sends server/discover in the 2026-07-28 envelope.
func (b *Bridge) askDiscover(ctx context.Context, client http.Header) (*discovery, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.UpstreamHeaderTimeout)
	defer cancel()
	body := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":"mcp-sse-bridge-discover","method":"server/discover","params":{"_meta":{%q:%q,%q:{},%q:{"name":"caddy-mcp-sse-bridge","version":"1"}}}}`,
		metaProtocolVersion, modernVersion, metaClientCapabilities, metaClientInfo)
	header := client.Clone()
	if header == nil {
		header = http.Header{}
	}
	header.Set("Mcp-Method", "server/discover")
	resp, err := b.do(ctx, labelDiscover, http.MethodPost, &sessionstore.Session{Translated: true}, header, body, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		// About the caller, not the upstream: relay, and ask again.
		return nil, fmt.Errorf("server/discover: upstream answered HTTP %d", resp.StatusCode)
	}
	// Whatever else an upstream answers, it said which era it is of: a
	// result lists its versions; an error (a version error, an unknown
	// method, a status without JSON-RPC) is a legacy upstream's.
	d := &discovery{at: time.Now()}
	msg, err := b.firstResponse(resp)
	if err != nil {
		return d, nil
	}
	var answer struct {
		Result *struct {
			Meta              map[string]json.RawMessage `json:"_meta"`
			SupportedVersions []string                   `json:"supportedVersions"`
			Capabilities      json.RawMessage            `json:"capabilities"`
			Instructions      string                     `json:"instructions"`
		} `json:"result"`
	}
	if json.Unmarshal(msg, &answer) == nil && answer.Result != nil {
		d.modernOnly = modernOnly(answer.Result.SupportedVersions)
		d.capabilities, d.instructions = answer.Result.Capabilities, answer.Result.Instructions
		d.serverInfo = answer.Result.Meta[metaServerInfo]
	}
	return d, nil
}

// modernOnly reports whether versions hold modernVersion and no
// initialize-based revision: a dual-era upstream still takes initialize,
// which relaying keeps exact.
func modernOnly(versions []string) bool {
	if !slices.Contains(versions, modernVersion) {
		return false
	}
	for _, v := range versions {
		if slices.Contains(legacyVersions, v) {
			return false
		}
	}
	return true
}

// firstResponse reads the first JSON-RPC response of an upstream answer,
// JSON or an event stream, whatever its status.
func (b *Bridge) firstResponse(resp *http.Response) ([]byte, error) {
	var found []byte
	onMessage := func(msg []byte) bool {
		if env, err := PeekEnvelope(msg); err == nil && env.Kind == KindResponse && found == nil {
			found = append([]byte(nil), msg...)
			return false
		}
		return true
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch mt {
	case "text/event-stream":
		if _, _, _, err := b.relayEvents(resp.Body, "", onMessage, nil); err != nil && found == nil {
			return nil, err
		}
	case "application/json":
		body, err := io.ReadAll(io.LimitReader(resp.Body, b.cfg.MaxMessageSize))
		if err != nil {
			return nil, err
		}
		if json.Valid(body) {
			onMessage(body)
		}
	}
	if found == nil {
		return nil, fmt.Errorf("upstream answered HTTP %d without a JSON-RPC response", resp.StatusCode)
	}
	return found, nil
}

// initializeLocally answers a client's initialize for a translated session
// from the upstream's discovery, and records the session as translated.
func (b *Bridge) initializeLocally(ctx context.Context, c *call, d *discovery) {
	version := legacyVersionOf(c.msg)
	result := map[string]any{
		"protocolVersion": version,
		"capabilities":    legacyCapabilities(d.capabilities),
		"serverInfo":      json.RawMessage(rawOr(d.serverInfo, `{"name":"caddy-mcp-sse-bridge","version":"1"}`)),
	}
	if d.instructions != "" {
		result["instructions"] = d.instructions
	}
	sess, err := b.store.Update(ctx, c.sessionID, func(s *sessionstore.Session) error {
		markTranslated(s, c.msg, false)
		forgetSettings(s) // the client starts over
		return nil
	})
	if err != nil {
		b.failUpstream(c, "recording the session", err)
		return
	}
	b.sessionCache.drop(c.sessionID)
	if err := b.store.RememberInitialize(ctx, sess.Fingerprint, sess.Upstream, c.msg, b.cfg.InitializeTTL); err != nil {
		b.log.Debug("remembering the caller's initialize", zap.String("session", shortID(c.sessionID)), zap.Error(err))
	}
	b.answerLocally(c, result)
}

// eraChanged recognises an upstream that no longer takes the session's
// initialize-era version: 2026-07-28's version error, or the plain 400
// go-sdk sends for a version it does not serve.
func eraChanged(status int, body []byte) bool {
	return status == http.StatusBadRequest &&
		(bytes.Contains(body, []byte("Unsupported protocol version")) || bytes.Contains(body, fmt.Appendf(nil, `"code":%d`, codeUnsupportedVersion)))
}

// translateFromNow handles an upstream that changed era under a relayed
// session (a rollout to a server of 2026-07-28 only): discovery is asked
// again, and if the upstream now speaks only that revision the session is
// translated from now on, with its client's initialize.
func (b *Bridge) translateFromNow(ctx context.Context, c *call, sess *sessionstore.Session) (*sessionstore.Session, bool) {
	b.forgetDiscovery()
	if _, ok := b.translates(ctx, c.client); !ok || sess.Translated {
		return nil, false
	}
	init := sess.Initialize
	if len(init) == 0 {
		init = minimalInitialize(sess.ProtocolVersion)
	}
	fresh, err := b.reviveTranslated(ctx, sess, init)
	if err != nil {
		b.log.Warn("translating a session whose upstream changed era", zap.String("session", shortID(sess.ID)), zap.Error(err))
		return nil, false
	}
	b.sessionCache.drop(sess.ID)
	b.signalUpstreamSession(ctx, sess.ID) // the owner's notification stream replaces the GET stream
	b.log.Info("the upstream no longer takes the session's version: translated from now on", zap.String("session", shortID(sess.ID)))
	return fresh, true
}

// Error codes of 2026-07-28 (SEP-2575): a request without the client
// capabilities it needs, or of a version the server does not speak.
const (
	codeMissingCapabilities = -32021
	codeUnsupportedVersion  = -32022
)

// leftModernEra recognises what a server of the initialize era answers a
// request of 2026-07-28: the version refused (eraChanged), or any other
// 400 or 404 that is not one of the new revision's own refusals (a stateful
// server wants a session, or to be initialised, and says so in plain text
// or under a code of its own).
func leftModernEra(status int, body []byte) bool {
	if status != http.StatusBadRequest && status != http.StatusNotFound {
		return false
	}
	if eraChanged(status, body) {
		return true
	}
	var refusal struct {
		Error *struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &refusal) != nil || refusal.Error == nil {
		return true
	}
	switch refusal.Error.Code {
	case codeMethodNotFound, codeInvalidParams, codeMissingCapabilities:
		return false
	}
	return true
}

// relayFromNow handles an upstream that went back to initialize-based
// revisions under a translated session (a rollout rolled back): discovery
// is asked again, and if the upstream takes initialize now, the session
// gets an upstream session with its client's initialize and is relayed from
// now on. It returns that session, or nil when the upstream is still of
// 2026-07-28 only (the refusal is the call's answer) or cannot be
// initialised.
func (b *Bridge) relayFromNow(ctx context.Context, c *call, sess *sessionstore.Session) *sessionstore.Session {
	b.forgetDiscovery()
	if _, ok := b.translates(ctx, c.client); ok {
		return nil
	}
	lock := b.reinitLock(sess.ID)
	lock.Lock()
	defer lock.Unlock()
	cur, err := b.store.Get(ctx, sess.ID)
	if err != nil {
		return nil
	}
	if !cur.Translated {
		return cur // relayed already, by a concurrent call
	}
	init := cur.Initialize
	if len(init) == 0 {
		init = minimalInitialize(cur.ProtocolVersion)
	}
	relayed := *cur
	relayed.Translated = false
	fresh, err := b.openUpstreamSession(ctx, &relayed, init, c.client)
	if err != nil {
		b.log.Warn("relaying a session whose upstream went back to initialize", zap.String("session", shortID(sess.ID)), zap.Error(err))
		return nil
	}
	b.sessionCache.drop(sess.ID)
	b.log.Info("the upstream takes initialize again: the session is relayed from now on", zap.String("session", shortID(sess.ID)))
	return fresh
}

// forgetDiscovery makes the next discover ask the upstream.
func (b *Bridge) forgetDiscovery() {
	b.discovered.mu.Lock()
	b.discovered.last = nil
	b.discovered.mu.Unlock()
}

// legacyVersionOf is the version to answer an initialize with: the one it
// asks for if the bridge knows it, else the newest.
func legacyVersionOf(initialize []byte) string {
	var req struct {
		Params struct {
			ProtocolVersion string `json:"protocolVersion"`
		} `json:"params"`
	}
	_ = json.Unmarshal(initialize, &req) // checked as JSON-RPC already; bad params get the newest
	if slices.Contains(legacyVersions, req.Params.ProtocolVersion) {
		return req.Params.ProtocolVersion
	}
	return legacyVersions[len(legacyVersions)-1]
}

// reviveTranslated makes a returning client's new session a translated
// one initialised with its remembered initialize: an upstream of
// 2026-07-28 has no session to open.
func (b *Bridge) reviveTranslated(ctx context.Context, cur *sessionstore.Session, init []byte) (*sessionstore.Session, error) {
	return b.store.Update(ctx, cur.ID, func(s *sessionstore.Session) error {
		markTranslated(s, init, true)
		return nil
	})
}

// markTranslated makes s a translated session of the client that sent
// init (its version is the one the bridge answered), initialised already
// or not. What the client asked of its session (settings.go) is kept.
func markTranslated(s *sessionstore.Session, init []byte, initialized bool) {
	s.Translated = true
	s.UpstreamSessionID, s.ProtocolVersion = "", legacyVersionOf(init)
	s.Initialize, s.Initialized = init, initialized
	// No upstream GET stream in this revision: nothing to wait for.
	s.StreamReadyFor, s.StreamLastEventID = streamReadyMark(""), ""
}

// legacyCapabilities is what a legacy client is told the upstream can do:
// its discovered capabilities, list-changed and resource subscriptions
// included (listen.go), without the new revision's extensions.
func legacyCapabilities(discovered json.RawMessage) map[string]json.RawMessage {
	caps := map[string]json.RawMessage{}
	_ = json.Unmarshal(discovered, &caps) // none discovered: none offered
	delete(caps, "extensions")
	return caps
}

// rawOr is raw, or fallback when raw is empty or null.
func rawOr(raw json.RawMessage, fallback string) []byte {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(raw, []byte("null")) {
		return []byte(fallback)
	}
	return raw
}

// answerLocally answers a request with a result the bridge made.
func (b *Bridge) answerLocally(c *call, result any) {
	c.report(&upstreamStatus{code: http.StatusAccepted})
	data, err := json.Marshal(result)
	if err != nil {
		b.fail(c, "internal", "encoding the bridge's answer")
		return
	}
	out := append(append(append([]byte(`{"jsonrpc":"2.0","id":`), c.env.ID...), `,"result":`...), data...)
	b.answer(c, append(out, '}'))
}

// translatedLocally serves what a translated session's client sends that
// the 2026-07-28 revision dropped; it reports false for what goes upstream.
func (b *Bridge) translatedLocally(ctx context.Context, c *call) bool {
	switch {
	case c.env.Kind == KindResponse:
		// An answer to an input request the bridge sent on the upstream's
		// behalf (inputs.go), or to nothing asked.
		b.recordInput(ctx, c)
		c.report(&upstreamStatus{code: http.StatusAccepted})
		return true
	case c.env.Kind == KindNotification:
		// Cancellation is closing the request's stream in 2026-07-28
		// (forward took it: takeCancellation), and roots are asked for
		// again when needed: nothing to tell.
		if c.env.Method == "notifications/initialized" {
			// The stream owner opens the session's notification stream.
			b.markInitialized(ctx, c.sessionID)
		}
		c.report(&upstreamStatus{code: http.StatusAccepted})
		return true
	case c.env.Method == "ping":
		b.answerLocally(c, struct{}{})
		return true
	case clientSetting(c.env.Method):
		b.changeSetting(ctx, c) // settings.go
		return true
	}
	return false
}

// modernRequest stamps a client's request with the 2026-07-28 envelope:
// the _meta of the client's initialize, and the method headers.
func modernRequest(msg []byte, env Envelope, sess *sessionstore.Session) ([]byte, http.Header, error) {
	var in struct {
		Params json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(msg, &in); err != nil {
		return nil, nil, err
	}
	params := map[string]json.RawMessage{}
	if len(in.Params) > 0 && !bytes.Equal(in.Params, []byte("null")) {
		if err := json.Unmarshal(in.Params, &params); err != nil {
			return nil, nil, errors.New("params must be an object")
		}
	}
	meta := map[string]json.RawMessage{}
	if raw := params["_meta"]; len(raw) > 0 {
		if err := json.Unmarshal(raw, &meta); err != nil {
			return nil, nil, errors.New("params._meta must be an object")
		}
	}
	var client struct {
		Params struct {
			Capabilities json.RawMessage `json:"capabilities"`
			ClientInfo   json.RawMessage `json:"clientInfo"`
		} `json:"params"`
	}
	_ = json.Unmarshal(sess.Initialize, &client) // recorded when it was answered
	meta[metaProtocolVersion], _ = json.Marshal(modernVersion)
	meta[metaClientCapabilities] = rawOr(client.Params.Capabilities, "{}")
	if len(client.Params.ClientInfo) > 0 {
		meta[metaClientInfo] = client.Params.ClientInfo
	}
	if sess.LogLevel != "" {
		meta[metaLogLevel], _ = json.Marshal(sess.LogLevel)
	}
	params["_meta"], _ = json.Marshal(meta)
	body, err := encodeRequest(env.ID, env.Method, params)
	if err != nil {
		return nil, nil, err
	}
	return body, methodHeaders(env.Method, in.Params), nil
}

// encodeRequest is a JSON-RPC request with its params as given.
func encodeRequest(id json.RawMessage, method string, params map[string]json.RawMessage) ([]byte, error) {
	return json.Marshal(struct {
		JSONRPC string                     `json:"jsonrpc"`
		ID      json.RawMessage            `json:"id"`
		Method  string                     `json:"method"`
		Params  map[string]json.RawMessage `json:"params"`
	}{"2.0", id, method, params})
}

// methodHeaders are the headers a 2026-07-28 request names its method in,
// and the tool, prompt or resource it acts on, so that gateways route
// without parsing.
func methodHeaders(method string, params json.RawMessage) http.Header {
	header := http.Header{"Mcp-Method": {method}}
	var named struct {
		Name string `json:"name"`
		URI  string `json:"uri"`
	}
	switch method {
	case "tools/call", "prompts/get":
		if json.Unmarshal(params, &named) == nil && named.Name != "" {
			header.Set("Mcp-Name", named.Name)
		}
	case "resources/read":
		if json.Unmarshal(params, &named) == nil && named.URI != "" {
			header.Set("Mcp-Name", named.URI)
		}
	}
	return header
}

// inputRequired reports whether a translated answer asks the client for
// input (a multi-round-trip result), which is not translated yet.
func inputRequired(msg []byte) bool {
	if !bytes.Contains(msg, []byte(`"input_required"`)) {
		return false
	}
	var r struct {
		Result struct {
			ResultType string `json:"resultType"`
		} `json:"result"`
	}
	return json.Unmarshal(msg, &r) == nil && r.Result.ResultType == "input_required"
}

// forwardTranslated sends a translated session's request upstream in the
// 2026-07-28 envelope and relays the answer under the client's id; an
// answer asking the client for input is followed by the rounds that get it
// (inputs.go). It returns the session to relay the request in instead when
// the upstream went back to initialize-based revisions, else nil.
func (b *Bridge) forwardTranslated(ctx context.Context, c *call, sess *sessionstore.Session) *sessionstore.Session {
	if !b.track(ctx, c, sess) {
		return nil
	}
	ctx, stop := b.cancellable(ctx, c)
	defer stop()
	return b.translatedRounds(ctx, c, sess, c.msg, c.env, 0)
}

// translatedRounds sends a translated call (msg, from round first on) and
// the rounds of input requests that follow until it is answered; see
// forwardTranslated.
func (b *Bridge) translatedRounds(ctx context.Context, c *call, sess *sessionstore.Session, msg []byte, env Envelope, first int) *sessionstore.Session {
	for round := first; ; round++ {
		body, header, err := modernRequest(msg, env, sess)
		if err != nil {
			c.report(&upstreamStatus{code: http.StatusAccepted})
			b.answer(c, errorMessage(c.env.ID, codeInvalidParams, "invalid request: "+err.Error()))
			return nil
		}
		if env.Method == "tools/call" {
			b.addParamHeaders(ctx, c, sess, header)
		}
		if !b.sendModern(ctx, c, sess, body, header, round == 0) || c.inputRequired == nil {
			return c.relayAs
		}
		if round == maxInputRounds {
			b.fail(c, "input_required", fmt.Sprintf("the upstream still asked for input after %d rounds", maxInputRounds))
			return nil
		}
		asked := c.inputRequired
		c.inputRequired = nil
		var ok bool
		if msg, env, ok = b.retryWithInputs(ctx, c, asked, round); !ok {
			return nil
		}
	}
}

// hidesModernEra answers a client's server/discover as a server of the
// initialize era does (method not found) when the bridge translates for
// the upstream: a client that tries 2026-07-28 first (go-sdk 1.8 does, on
// any transport) then initializes, and is translated for like any legacy
// client, rather than speaking a revision over a transport that never had
// it. It reports whether it answered.
func (b *Bridge) hidesModernEra(ctx context.Context, c *call) bool {
	if _, ok := b.translates(ctx, c.client); !ok {
		return false
	}
	c.report(&upstreamStatus{code: http.StatusAccepted})
	b.answer(c, errorMessage(c.env.ID, codeMethodNotFound, "Method not found: server/discover"))
	return true
}

// sendModern sends one request of the 2026-07-28 revision and relays its
// answer; it reports whether the answer asks for input (c.inputRequired)
// rather than answering the call. On a first round (mayRevert), a refusal
// of the upstream that went back to initialize-based revisions sets
// c.relayAs instead of answering.
func (b *Bridge) sendModern(ctx context.Context, c *call, sess *sessionstore.Session, body []byte, header http.Header, mayRevert bool) bool {
	for k, v := range c.client {
		header[k] = v
	}
	sent := time.Now()
	resp, err := b.do(ctx, methodLabel(c.env), http.MethodPost, sess, header, body, "")
	if err != nil {
		b.failUpstream(c, "forwarding", err)
		return false
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		c.report(&upstreamStatus{code: resp.StatusCode})
		b.relayResponse(ctx, sess, c, resp, false)
		b.metrics.upstreamTook(methodLabel(c.env), time.Since(sent))
		return c.inputRequired != nil
	}
	errBody, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	if mayRevert && leftModernEra(resp.StatusCode, errBody) {
		if c.relayAs = b.relayFromNow(ctx, c, sess); c.relayAs != nil {
			return false
		}
	}
	b.settleRefusal(c, resp, errBody)
	return false
}

// cancellable registers a translated call forwarded here so that the
// client's notifications/cancelled closes the call's upstream stream: at
// once when it reaches this replica, within answeredPoll when another
// replica took it and claimed the call's record (claimCancelled). stop
// unregisters the call.
func (b *Bridge) cancellable(ctx context.Context, c *call) (context.Context, func()) {
	ctx, unwatch := untilSettled(ctx, b.answeredCheck(c))
	ctx, cancel := context.WithCancel(ctx)
	key := cancelKey(c.env.ID)
	b.mu.Lock()
	calls := b.translating[c.sessionID]
	if calls == nil {
		calls = map[string]context.CancelFunc{}
		b.translating[c.sessionID] = calls
	}
	calls[key] = cancel
	b.mu.Unlock()
	return ctx, func() {
		cancel()
		unwatch()
		b.mu.Lock()
		defer b.mu.Unlock()
		if calls := b.translating[c.sessionID]; calls != nil {
			delete(calls, key)
			if len(calls) == 0 {
				delete(b.translating, c.sessionID)
			}
		}
	}
}

// cancelTranslated closes the upstream stream of the cancelled translated
// call requestID, if it is forwarded here.
func (b *Bridge) cancelTranslated(sessionID string, requestID json.RawMessage) {
	b.mu.Lock()
	cancel := b.translating[sessionID][cancelKey(requestID)]
	b.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
