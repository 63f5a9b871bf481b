// Package sessionstore defines where the bridge keeps its per-session state so
// that any replica can serve any request: the session record and the session's
// mailbox of messages waiting for the client's event stream.
//
// The interface speaks the bridge's language, not a database's. Implementations
// live in sub-packages (memory, redis) and must pass the storetest suite.
package sessionstore

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// Errors every implementation returns for the same conditions, so that the
// bridge can map them to HTTP statuses.
var (
	// ErrNotFound: no such session (never created, deleted or expired).
	ErrNotFound = errors.New("session not found")
	// ErrExists: Create was given an id that is already taken.
	ErrExists = errors.New("session already exists")
	// ErrTooManySessions: the store holds its maximum number of sessions.
	ErrTooManySessions = errors.New("too many sessions")
	// ErrTooManyForCaller: the session's caller holds its maximum number of
	// live sessions (Limits.MaxSessionsPerCaller).
	ErrTooManyForCaller = errors.New("too many sessions for this caller")
	// ErrMailboxFull: the session's mailbox holds its maximum number of
	// undelivered messages.
	ErrMailboxFull = errors.New("session mailbox full")
	// ErrNotOwner: the session is owned by another stream.
	ErrNotOwner = errors.New("session owned by another stream")
	// ErrAdoptionPending: Adoptable found no free session, but the caller
	// has one whose stream may belong to a replica that is dying (its lease
	// and heartbeat still run); asking again shortly may find it free.
	ErrAdoptionPending = errors.New("adoptable session still held")
	// ErrUnavailable wraps failures of the backing service (network, timeouts);
	// the bridge answers them with 503 and Retry-After.
	ErrUnavailable = errors.New("session store unavailable")
)

// PendingInputs are the input requests of one round of a translated call
// that the client was sent, and its answers so far.
type PendingInputs struct {
	// Keys are the upstream's names of the inputs, in the order of the
	// bridge's request ids.
	Keys []string `json:"keys"`
	// Answers holds the client's result for each key answered.
	Answers map[string]json.RawMessage `json:"answers,omitempty"`
	// Failed is the client's JSON-RPC error object for one of them: the
	// call fails with it.
	Failed json.RawMessage `json:"failed,omitempty"`
	// Request is the key of the call that asked (its record among the
	// requests in flight), Call the client's call as it came and
	// RequestState what the upstream wants back with the answers (both
	// kept only when small together), and Round the call's round of input
	// requests, from 0: what another replica needs to send the call again
	// with the answers, should the one forwarding it stop meanwhile.
	Request      string          `json:"request,omitempty"`
	Call         json.RawMessage `json:"call,omitempty"`
	RequestState json.RawMessage `json:"request_state,omitempty"`
	Round        int             `json:"round,omitempty"`
}

// CloneInputs returns a deep copy of inputs, for stores that hand out
// copies of the records they keep.
func CloneInputs(inputs map[string]*PendingInputs) map[string]*PendingInputs {
	if inputs == nil {
		return nil
	}
	out := make(map[string]*PendingInputs, len(inputs))
	for token, p := range inputs {
		c := &PendingInputs{Keys: append([]string(nil), p.Keys...), Failed: append(json.RawMessage(nil), p.Failed...),
			Request: p.Request, Call: append(json.RawMessage(nil), p.Call...),
			RequestState: append(json.RawMessage(nil), p.RequestState...), Round: p.Round}
		if p.Answers != nil {
			c.Answers = make(map[string]json.RawMessage, len(p.Answers))
			for k, v := range p.Answers {
				c.Answers[k] = append(json.RawMessage(nil), v...)
			}
		}
		out[token] = c
	}
	return out
}

