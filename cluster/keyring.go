package cluster

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// SignatureHeader carries a node-to-node call's signature:
// "v1 GEN UNIXNANO NONCE MAC", MAC = HMAC-SHA256 with key GEN over the method, the
// receiving node's id, the timestamp, the nonce and the SHA-256 of the request's
// deterministic encoding.
const SignatureHeader = "x-flotilla-call-sig"

// replayWindow is how far a call's timestamp may be from the receiver's clock; a
// nonce is remembered for longer than that, so no signed call is accepted twice.
const replayWindow = 2 * time.Minute

// NodeKey is one generation of the key nodes sign their calls to each other with.
type NodeKey struct {
	Gen uint64 `json:"gen"`
	Key []byte `json:"key"`
}

// Keyring signs this node's calls to other nodes and verifies theirs.
//
// Invariants: the active key signs; any key held verifies (a rotation installs the
// next key everywhere before any node signs with it); the keys held and the active
// generation follow the metadata group (Sync), which alone decides rotations, so a
// node no longer a member cannot make or follow one; a signature names its
// receiver and is accepted at most once (its nonce is remembered longer than its
// timestamp passes); a change is persisted before it takes effect.
type Keyring struct {
	mu     sync.Mutex
	keys   []NodeKey // ascending by Gen
	active uint64
	// retireAt: keys older than active are dropped at the first Sync after it,
	// so that members still signing with the old key while they learn of the
	// activation are not refused meanwhile.
	retireAt time.Time
	save     func([]NodeKey, uint64) error
	// seen and older remember the nonces of accepted calls: older is dropped and
	// seen takes its place every 2*replayWindow, so a nonce is remembered for at
	// least the 2*replayWindow its timestamp is accepted in.
	seen, older map[string]struct{}
	flipAt      time.Time
	now         func() time.Time
}

// NewKeyring holds keys (at least one, active among them); save persists a change
// (nil: none).
func NewKeyring(keys []NodeKey, active uint64, save func([]NodeKey, uint64) error) *Keyring {
	k := &Keyring{active: active, save: save, seen: map[string]struct{}{}, older: map[string]struct{}{}, now: time.Now}
	k.keys = append(k.keys, keys...)
	sortKeys(k.keys)
	if !slices.ContainsFunc(k.keys, func(nk NodeKey) bool { return nk.Gen == active }) && len(k.keys) > 0 {
		k.active = k.keys[len(k.keys)-1].Gen // an identity from before active was recorded
	}
	return k
}

// retireGrace is how long keys older than a newly active one still verify.
const retireGrace = 3 * time.Second

func sortKeys(keys []NodeKey) {
	slices.SortFunc(keys, func(a, b NodeKey) int { return cmp.Compare(a.Gen, b.Gen) })
}

// Gens lists the generations held.
func (k *Keyring) Gens() []uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]uint64, len(k.keys))
	for i, nk := range k.keys {
		out[i] = nk.Gen
	}
	return out
}

// Keys returns a copy of the keys held and the active generation.
func (k *Keyring) Keys() ([]NodeKey, uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]NodeKey(nil), k.keys...), k.active
}

func (k *Keyring) key(gen uint64) ([]byte, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, nk := range k.keys {
		if nk.Gen == gen {
			return nk.Key, true
		}
	}
	return nil, false
}

func mac(key []byte, method string, target uint64, ts int64, nonce string, req proto.Message) (string, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("encode request to sign: %w", err)
	}
	digest := sha256.Sum256(body)
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "flotilla-call-v1\n%s\n%d\n%d\n%s\n%x", method, target, ts, nonce, digest)
	return hex.EncodeToString(m.Sum(nil)), nil
}

// Sign returns ctx carrying the signature, by the active key, of a call of method
// with req to node target.
func (k *Keyring) Sign(ctx context.Context, target uint64, method string, req proto.Message) (context.Context, error) {
	k.mu.Lock()
	gen := k.active
	var key []byte
	for _, nk := range k.keys {
		if nk.Gen == gen {
			key = nk.Key
		}
	}
	k.mu.Unlock()
	if key == nil {
		return ctx, fmt.Errorf("sign %s: the active node key generation %d is not held", method, gen)
	}
	var n [16]byte
	if _, err := rand.Read(n[:]); err != nil {
		return ctx, fmt.Errorf("sign %s: %w", method, err)
	}
	nonce := hex.EncodeToString(n[:])
	ts := k.now().UnixNano()
	sum, err := mac(key, method, target, ts, nonce, req)
	if err != nil {
		return ctx, err
	}
	return metadata.AppendToOutgoingContext(ctx, SignatureHeader, fmt.Sprintf("v1 %d %d %s %s", gen, ts, nonce, sum)), nil
}

