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
// timestamp, the nonce and the SHA-256 of the request's deterministic encoding.
const SignatureHeader = "x-flotilla-call-sig"

// replayWindow is how far a call's timestamp may be from the receiver's clock; a
// nonce is remembered for twice as long, so no signed call is accepted twice.
const replayWindow = 2 * time.Minute

// NodeKey is one generation of the key nodes sign their calls to each other with.
type NodeKey struct {
	Gen uint64 `json:"gen"`
	Key []byte `json:"key"`
}

// Keyring signs this node's calls to other nodes and verifies theirs.
//
// Invariants: the newest key signs; any key held verifies, so that a rotation can
// reach every member before the old key is retired; a signature is accepted at most
// once (its nonce is remembered for the whole window its timestamp passes in); keys
// change only through Install and Retire, each persisted before it takes effect.
type Keyring struct {
	mu   sync.Mutex
	keys []NodeKey // ascending by Gen
	save func([]NodeKey) error
	seen map[string]time.Time // nonce -> when it may be forgotten
	now  func() time.Time
}

// NewKeyring holds keys (at least one); save persists a new set (nil: none).
func NewKeyring(keys []NodeKey, save func([]NodeKey) error) *Keyring {
	k := &Keyring{save: save, seen: map[string]time.Time{}, now: time.Now}
	k.keys = append(k.keys, keys...)
	sortKeys(k.keys)
	return k
}

func sortKeys(keys []NodeKey) {
	slices.SortFunc(keys, func(a, b NodeKey) int { return cmp.Compare(a.Gen, b.Gen) })
}

// Keys returns a copy of the keys held.
func (k *Keyring) Keys() []NodeKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]NodeKey(nil), k.keys...)
}

// Newest returns the signing key.
func (k *Keyring) Newest() NodeKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys[len(k.keys)-1]
}

func mac(key []byte, method string, ts int64, nonce string, req proto.Message) (string, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("encode request to sign: %w", err)
	}
	digest := sha256.Sum256(body)
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "flotilla-call-v1\n%s\n%d\n%s\n%x", method, ts, nonce, digest)
	return hex.EncodeToString(m.Sum(nil)), nil
}

// Sign returns ctx carrying the signature of a call of method with req, by the
// newest key.
func (k *Keyring) Sign(ctx context.Context, method string, req proto.Message) (context.Context, error) {
	return signWith(ctx, k.Newest(), k.now(), method, req)
}

func signWith(ctx context.Context, key NodeKey, now time.Time, method string, req proto.Message) (context.Context, error) {
	var n [16]byte
	if _, err := rand.Read(n[:]); err != nil {
		return ctx, fmt.Errorf("sign %s: %w", method, err)
	}
	nonce := hex.EncodeToString(n[:])
	ts := now.UnixNano()
	sum, err := mac(key.Key, method, ts, nonce, req)
	if err != nil {
		return ctx, err
	}
	return metadata.AppendToOutgoingContext(ctx, SignatureHeader, fmt.Sprintf("v1 %d %d %s %s", key.Gen, ts, nonce, sum)), nil
}

// Verify checks the signature of an incoming call of method with req; the error is
// a gRPC Unauthenticated status saying what was wrong.
func (k *Keyring) Verify(ctx context.Context, method string, req proto.Message) error {
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
	k.mu.Lock()
	defer k.mu.Unlock()
	var key []byte
	for _, nk := range k.keys {
		if nk.Gen == gen {
			key = nk.Key
		}
	}
	if key == nil {
		return refuse(fmt.Sprintf("signed with key generation %d, which this node does not hold (a removed node, or one that missed a rotation: rotate again with every member up)", gen))
	}
	want, err := mac(key, method, ts, f[3], req)
	if err != nil {
		return refuse(err.Error())
	}
	if !hmac.Equal([]byte(want), []byte(f[4])) {
		return refuse("bad signature (wrong key, or the request was altered)")
	}
	if _, ok := k.seen[f[3]]; ok {
		return refuse("replayed (this signature was used before)")
	}
	if len(k.seen) > 1024 {
		for n, until := range k.seen {
			if now.After(until) {
				delete(k.seen, n)
			}
		}
	}
	k.seen[f[3]] = now.Add(2 * replayWindow)
	return nil
}

// Install adds key (a newer generation) and makes it the signing key, once saved.
func (k *Keyring) Install(key NodeKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(key.Key) < 32 {
		return fmt.Errorf("node key generation %d is too short", key.Gen)
	}
	for _, nk := range k.keys {
		if nk.Gen == key.Gen {
			if hmac.Equal(nk.Key, key.Key) {
				return nil // installed already (a retried rotation)
			}
			return fmt.Errorf("node key generation %d is installed with another value", key.Gen)
		}
	}
	if newest := k.keys[len(k.keys)-1].Gen; key.Gen <= newest {
		return fmt.Errorf("node key generation %d is not newer than this node's %d", key.Gen, newest)
	}
	next := append(append([]NodeKey(nil), k.keys...), key)
	if err := k.persist(next); err != nil {
		return err
	}
	k.keys = next
	return nil
}

// Retire drops every key older than generation keep, which must be held.
func (k *Keyring) Retire(keep uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var next []NodeKey
	for _, nk := range k.keys {
		if nk.Gen >= keep {
			next = append(next, nk)
		}
	}
	if len(next) == 0 || next[0].Gen != keep {
		return fmt.Errorf("node key generation %d is not installed here: nothing retired", keep)
	}
	if len(next) == len(k.keys) {
		return nil
	}
	if err := k.persist(next); err != nil {
		return err
	}
	k.keys = next
	return nil
}

func (k *Keyring) persist(keys []NodeKey) error {
	if k.save == nil {
		return nil
	}
	if err := k.save(keys); err != nil {
		return fmt.Errorf("save node keys: %w", err)
	}
	return nil
}

// NewNodeKey makes the next generation's key.
func NewNodeKey(gen uint64) (NodeKey, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return NodeKey{}, fmt.Errorf("generate node key: %w", err)
	}
	return NodeKey{Gen: gen, Key: b}, nil
}