// Session is the shared record of one bridge session: one legacy event stream
// and the upstream session behind it.
type Session struct {
	// ID is the bridge session id: the sessionId in the endpoint URL.
	ID string `json:"id"`
	// Upstream is the URL of the Streamable HTTP endpoint this session is
	// bridged to; a POST arriving through a bridge with another upstream is
	// refused.
	Upstream string `json:"upstream"`
	// Fingerprint identifies the caller (a hash of its credentials, never the
	// credentials themselves).
	Fingerprint string `json:"fingerprint"`
	// Caller names whoever the session counts against for
	// Limits.MaxSessionsPerCaller: the fingerprint for callers with
	// credentials, a keyed hash of the client address for anonymous ones.
	// Set at Create and never changed.
	Caller string `json:"caller,omitempty"`
	// UpstreamSessionID is the upstream's Mcp-Session-Id, empty for stateless
	// upstreams and before initialize.
	UpstreamSessionID string `json:"upstream_session_id,omitempty"`
	// ProtocolVersion is the version negotiated by initialize.
	ProtocolVersion string `json:"protocol_version,omitempty"`
	// Initialize is the client's initialize request, verbatim, replayed when
	// the upstream loses its session.
	Initialize json.RawMessage `json:"initialize,omitempty"`
	// Initialized is set once the upstream accepted notifications/initialized.
	Initialized bool `json:"initialized,omitempty"`
	// StreamReadyFor is the UpstreamSessionID for which the owner's upstream
	// GET stream is connected (or known to be unavailable), prefixed with
	// "s:"; requests wait for it, because an upstream in JSON-response mode
	// can send its requests to the client (sampling, elicitation) only there.
	StreamReadyFor string `json:"stream_ready_for,omitempty"`
	// StreamLastEventID is the id of the last event relayed from the
	// upstream GET stream of UpstreamSessionID, so that a new owner resumes
	// that stream where the old one stopped.
	StreamLastEventID string `json:"stream_last_event_id,omitempty"`
	// Translated is set when the upstream speaks only a revision without
	// initialize (2026-07-28): the bridge answered the client's initialize
	// itself and stamps every request; ProtocolVersion is then the version
	// the bridge negotiated with the client.
	Translated bool `json:"translated,omitempty"`
	// LogLevel is the level the client set with logging/setLevel: sent
	// with each request of a translated session, asked again of every new
	// upstream session of a relayed one.
	LogLevel string `json:"log_level,omitempty"`
	// Inputs are what the client of a translated session is being asked on
	// behalf of its calls that the upstream answered with input requests
	// (2026-07-28 multi-round-trip results), by a token the bridge minted:
	// any replica records the client's answers here, and the replica
	// forwarding the call retries it with them.
	Inputs map[string]*PendingInputs `json:"inputs,omitempty"`
	// Subscriptions are the resource URIs the client subscribed to: a
	// translated session's notification stream asks for them; every new
	// upstream session of a relayed one is asked to subscribe to them.
	Subscriptions []string `json:"subscriptions,omitempty"`
	// Owner names the stream holding the client's event stream as
	// "<replica>/<stream>", empty while the client is away; OwnerLeaseUntil
	// is when that claim lapses unless renewed. A claim also lapses when the
	// replica's heartbeat (Requests.Heartbeat) does.
	Owner           string    `json:"owner,omitempty"`
	OwnerLeaseUntil time.Time `json:"owner_lease_until"`
	// Delivered is the mailbox position the client's stream has reached
	// (updated by Ack); a stream that adopts the session resumes after it.
	Delivered uint64 `json:"delivered,omitempty"`
	// Link names the session this one stands in for: a stream that adopted
	// the caller's earlier session keeps its own id (the one in its endpoint
	// URL) and links it to the adopted one, whose state, mailbox and
	// requests then serve it. LinkHeld is set while the adoption awaits
	// confirmation (adopt_hold): the adopted session's messages are held
	// back and the link is dropped if the client POSTs initialize.
	Link     string `json:"link,omitempty"`
	LinkHeld bool   `json:"link_held,omitempty"`
	// NoAdopt is set once the client showed that it is new (it POSTed its
	// own initialize) or the session was revived: it never adopts another.
	NoAdopt bool `json:"no_adopt,omitempty"`
	// CreatedAt is when the legacy stream first opened.
	CreatedAt time.Time `json:"created_at"`
	// ReleasedAt is when the last stream let the session go (zero while a
	// stream holds it), for the admin API's idle time.
	ReleasedAt time.Time `json:"released_at,omitzero"`
	// ExpiresAt is when the session may be reaped: pushed forward while a
	// stream holds it, set to disconnect time plus the session TTL after.
	ExpiresAt time.Time `json:"expires_at"`
}

