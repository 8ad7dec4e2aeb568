package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/placement"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// incoming turns a signed outgoing context into what the receiving server sees.
func incoming(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	md, _ := metadata.FromOutgoingContext(ctx)
	return metadata.NewIncomingContext(context.Background(), md)
}

func wantRefused(t *testing.T, what string, err error, words string) {
	t.Helper()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), words) {
		t.Fatalf("%s: want Unauthenticated naming %q, got %v", what, words, err)
	}
}

// TestSignedCalls: a signed call verifies once at its receiver; a replay, another
// receiver, another method, an altered request, a stale timestamp, another
// cluster's key and an unsigned call are refused, each naming why.
func TestSignedCalls(t *testing.T) {
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	k := NewKeyring(id.Keys(), 0, nil)
	req := &clusterv1.DumpRequest{GroupId: 7, File: "flotilla-bin.000001", Pos: 4}
	const m = clusterv1.Cluster_Dump_FullMethodName
	sign := func(k *Keyring, target uint64) context.Context {
		t.Helper()
		sctx, err := k.Sign(context.Background(), target, m, req)
		if err != nil {
			t.Fatal(err)
		}
		return incoming(t, sctx)
	}
	in := sign(k, 2)
	if err := k.Verify(in, 2, m, req); err != nil {
		t.Fatalf("a signed call must verify: %v", err)
	}
	wantRefused(t, "a replay", k.Verify(in, 2, m, req), "replayed")
	wantRefused(t, "a call replayed to another node", k.Verify(sign(k, 2), 3, m, req), "another receiver")
	wantRefused(t, "another method", k.Verify(sign(k, 2), 2, clusterv1.Cluster_TransferLeader_FullMethodName, req), "bad signature")
	altered := &clusterv1.DumpRequest{GroupId: 8, File: "flotilla-bin.000001", Pos: 4}
	wantRefused(t, "an altered request", k.Verify(sign(k, 2), 2, m, altered), "bad signature")
	old := NewKeyring(id.Keys(), 0, nil)
	old.now = func() time.Time { return time.Now().Add(-10 * time.Minute) }
	wantRefused(t, "a stale call", k.Verify(sign(old, 2), 2, m, req), "clock")
	other, _ := NewIdentity()
	wantRefused(t, "another cluster's key", k.Verify(sign(NewKeyring(other.Keys(), 0, nil), 2), 2, m, req), "bad signature")
	wantRefused(t, "an unsigned call", k.Verify(context.Background(), 2, m, req), "not signed")
	// A replay is refused after the nonce memory turned over once (it keeps two).
	in = sign(k, 2)
	if err := k.Verify(in, 2, m, req); err != nil {
		t.Fatal(err)
	}
	k.flipAt = time.Time{}
	wantRefused(t, "a replay after the nonce memory turned over", k.Verify(in, 2, m, req), "replayed")
}

