// Package redis is the shared session store on Redis (single server,
// Sentinel or Cluster through go-redis's UniversalClient), so that several
// Caddy replicas can serve the same sessions.
//
// # Keys
//
// With the default prefix "mcpbridge:", a session with id ID has three keys
// that share the Cluster hash tag {ID}, hence one slot:
//
//   - mcpbridge:{ID}: a hash with the fields rec (the Session as JSON,
//     without Delivered), owner (a copy of Session.Owner, for Ack), exp
//     (ExpiresAt in Unix ms), fp (the fingerprint) and caller (Session.Caller),
//     for index repairs, last (the last Seq assigned), acked (the Delivered position)
//     and v (the record version, for Update's compare-and-set);
//   - mcpbridge:{ID}:m: a stream, the mailbox, with entry ids "<seq>-0" and
//     the fields c ("1" for Control) and d (the data);
//   - mcpbridge:{ID}:r: a hash of the requests in flight, three fields per
//     request key K: q:K (replica and upstream session id, as JSON), i:K
//     (the JSON-RPC id, byte for byte) and e:K (the last event id).
//
// A replica's heartbeat is the key mcpbridge:replica:<replica>, which
// expires with the heartbeat; the sorted set mcpbridge:replicas scores each
// replica by when its last heartbeat ends (Unix ms), for LapsedReplicas, and
// forgets replicas an hour after that.
//
// Two kinds of index, in other slots, are written next to the session
// (Create reserves the expiry entry first, so that no session escapes the
// janitor; Update writes, then reads the record back and writes again if it
// changed meanwhile, so that concurrent Updates leave the latest score) and
// are always checked against the records by their readers, which drop or
// correct stale entries:
//
//   - mcpbridge:expiry: a sorted set of all session ids scored by ExpiresAt
//     (Unix ms), read by Expired and counted for MaxSessions;
//   - mcpbridge:adopt:<fingerprint>: a sorted set of one caller's session
//     ids scored by ExpiresAt, read by Adoptable;
//   - mcpbridge:caller:<caller>: a sorted set of the session ids of one
//     Session.Caller scored by ExpiresAt, counted (entries before now
//     dropped) for MaxSessionsPerCaller.
//
// The string mcpbridge:identity-key holds the random key of the
// fingerprints when the configuration gives none (IdentityKey).
//
// A caller's latest initialize request for an upstream is the string
// mcpbridge:init:<fingerprint>:<hash of the upstream URL>, with the TTL
// given to RememberInitialize (the bridge's initialize_ttl).
//
// Every key has a TTL: a session's keys live until ExpiresAt plus
// Options.Retention (so that a janitor still finds an expired session and
// ends its upstream session), an index at least as long as the sessions it
// lists. Nothing but the record, which holds no credentials, is stored.
//
// # Wake-ups
//
// Append, FinishRequest and Delete publish the session id on the channel mcpbridge:wake
// from within their scripts. Each Store holds one Pub/Sub connection
// subscribed to that channel, whatever the number of sessions, and hands
// the wake-ups to its local subscribers. When that connection is
// re-established after a failure, every local subscriber is woken, since
// wake-ups may have been missed meanwhile.
//
// # Updates
//
// Updates are optimistic: read the record, apply the function, store the
// result with a script that checks the record's version (compare-and-set),
// retry on conflict. Append and Ack do not change the version, so a busy
// mailbox never makes Update retry.
//
// # Errors
//
// Failures of Redis (network, timeouts, LOADING, CLUSTERDOWN...) are
// returned wrapped so that errors.Is(err, sessionstore.ErrUnavailable)
// holds.
package redis
