package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// What a client asked of its session, its log level (logging/setLevel) and
// the resources it subscribed to (resources/subscribe), lives in the
// upstream's session, which the bridge replaces when the upstream loses it
// (a restart: reinitialize), when the client returns to a lost session
// (revive), or when the upstream rolls back from 2026-07-28 (relayFromNow).
// A legacy client cannot know that happened, so the bridge keeps those
// settings in the session record, whatever the session's era, and asks
// them again of every upstream session it opens; without that, a client
// would silently stop receiving its resource updates and log messages. A
// translated session serves them from the record (modern.go, listen.go). A
// client's own initialize starts over without them.

// clientSetting reports whether a request of method changes what the
// client asked of its session.
func clientSetting(method string) bool {
	switch method {
	case "logging/setLevel", "resources/subscribe", "resources/unsubscribe":
		return true
	}
	return false
}

// The bounds on what a session keeps of its client's settings, with
// maxSubscriptions: the record is loaded by every POST of the session.
const (
	maxSubscriptionURI   = 2 << 10  // bytes of one URI
	maxSubscriptionBytes = 32 << 10 // bytes of all of a session's URIs
)

// errBadSetting is a setting's request without the parameter it needs, or
// with one out of bounds; errOverBound, one that would take the session's
// settings past their bounds.
var (
	errBadSetting = errors.New("invalid params")
	errOverBound  = errors.New("over the session's bounds")
)