// TestRotationFollowsTheMetadata: a key the metadata adds verifies at once but does
// not sign; once the metadata activates it, it signs and the older keys are
// retired, so a holder of only the old key (a removed node) is refused; changes are
// persisted before they take effect; a node that missed a rotation says so.
func TestRotationFollowsTheMetadata(t *testing.T) {
	id, _ := NewIdentity()
	var saved []uint64
	k := NewKeyring(id.Keys(), 0, func(keys []NodeKey, active uint64) error { saved = append(saved, active); return nil })
	removed := NewKeyring(id.Keys(), 0, nil)
	req := &clusterv1.ReportRequest{}
	const m = clusterv1.Cluster_Report_FullMethodName
	next, err := NewNodeKey(1)
	if err != nil {
		t.Fatal(err)
	}
	peer := NewKeyring([]NodeKey{id.Keys()[0], next}, 1, nil) // a member that already activated it
	if changed, err := k.Sync([]NodeKey{next}, 0); err != nil || !changed {
		t.Fatalf("the added key must be held: %v %v", changed, err)
	}
	if changed, _ := k.Sync([]NodeKey{next}, 0); changed {
		t.Fatal("a second sync without news must change nothing")
	}
	sctx, _ := k.Sign(context.Background(), 2, m, req)
	if err := removed.Verify(incoming(t, sctx), 2, m, req); err != nil {
		t.Fatalf("a pending key must not sign yet: %v", err)
	}
	sctx, _ = peer.Sign(context.Background(), 1, m, req)
	if err := k.Verify(incoming(t, sctx), 1, m, req); err != nil {
		t.Fatalf("a pending key verifies at once: %v", err)
	}
	if _, err := k.Sync([]NodeKey{next}, 1); err != nil {
		t.Fatal(err)
	}
	// For retireGrace the old key still verifies (members learning of the
	// activation still sign with it); then it is retired.
	sctx, _ = removed.Sign(context.Background(), 1, m, req)
	if err := k.Verify(incoming(t, sctx), 1, m, req); err != nil {
		t.Fatalf("within the grace the old key verifies: %v", err)
	}
	if gens := k.Gens(); len(gens) != 2 {
		t.Fatalf("within the grace both keys are held: %v", gens)
	}
	later := time.Now().Add(retireGrace + time.Second)
	k.now = func() time.Time { return later }
	removed.now = k.now
	if changed, err := k.Sync([]NodeKey{next}, 1); err != nil || !changed {
		t.Fatalf("after the grace the old key is retired: %v %v", changed, err)
	}
	sctx, _ = removed.Sign(context.Background(), 1, m, req)
	wantRefused(t, "a removed node after the rotation", k.Verify(incoming(t, sctx), 1, m, req), "generation 0")
	if gens := k.Gens(); len(gens) != 1 || gens[0] != 1 || len(saved) != 3 || saved[2] != 1 {
		t.Fatalf("after activation: held %v, saves %v", gens, saved)
	}
	// The metadata is the authority on a generation's bytes.
	other, _ := NewNodeKey(1)
	if changed, err := k.Sync([]NodeKey{other}, 1); err != nil || !changed {
		t.Fatalf("a generation whose bytes differ from the metadata's must take them: %v %v", changed, err)
	}
	if held, _ := k.Keys(); string(held[0].Key) != string(other.Key) {
		t.Fatal("the metadata's bytes must be kept")
	}
	if _, err := removed.Sync(nil, 1); err == nil || !strings.Contains(err.Error(), "missed the rotation") {
		t.Fatalf("a node that missed a rotation must say so: %v", err)
	}
	// The metadata holds the key sealed with the cluster key only.
	sealer, _ := secure.NewSealer(id.Secret)
	sk, err := SealNodeKey(sealer, next)
	if err != nil || strings.Contains(sk.Sealed, string(next.Key)) {
		t.Fatalf("seal: %v", err)
	}
	got, err := OpenNodeKeys(sealer, []placement.SealedNodeKey{sk})
	if err != nil || len(got) != 1 || string(got[0].Key) != string(next.Key) {
		t.Fatalf("open: %v", err)
	}
	otherSealer, _ := secure.NewSealer(other32())
	if _, err := OpenNodeKeys(otherSealer, []placement.SealedNodeKey{sk}); err == nil {
		t.Fatal("another cluster's key must not open a sealed node key")
	}
}

func other32() []byte { return []byte("another cluster's secret, 32 b.") }

// TestNodeCallsNeedACertificateWithTLS: with node TLS on, a correctly signed call
// without a verified client certificate is refused.
func TestNodeCallsNeedACertificateWithTLS(t *testing.T) {
	id, _ := NewIdentity()
	k := NewKeyring(id.Keys(), 0, nil)
	s := &Service{NodeID: 1, Keys: k, Admin: secure.Admin{Token: "t", Certificates: true}}
	req := &clusterv1.ReportRequest{}
	sctx, _ := k.Sign(context.Background(), 1, clusterv1.Cluster_Report_FullMethodName, req)
	in := metadata.NewIncomingContext(context.Background(), metadata.Join(mdOf(sctx), metadata.Pairs("authorization", "Bearer t")))
	_, err := s.Report(in, req)
	wantRefused(t, "a signed call without a node certificate", err, "certificate")
}

func mdOf(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}