// Limits bound a store; implementations apply them in place (a
// configuration reload) through SetLimits. Zero means the default.
type Limits struct {
	// MaxSessions caps the number of sessions; Create fails beyond it.
	MaxSessions int
	// MaxPending caps the undelivered messages of one mailbox; Append fails
	// beyond it.
	MaxPending int
	// MaxSessionsPerCaller caps the live sessions (ExpiresAt after the new
	// session's CreatedAt) with one Caller; Create fails beyond it.
	MaxSessionsPerCaller int
}

// DefaultMaxSessionsPerCaller is the default of Limits.MaxSessionsPerCaller.
const DefaultMaxSessionsPerCaller = 1000

// Message is one entry of a session's mailbox.
type Message struct {
	// Seq orders the mailbox; it starts at 1 and only grows.
	Seq uint64
	// Control marks bridge-internal entries (for the stream owner, never sent
	// to the client), such as "the upstream session changed".
	Control bool
	// Data is one JSON-RPC message, or the control payload.
	Data []byte
}

// Store is everything the bridge keeps outside its process. All methods are
// safe for concurrent use; every method that changes state is atomic.
type Store interface {
	Sessions
	Mailboxes
	Requests
}

// Sessions keeps the session records.
type Sessions interface {
	// Create stores a new session. It fails with ErrTooManySessions when the
	// store is full, and with ErrTooManyForCaller when s.Caller (if set)
	// holds Limits.MaxSessionsPerCaller live sessions.
	Create(ctx context.Context, s *Session) error
	// Get returns a copy of the session.
	Get(ctx context.Context, id string) (*Session, error)
	// Update applies fn to the current record atomically and stores the result.
	// fn may run more than once; returning an error aborts the update.
	Update(ctx context.Context, id string, fn func(*Session) error) (*Session, error)
	// Delete removes the session, its mailbox and its requests. It reports
	// whether this call removed it, so that exactly one caller acts on an
	// expiry.
	Delete(ctx context.Context, id string) (bool, error)
	// Expired lists up to limit sessions whose ExpiresAt is before now.
	Expired(ctx context.Context, now time.Time, limit int) ([]*Session, error)
	// Adoptable returns the initialised session of the given caller, upstream
	// and protocol version (any version when protocolVersion is empty) that
	// has no live owner (Owner empty, its lease lapsed before now, or no live
	// heartbeat of the replica named in Owner) and was released most
	// recently (latest ExpiresAt). Without one it returns ErrAdoptionPending
	// if such a session exists with a live owner, else ErrNotFound. A client
	// that reconnects without Last-Event-ID gets its session back this way.
	Adoptable(ctx context.Context, fingerprint, upstream, protocolVersion string, now time.Time) (*Session, error)
	// RememberInitialize keeps a caller's latest initialize request for an
	// upstream for ttl, beyond the life of its sessions, so that a client
	// whose session is gone can be given a new one as it was initialised.
	RememberInitialize(ctx context.Context, fingerprint, upstream string, msg []byte, ttl time.Duration) error
	// RecallInitialize returns what RememberInitialize kept, or ErrNotFound.
	RecallInitialize(ctx context.Context, fingerprint, upstream string) ([]byte, error)
	// IdentityKey returns the store's secret key for fingerprints (at least
	// 32 random bytes, made by the first caller and the same for every
	// replica sharing the store), used when the configuration gives none.
	IdentityKey(ctx context.Context) ([]byte, error)
}

