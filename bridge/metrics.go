package bridge

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Metrics are the bridge's Prometheus collectors. One set serves every
// bridge of a process, so that counters and gauges outlive configuration
// reloads; the Caddy module registers them into each configuration's
// registry. Labels stay low-cardinality: never a session id, a caller or a
// tool name, and JSON-RPC methods only from MCP's own list.
type Metrics struct {
	streamsOpen       prometheus.Gauge
	sessionsStarted   prometheus.Counter
	sessionsEnded     *prometheus.CounterVec
	messages          *prometheus.CounterVec
	upstreamRequests  *prometheus.CounterVec
	upstreamDuration  *prometheus.HistogramVec
	upstreamErrors    *prometheus.CounterVec
	reinitializations prometheus.Counter
	resumes           *prometheus.CounterVec
	adoptions         *prometheus.CounterVec
	errorAnswers      *prometheus.CounterVec
	refused           *prometheus.CounterVec
	storeDuration     *prometheus.HistogramVec
	storeErrors       *prometheus.CounterVec
	mailboxDepth      prometheus.Histogram
}

const metricsNamespace = "caddy_mcp_sse_bridge"

// NewMetrics makes the collectors, unregistered.
func NewMetrics() *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Name: name, Help: help}, labels)
	}
	return &Metrics{
		streamsOpen: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metricsNamespace, Name: "streams_open",
			Help: "Legacy event streams open in this process."}),
		sessionsStarted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Name: "sessions_started_total",
			Help: "Bridge sessions created."}),
		sessionsEnded: counter("sessions_ended_total", "Bridge sessions removed, by reason (expired, uninitialized, deleted).", "reason"),
		messages:      counter("messages_total", "JSON-RPC messages relayed, by direction and kind.", "direction", "kind"),
		upstreamRequests: counter("upstream_requests_total",
			"Upstream HTTP requests, by JSON-RPC method (or stream, delete, probe, response, other) and HTTP status (or error).", "method", "code"),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace,
			Name: "upstream_request_duration_seconds", Help: "Time from sending a message upstream until its answer was relayed.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}}, []string{"method"}),
		upstreamErrors:    counter("upstream_errors_total", "Upstream failures that reached a client as an error, by reason.", "reason"),
		reinitializations: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Name: "reinitializations_total", Help: "Upstream sessions opened again after the upstream lost one."}),
		resumes:           counter("resumes_total", "Upstream streams resumed with Last-Event-ID: a request's response stream, or the session's GET stream.", "kind"),
		adoptions:         counter("adoptions_total", "Sessions given back to a returning client: by its stream (get), its first call (post), or revived with a new upstream session (revive).", "how"),
		errorAnswers:      counter("error_answers_total", "JSON-RPC errors the bridge made for client requests, by reason.", "reason"),
		refused:           counter("refused_total", "Requests refused before anything was forwarded, by reason (the limit or check).", "reason"),
		storeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace,
			Name: "store_operation_duration_seconds", Help: "Session store calls, by operation.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}}, []string{"op"}),
		storeErrors: counter("store_errors_total", "Session store calls that failed, by operation.", "op"),
		mailboxDepth: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metricsNamespace, Name: "mailbox_depth",
			Help:    "Messages waiting for a stream each time it reads its mailbox (at most 64 per read).",
			Buckets: []float64{0, 1, 2, 4, 8, 16, 32, 64}}),
	}
}

// Collectors lists the collectors, for registration.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.streamsOpen, m.sessionsStarted, m.sessionsEnded, m.messages, m.upstreamRequests,
		m.upstreamDuration, m.upstreamErrors, m.reinitializations, m.resumes, m.adoptions, m.errorAnswers, m.refused,
		m.storeDuration, m.storeErrors, m.mailboxDepth}
}

// The recording methods do nothing on a nil *Metrics (a bridge without
// metrics).

func (m *Metrics) streamOpened(delta float64) {
	if m != nil {
		m.streamsOpen.Add(delta)
	}
}

func (m *Metrics) sessionStarted() {
	if m != nil {
		m.sessionsStarted.Inc()
	}
}

func (m *Metrics) sessionEnded(reason string) {
	if m != nil {
		m.sessionsEnded.WithLabelValues(reason).Inc()
	}
}

// Directions of messagesTotal.
const (
	fromClient = "client_to_upstream"
	toClient   = "upstream_to_client"
)

func (m *Metrics) message(direction string, kind Kind) {
	if m != nil {
		m.messages.WithLabelValues(direction, kind.String()).Inc()
	}
}