// Verify checks the signature of an incoming call of method with req to this node
// (self); the error is a gRPC Unauthenticated status saying what was wrong.
func (k *Keyring) Verify(ctx context.Context, self uint64, method string, req proto.Message) error {
	refuse := func(why string) error {
		return status.Errorf(codes.Unauthenticated, "node-to-node call %s refused: %s", method, why)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(SignatureHeader)
	if len(vals) != 1 {
		return refuse("not signed with the cluster's node key (is the caller a node of this cluster, running this version?)")
	}
	f := strings.Fields(vals[0])
	if len(f) != 5 || f[0] != "v1" {
		return refuse("malformed signature")
	}
	gen, err1 := strconv.ParseUint(f[1], 10, 64)
	ts, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || len(f[3]) != 32 {
		return refuse("malformed signature")
	}
	now := k.now()
	if d := now.Sub(time.Unix(0, ts)); d > replayWindow || d < -replayWindow {
		return refuse(fmt.Sprintf("its timestamp is %v away from this node's clock (at most %v): check the nodes' clocks (NTP)", d.Round(time.Second), replayWindow))
	}
	key, ok := k.key(gen)
	if !ok {
		return refuse(fmt.Sprintf("signed with node key generation %d, which this node does not hold (a removed node, or one that has not followed a rotation yet)", gen))
	}
	want, err := mac(key, method, self, ts, f[3], req)
	if err != nil {
		return refuse(err.Error())
	}
	if !hmac.Equal([]byte(want), []byte(f[4])) {
		return refuse("bad signature (wrong key, another receiver, or the request was altered)")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if now.After(k.flipAt) {
		k.older, k.seen, k.flipAt = k.seen, map[string]struct{}{}, now.Add(2*replayWindow)
	}
	if _, ok := k.seen[f[3]]; ok {
		return refuse("replayed (this signature was used before)")
	}
	if _, ok := k.older[f[3]]; ok {
		return refuse("replayed (this signature was used before)")
	}
	k.seen[f[3]] = struct{}{}
	return nil
}

// Sync follows the metadata's node keys (meta, empty before the first rotation)
// and active generation: keys the metadata adds are held (verifying at once,
// signing once active; for a generation the metadata holds, its bytes are the
// ones kept), and keys older than the active one are retired retireGrace after it
// became active. It reports whether anything changed.
func (k *Keyring) Sync(meta []NodeKey, active uint64) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	next := max(k.active, active)
	if next > k.active {
		k.retireAt = now.Add(retireGrace)
	}
	floor := uint64(0)
	if now.After(k.retireAt) {
		floor = next
	}
	changed := next != k.active
	var keys []NodeKey
	for _, nk := range meta {
		if len(nk.Key) < 32 {
			return false, fmt.Errorf("node key generation %d is too short", nk.Gen)
		}
		if nk.Gen >= floor {
			keys = append(keys, nk)
		}
	}
	for _, nk := range k.keys {
		i := slices.IndexFunc(keys, func(m NodeKey) bool { return m.Gen == nk.Gen })
		switch {
		case nk.Gen < floor:
			changed = true // retired
		case i < 0:
			keys = append(keys, nk)
		case !hmac.Equal(keys[i].Key, nk.Key):
			changed = true // the metadata is the authority on a generation's key
		}
	}
	if len(keys) != len(k.keys) {
		changed = true
	}
	sortKeys(keys)
	if !slices.ContainsFunc(keys, func(h NodeKey) bool { return h.Gen == next }) {
		return false, fmt.Errorf("node key generation %d is active but not held: this node missed the rotation", next)
	}
	if !changed {
		return false, nil
	}
	if k.save != nil {
		if err := k.save(keys, next); err != nil {
			return false, fmt.Errorf("save node keys: %w", err)
		}
	}
	k.keys, k.active = keys, next
	return true, nil
}

// NewNodeKey makes the next generation's key.
func NewNodeKey(gen uint64) (NodeKey, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return NodeKey{}, fmt.Errorf("generate node key: %w", err)
	}
	return NodeKey{Gen: gen, Key: b}, nil
}