// Mailboxes keeps each session's messages for its stream.
type Mailboxes interface {
	// Append adds a message to the session's mailbox and wakes its readers.
	Append(ctx context.Context, id string, m Message) (uint64, error)
	// Read returns up to limit mailbox entries with Seq greater than after.
	Read(ctx context.Context, id string, after uint64, limit int) ([]Message, error)
	// Ack tells the store that entries up to seq reached the client, records
	// seq as the session's Delivered position, and may drop those entries,
	// keeping a short window for replay. If owner is not empty and not the
	// session's Owner, nothing changes and Ack returns ErrNotOwner: a stream
	// that was replaced must neither trim what its successor still has to
	// send nor keep sending.
	Ack(ctx context.Context, id, owner string, seq uint64) error
	// Subscribe returns a channel that receives a value (coalesced) whenever
	// the session's mailbox grows, and a function that ends the subscription.
	Subscribe(ctx context.Context, id string) (<-chan struct{}, func(), error)
}

// Request is a client request in flight upstream. It is recorded so that,
// should the replica forwarding it die, another one answers it: by resuming
// the upstream response stream, or with a JSON-RPC error.
type Request struct {
	// ID is the request's JSON-RPC id exactly as the client sent it.
	ID json.RawMessage `json:"id"`
	// Replica is the replica forwarding the request.
	Replica string `json:"replica"`
	// UpstreamSessionID is the upstream session the request went to.
	UpstreamSessionID string `json:"upstream_session_id,omitempty"`
	// LastEventID is the id of the last event relayed from the request's
	// upstream response stream, for resumption with Last-Event-ID.
	LastEventID string `json:"last_event_id,omitempty"`
}

// LapsedReplicaMemory is how long stores keep a replica whose heartbeat
// lapsed, for LapsedReplicas.
const LapsedReplicaMemory = time.Hour

// ShortID is how logs and errors name a session: enough to follow it, not
// enough to use it (a session id is a bearer secret of its client).
func ShortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// OwnerReplica returns the replica part of a Session.Owner value.
func OwnerReplica(owner string) string {
	replica, _, _ := strings.Cut(owner, "/")
	return replica
}

// Requests tracks requests in flight and which replicas are alive.
type Requests interface {
	// TrackRequest records a request in flight under key (unique within the
	// session). If a record with that key exists, it changes nothing and
	// returns ErrExists.
	TrackRequest(ctx context.Context, sessionID, key string, r Request) error
	// SetRequestEventID records the last event id relayed for the request; a
	// missing record is not an error.
	SetRequestEventID(ctx context.Context, sessionID, key, eventID string) error
	// FinishRequest removes the request's record and appends its answer to the
	// mailbox in one step. It reports false, and appends nothing, when the
	// record is gone: another replica claimed the request and answers it.
	FinishRequest(ctx context.Context, sessionID, key string, answer Message) (bool, error)
	// ReassignRequest records r's replica and upstream session for the
	// request in flight under key, keeping its last event id, and reports
	// whether there was one (nothing is written otherwise).
	ReassignRequest(ctx context.Context, sessionID, key string, r Request) (bool, error)
	// ClaimRequest removes the request's record and reports whether this call
	// removed it: the caller then owes the client the answer.
	ClaimRequest(ctx context.Context, sessionID, key string) (bool, error)
	// ListRequests returns the session's requests in flight, by key.
	ListRequests(ctx context.Context, sessionID string) (map[string]Request, error)
	// Heartbeat marks the replica alive for ttl; a ttl of zero or less marks
	// it stopped at once (a replica that drained on shutdown).
	Heartbeat(ctx context.Context, replica string, ttl time.Duration) error
	// LapsedReplicas lists the replicas whose last heartbeat ran out after
	// since and no later than now (kept for at least an hour), so that the
	// others take over their work at once rather than when they happen to
	// look.
	LapsedReplicas(ctx context.Context, since, now time.Time) ([]string, error)
	// ReplicaAlive reports whether the replica's last heartbeat is still valid.
	ReplicaAlive(ctx context.Context, replica string) (bool, error)
}