// upstreamRequest counts one upstream request; status 0 means no answer.
func (m *Metrics) upstreamRequest(method string, status int) {
	if m == nil {
		return
	}
	code := "error"
	if status > 0 {
		code = strconv.Itoa(status)
	}
	m.upstreamRequests.WithLabelValues(method, code).Inc()
}

func (m *Metrics) upstreamTook(method string, took time.Duration) {
	if m != nil {
		m.upstreamDuration.WithLabelValues(method).Observe(took.Seconds())
	}
}

func (m *Metrics) upstreamFailed(reason string) {
	if m != nil {
		m.upstreamErrors.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) reinitialized() {
	if m != nil {
		m.reinitializations.Inc()
	}
}

func (m *Metrics) resumed(kind string) {
	if m != nil {
		m.resumes.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) adopted(how string) {
	if m != nil {
		m.adoptions.WithLabelValues(how).Inc()
	}
}

func (m *Metrics) errorAnswered(reason string) {
	if m != nil {
		m.errorAnswers.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) refusedFor(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) mailboxRead(n int) {
	if m != nil {
		m.mailboxDepth.Observe(float64(n))
	}
}

// observeStore is the sessionstore.Observer of the bridge's store: answers
// such as "not found" or "exists" are results, not failures.
func (m *Metrics) observeStore(op string, took time.Duration, err error) {
	m.storeDuration.WithLabelValues(op).Observe(took.Seconds())
	if err != nil && storeFailure(err) {
		m.storeErrors.WithLabelValues(op).Inc()
	}
}

func storeFailure(err error) bool {
	for _, answer := range []error{sessionstore.ErrNotFound, sessionstore.ErrExists, sessionstore.ErrNotOwner,
		sessionstore.ErrAdoptionPending, sessionstore.ErrTooManySessions, sessionstore.ErrTooManyForCaller,
		sessionstore.ErrMailboxFull} {
		if errors.Is(err, answer) {
			return false
		}
	}
	return true
}

// isMCPMethod reports whether a JSON-RPC method is one MCP defines; others
// are counted as "other", so that a client cannot grow the label set.
func isMCPMethod(method string) bool {
	switch method {
	case "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
		"resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
		"completion/complete", "logging/setLevel", "tasks/get", "tasks/list", "tasks/result", "tasks/cancel",
		"notifications/initialized", "notifications/cancelled", "notifications/progress",
		"notifications/roots/list_changed", "notifications/message", "server/discover", "subscriptions/listen":
		return true
	}
	return false
}

// Method labels of upstream requests that carry no client message.
const (
	labelStream   = "stream"               // the session's GET stream, or a resumed response stream
	labelDelete   = "delete"               // the end of an upstream session
	labelProbe    = "probe"                // the authorization probe
	labelListen   = "subscriptions/listen" // a translated session's notification stream
	labelDiscover = "server/discover"      // which MCP era the upstream is of
)

// methodLabel is the method label of an upstream POST carrying msg.
func methodLabel(env Envelope) string {
	switch {
	case env.Kind == KindResponse:
		return "response"
	case isMCPMethod(env.Method):
		return env.Method
	default:
		return "other"
	}
}

// shortID is how logs name a session (sessionstore.ShortID).
func shortID(id string) string { return sessionstore.ShortID(id) }

// noteMessage counts a message relayed in direction, and logs it at debug
// level without its payload.
func (b *Bridge) noteMessage(sessionID, direction string, env Envelope) {
	b.metrics.message(direction, env.Kind)
	// Checked first: on every message, the fields are built only when
	// debug logging is on.
	if ce := b.log.Check(zap.DebugLevel, "message"); ce != nil {
		ce.Write(zap.String("session", shortID(sessionID)), zap.String("direction", direction),
			zap.Stringer("kind", env.Kind), zap.String("method", methodLabel(env)))
	}
}

// sessionStarted counts and logs a session just created for r.
func (b *Bridge) sessionStarted(r *http.Request, sess *sessionstore.Session) {
	b.metrics.sessionStarted()
	caller := "anonymous"
	if b.hasIdentity(r) {
		caller = "authenticated"
	}
	b.log.Info("session started", zap.String("session", shortID(sess.ID)), zap.String("caller", caller))
}

// sessionEnded counts and logs a session just removed from the store.
func (b *Bridge) sessionEnded(s *sessionstore.Session, reason string) {
	b.metrics.sessionEnded(reason)
	b.log.Info("session ended", zap.String("session", shortID(s.ID)), zap.String("reason", reason),
		zap.Duration("duration", b.now().Sub(s.CreatedAt).Round(time.Millisecond)), zap.Uint64("delivered", s.Delivered))
}