// logLevels are the levels of logging/setLevel (RFC 5424's severities).
var logLevels = []string{"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}

// settingParams are the parameters of a client setting's request.
type settingParams struct {
	Level string `json:"level,omitempty"`
	URI   string `json:"uri,omitempty"`
}

// parseSetting reads a client setting's parameters; it fails when the one
// its method needs is missing or out of bounds.
func parseSetting(method string, msg []byte) (settingParams, error) {
	var req struct {
		Params settingParams `json:"params"`
	}
	_ = json.Unmarshal(msg, &req) // checked as JSON-RPC already; bad params are missing ones
	switch {
	case method == "logging/setLevel" && !slices.Contains(logLevels, req.Params.Level):
		return req.Params, fmt.Errorf("%w: %s needs params.level, one of %s", errBadSetting, method, strings.Join(logLevels, ", "))
	case method != "logging/setLevel" && req.Params.URI == "":
		return req.Params, fmt.Errorf("%w: %s needs params.uri", errBadSetting, method)
	case len(req.Params.URI) > maxSubscriptionURI:
		return req.Params, fmt.Errorf("%w: %s: params.uri longer than %d bytes", errBadSetting, method, maxSubscriptionURI)
	}
	return req.Params, nil
}

// applySetting changes s by the client setting method with p; errStale
// when nothing changes.
func applySetting(s *sessionstore.Session, method string, p settingParams) error {
	if method == "logging/setLevel" {
		if s.LogLevel == p.Level {
			return errStale
		}
		s.LogLevel = p.Level
		return nil
	}
	subscribe := method == "resources/subscribe"
	has := slices.Contains(s.Subscriptions, p.URI)
	switch {
	case subscribe == has:
		return errStale
	case subscribe && len(s.Subscriptions) >= maxSubscriptions:
		return fmt.Errorf("%w: more than %d subscriptions", errOverBound, maxSubscriptions)
	case subscribe && subscriptionBytes(s)+len(p.URI) > maxSubscriptionBytes:
		return fmt.Errorf("%w: subscriptions longer than %d KiB together", errOverBound, maxSubscriptionBytes>>10)
	case subscribe:
		s.Subscriptions = append(s.Subscriptions, p.URI)
	default:
		s.Subscriptions = slices.DeleteFunc(s.Subscriptions, func(u string) bool { return u == p.URI })
	}
	return nil
}

// subscriptionBytes is the length of all of s's subscribed URIs.
func subscriptionBytes(s *sessionstore.Session) int {
	n := 0
	for _, u := range s.Subscriptions {
		n += len(u)
	}
	return n
}

// forgetSettings clears what the client asked of its session: it sent
// initialize again.
func forgetSettings(s *sessionstore.Session) {
	s.LogLevel, s.Subscriptions = "", nil
}

// keepSetting records in the session the client setting c asks for; it
// reports whether the session changed. Its error is the client's
// (errBadSetting, errOverBound) or the store's.
func (b *Bridge) keepSetting(ctx context.Context, c *call) (bool, error) {
	p, err := parseSetting(c.env.Method, c.msg)
	if err != nil {
		return false, err
	}
	_, err = b.store.Update(ctx, c.sessionID, func(s *sessionstore.Session) error {
		return applySetting(s, c.env.Method, p)
	})
	switch {
	case errors.Is(err, errStale):
		return false, nil
	case err != nil:
		return false, err
	}
	b.sessionCache.drop(c.sessionID)
	return true, nil
}

// changeSetting serves a translated session's client setting: the bridge
// keeps it (the log level goes with every request, modern.go; the
// subscriptions make the owner listen for the new list, listen.go) and
// answers.
func (b *Bridge) changeSetting(ctx context.Context, c *call) {
	c.report(&upstreamStatus{code: http.StatusAccepted})
	changed, err := b.keepSetting(ctx, c)
	switch {
	case errors.Is(err, errBadSetting), errors.Is(err, errOverBound):
		b.answer(c, errorMessage(c.env.ID, codeInvalidParams, err.Error()))
		return
	case err != nil:
		b.log.Warn("recording what the client asked of its session", zap.String("session", shortID(c.sessionID)),
			zap.String("method", c.env.Method), zap.Error(err))
		b.fail(c, "internal", "the bridge could not record "+c.env.Method)
		return
	case changed && c.env.Method != "logging/setLevel":
		b.signalUpstreamSession(ctx, c.sessionID)
	}
	b.answerLocally(c, struct{}{})
}

// recordSetting keeps a relayed session's setting once the upstream has
// accepted it. A setting the bridge does not keep (out of its bounds) is
// relayed all the same, and a new upstream session does not get it.
func (b *Bridge) recordSetting(ctx context.Context, c *call) {
	_, err := b.keepSetting(ctx, c)
	switch {
	case errors.Is(err, errBadSetting), errors.Is(err, errOverBound):
		// The client's doing, at its request rate: not worth a warning.
		b.log.Debug("not keeping what the client asked of its session", zap.String("session", shortID(c.sessionID)), zap.Error(err))
	case err != nil:
		b.log.Warn("keeping what the client asked of its session", zap.String("session", shortID(c.sessionID)),
			zap.String("method", c.env.Method), zap.Error(err))
	}
}

// restoreTimeout bounds the requests that ask a new upstream session for
// the client's settings, all of them: they run with the session's lock
// held, and each is a quick exchange.
const restoreTimeout = 10 * time.Second

// restoreSettings asks a new upstream session what the client had asked of
// the one it replaces. The answers are the bridge's own and go nowhere; a
// refusal is logged, and the session goes on without that setting.
func (b *Bridge) restoreSettings(ctx context.Context, fresh *sessionstore.Session, client http.Header) {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	if fresh.LogLevel != "" {
		b.restoreSetting(ctx, fresh, client, 0, "logging/setLevel", "level", fresh.LogLevel)
	}
	for i, uri := range fresh.Subscriptions {
		if ctx.Err() != nil {
			b.log.Warn("the new upstream session did not take the client's subscriptions in time",
				zap.String("session", shortID(fresh.ID)), zap.Int("left", len(fresh.Subscriptions)-i))
			return
		}
		b.restoreSetting(ctx, fresh, client, i+1, "resources/subscribe", "uri", uri)
	}
}

// restoreSetting sends one of restoreSettings' requests, the n-th: method
// with its one parameter param set to value.
func (b *Bridge) restoreSetting(ctx context.Context, fresh *sessionstore.Session, client http.Header, n int, method, param, value string) {
	id, _ := json.Marshal("mcp-sse-bridge-restore-" + strconv.Itoa(n))
	quoted, _ := json.Marshal(value)
	body, err := encodeRequest(id, method, map[string]json.RawMessage{param: quoted})
	if err == nil {
		err = b.settingAnswer(ctx, fresh, client, method, body)
	}
	if err != nil && ctx.Err() == nil {
		b.log.Warn("asking a new upstream session what the client had asked of the old one",
			zap.String("session", shortID(fresh.ID)), zap.String("method", method), zap.Error(err))
	}
}

// settingAnswer sends a restored setting's request and checks its answer.
func (b *Bridge) settingAnswer(ctx context.Context, fresh *sessionstore.Session, client http.Header, method string, body []byte) error {
	resp, err := b.do(ctx, method, http.MethodPost, fresh, client, body, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := b.firstResponse(resp)
	if err != nil {
		return err
	}
	env, err := PeekEnvelope(answer)
	if err != nil {
		return err
	}
	if e := env.ErrorMember(answer); e != nil {
		return fmt.Errorf("refused: %s", e)
	}
	return nil
}
