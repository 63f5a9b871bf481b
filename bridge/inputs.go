package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mcp-sse-bridge/caddy-mcp-sse-bridge/sessionstore"
)

// Multi-round-trip results, translated. An upstream of 2026-07-28 that
// needs the client's input (a sampling, an elicitation, its roots) answers
// a call with a result of type input_required naming the requests; the
// client is to send the call again with its answers. A legacy client
// knows these as server→client requests: the bridge sends each on the
// client's stream under an id it mints ("mcp-sse-bridge-input-<token>-<n>"),
// records the client's answers in the session (any replica may get them),
// and the replica forwarding the call, once all are in, sends the call
// again with them and the upstream's request state, under a new id. The
// answer of the last round is the call's. Bounded: maxInputRounds rounds,
// Config.InputTimeout for the client's answers of each.

// maxInputRounds bounds how often one call may ask for input.
const maxInputRounds = 10

// inputPoll is how often the forwarding replica looks for the client's
// answers, which may reach any replica.
const inputPoll = 50 * time.Millisecond

// inputIDPrefix starts the ids of the requests the bridge sends the client
// on an upstream's behalf.
const inputIDPrefix = "mcp-sse-bridge-input-"

// retryWithInputs asks the client what the upstream's answer asked for
// and returns the call to send again with the answers; false when the call
// was answered (failed) instead.
func (b *Bridge) retryWithInputs(ctx context.Context, c *call, asked []byte, round int) ([]byte, Envelope, bool) {
	var result struct {
		Result struct {
			InputRequests map[string]json.RawMessage `json:"inputRequests"`
			RequestState  json.RawMessage            `json:"requestState"`
		} `json:"result"`
	}
	if err := json.Unmarshal(asked, &result); err != nil {
		b.fail(c, "input_required", "the upstream's input request is not valid")
		return nil, Envelope{}, false
	}
	if len(result.Result.InputRequests) == 0 {
		return b.callAgain(c, nil, result.Result.RequestState)
	}
	token, err := b.askClient(ctx, c, result.Result.InputRequests, result.Result.RequestState, round)
	if err != nil {
		b.fail(c, "input_required", err.Error())
		return nil, Envelope{}, false
	}
	return b.awaitRound(ctx, c, token, result.Result.RequestState)
}

// awaitRound waits for the client's answers to the round token and
// returns the call to send again with them; false when the call was
// answered (failed) instead. The round's record goes, unless this replica
// is stopping: then the replica that takes the call over goes on with it
// (resumeRound).
func (b *Bridge) awaitRound(ctx context.Context, c *call, token string, requestState json.RawMessage) ([]byte, Envelope, bool) {
	answers, errObj, err := b.awaitInputs(ctx, c.sessionID, token)
	if b.background.Err() == nil {
		b.forgetInputs(c.sessionID, token)
	}
	switch {
	case err != nil:
		b.fail(c, "input_required", err.Error())
		return nil, Envelope{}, false
	case errObj != nil:
		b.metrics.errorAnswered("input_refused")
		b.answer(c, errorResponse(c.env.ID, errObj))
		return nil, Envelope{}, false
	}
	return b.callAgain(c, answers, requestState)
}

// callAgain is the call to send again with the client's answers, or false
// when it cannot be made (the call is answered with an error).
func (b *Bridge) callAgain(c *call, answers map[string]json.RawMessage, requestState json.RawMessage) ([]byte, Envelope, bool) {
	if answers == nil {
		answers = map[string]json.RawMessage{}
	}
	msg, env, err := withInputs(c.msg, c.env, answers, requestState)
	if err != nil {
		b.fail(c, "input_required", "sending the call again: "+err.Error())
		return nil, Envelope{}, false
	}
	return msg, env, true
}

// maxKeptCall bounds the size of a call and the upstream's request state
// kept together with its round of input requests, for another replica to
// send the call again: the session record holding them is loaded by every
// POST of the session.
const maxKeptCall = 64 << 10

// resumeRound goes on with a translated call whose replica stopped while
// the call waited for the client's answers to a round of input requests:
// once they are in, the call is sent again with them, as that replica
// would have. A call too large to have been kept (with its request state)
// fails.
func (b *Bridge) resumeRound(ctx context.Context, c *call, sess *sessionstore.Session, token string, p *sessionstore.PendingInputs) {
	c.reported = true // no POST waits for this call
	env, err := PeekEnvelope(p.Call)
	if len(p.Call) == 0 || err != nil {
		b.forgetInputs(c.sessionID, token)
		b.fail(c, "replica_stopped", "the bridge replica forwarding this request stopped while it waited for the client's input")
		return
	}
	c.msg, c.env, c.client = p.Call, env, b.credentialsFor(c.sessionID)
	b.log.Info("going on with a call whose replica stopped while it waited for the client's input", zap.String("session", shortID(c.sessionID)))
	ctx, stop := b.cancellable(ctx, c)
	defer stop()
	msg, env, ok := b.awaitRound(ctx, c, token, p.RequestState)
	if !ok {
		return
	}
	b.translatedRounds(ctx, c, sess, msg, env, p.Round+1)
}

// roundPending reports whether the call recorded under key waits for its
// client's answers to a round of input requests: a translated call, with
// no upstream stream to resume, whose round another replica goes on with.
func (b *Bridge) roundPending(ctx context.Context, sessionID, key string) bool {
	sess, err := b.store.Get(ctx, sessionID)
	if err != nil {
		b.log.Warn("looking for a call's round of input requests: the call is sent anew", zap.String("session", shortID(sessionID)), zap.Error(err))
		return false
	}
	_, p := pendingRound(sess, key)
	return p != nil
}

// pendingRound is the round of input requests of the call recorded under
// key, if it waits for one.
func pendingRound(sess *sessionstore.Session, key string) (string, *sessionstore.PendingInputs) {
	for token, p := range sess.Inputs {
		if p.Request == key {
			return token, p
		}
	}
	return "", nil
}

// askClient records a round of input requests and sends them to the
// client; it returns the round's token.
func (b *Bridge) askClient(ctx context.Context, c *call, requests map[string]json.RawMessage, requestState json.RawMessage, round int) (string, error) {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range requests {
			if !yield(k) {
				return
			}
		}
	})
	token := randomID()[:16]
	asks := make([][]byte, len(keys))
	for i, k := range keys {
		var req struct {
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if json.Unmarshal(requests[k], &req) != nil || req.Method == "" {
			return "", errors.New("the upstream's input request " + strconv.Quote(k) + " names no method")
		}
		id, _ := json.Marshal(inputIDPrefix + token + "-" + strconv.Itoa(i))
		asks[i] = fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%s,"method":%q`, id, req.Method)
		if len(req.Params) > 0 {
			asks[i] = append(append(asks[i], `,"params":`...), req.Params...)
		}
		asks[i] = append(asks[i], '}')
	}
	pending := &sessionstore.PendingInputs{Keys: keys, Request: c.key, Round: round}
	if len(c.msg)+len(requestState) <= maxKeptCall {
		pending.Call, pending.RequestState = c.msg, requestState
	}
	if _, err := b.store.Update(ctx, c.sessionID, func(s *sessionstore.Session) error {
		if len(s.Inputs) >= b.cfg.MaxInflight {
			return errors.New("too many calls waiting for input")
		}
		if s.Inputs == nil {
			s.Inputs = map[string]*sessionstore.PendingInputs{}
		}
		s.Inputs[token] = pending
		return nil
	}); err != nil {
		return "", fmt.Errorf("recording the input requests: %w", err)
	}
	for _, ask := range asks {
		b.deliver(c.sessionID, ask)
	}
	return token, nil
}

// awaitInputs polls the session until the client answered every input of
// the round, refused one, or Config.InputTimeout passed.
func (b *Bridge) awaitInputs(ctx context.Context, sessionID, token string) (map[string]json.RawMessage, json.RawMessage, error) {
	deadline := time.Now().Add(b.cfg.InputTimeout)
	for {
		sess, err := b.store.Get(ctx, sessionID)
		if err != nil && !errors.Is(err, sessionstore.ErrUnavailable) {
			return nil, nil, fmt.Errorf("waiting for the client's input: %w", err)
		}
		if err == nil {
			p := sess.Inputs[token]
			switch {
			case p == nil:
				return nil, nil, errors.New("the client's input requests were withdrawn")
			case p.Failed != nil:
				return nil, p.Failed, nil
			case len(p.Answers) == len(p.Keys):
				return p.Answers, nil, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("the client did not answer the upstream's input requests within %v", b.cfg.InputTimeout)
		}
		if !sleepCtx(ctx, inputPoll) {
			return nil, nil, ctx.Err()
		}
	}
}

// forgetInputs drops a round's record once it is over.
func (b *Bridge) forgetInputs(sessionID, token string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := b.store.Update(ctx, sessionID, func(s *sessionstore.Session) error {
		if s.Inputs[token] == nil {
			return errStale
		}
		delete(s.Inputs, token)
		return nil
	})
	if err != nil && !errors.Is(err, errStale) && !errors.Is(err, sessionstore.ErrNotFound) {
		b.log.Warn("dropping answered input requests", zap.String("session", shortID(sessionID)), zap.Error(err))
	}
}

// recordInput records the client's answer to an input request the bridge
// sent it; it reports false for a response to anything else.
func (b *Bridge) recordInput(ctx context.Context, c *call) bool {
	var id string
	if json.Unmarshal(c.env.ID, &id) != nil || !strings.HasPrefix(id, inputIDPrefix) {
		return false
	}
	token, index, ok := strings.Cut(strings.TrimPrefix(id, inputIDPrefix), "-")
	i, err := strconv.Atoi(index)
	if !ok || err != nil {
		return false
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if json.Unmarshal(c.msg, &resp) != nil {
		return false
	}
	_, err = b.store.Update(ctx, c.sessionID, func(s *sessionstore.Session) error {
		p := s.Inputs[token]
		if p == nil || i < 0 || i >= len(p.Keys) {
			return errStale // a round that ended: nobody waits
		}
		if resp.Error != nil {
			p.Failed = resp.Error
			return nil
		}
		if p.Answers == nil {
			p.Answers = map[string]json.RawMessage{}
		}
		p.Answers[p.Keys[i]] = resp.Result
		return nil
	})
	if err != nil && !errors.Is(err, errStale) {
		b.log.Warn("recording the client's input", zap.String("session", shortID(c.sessionID)), zap.Error(err))
	}
	return true
}

// withInputs is the call to send again: its params with the client's
// answers as inputResponses and the upstream's requestState as it came,
// under a new id (a retry is a new request).
func withInputs(msg []byte, env Envelope, answers map[string]json.RawMessage, requestState json.RawMessage) ([]byte, Envelope, error) {
	var in struct {
		Params map[string]json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(msg, &in); err != nil {
		return nil, Envelope{}, err
	}
	if in.Params == nil {
		in.Params = map[string]json.RawMessage{}
	}
	delete(in.Params, "inputResponses")
	delete(in.Params, "requestState")
	if len(answers) > 0 {
		in.Params["inputResponses"], _ = json.Marshal(answers)
	}
	if len(requestState) > 0 && string(requestState) != "null" {
		in.Params["requestState"] = requestState
	}
	env.ID, _ = json.Marshal("mcp-sse-bridge-retry-" + randomID()[:16])
	out, err := encodeRequest(env.ID, env.Method, in.Params)
	return out, env, err
}
