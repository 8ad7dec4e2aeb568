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

// TestSignedCalls: a signed call verifies once; a replay, another method, an
// altered request, a stale timestamp, an unknown key and an unsigned call are
// refused, each naming why.
func TestSignedCalls(t *testing.T) {
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	k := NewKeyring(id.Keys(), nil)
	req := &clusterv1.DumpRequest{GroupId: 7, File: "flotilla-bin.000001", Pos: 4}
	const m = clusterv1.Cluster_Dump_FullMethodName
	sctx, err := k.Sign(context.Background(), m, req)
	if err != nil {
		t.Fatal(err)
	}
	in := incoming(t, sctx)
	if err := k.Verify(in, m, req); err != nil {
		t.Fatalf("a signed call must verify: %v", err)
	}
	wantRefused(t, "a replay", k.Verify(in, m, req), "replayed")
	sctx, _ = k.Sign(context.Background(), m, req)
	wantRefused(t, "another method", k.Verify(incoming(t, sctx), clusterv1.Cluster_TransferLeader_FullMethodName, req), "bad signature")
	altered := &clusterv1.DumpRequest{GroupId: 8, File: "flotilla-bin.000001", Pos: 4}
	wantRefused(t, "an altered request", k.Verify(incoming(t, sctx), m, altered), "bad signature")
	old := NewKeyring(id.Keys(), nil)
	old.now = func() time.Time { return time.Now().Add(-10 * time.Minute) }
	sctx, _ = old.Sign(context.Background(), m, req)
	wantRefused(t, "a stale call", k.Verify(incoming(t, sctx), m, req), "clock")
	other, _ := NewIdentity()
	sctx, _ = NewKeyring(other.Keys(), nil).Sign(context.Background(), m, req)
	wantRefused(t, "another cluster's key", k.Verify(incoming(t, sctx), m, req), "bad signature")
	wantRefused(t, "an unsigned call", k.Verify(context.Background(), m, req), "not signed")
}

// TestRotationRetiresOldKeys: after Install, both generations verify and the new
// one signs; after Retire, a holder of only the old key (a removed node) is
// refused; keys are persisted before they take effect.
func TestRotationRetiresOldKeys(t *testing.T) {
	id, _ := NewIdentity()
	var saved [][]NodeKey
	k := NewKeyring(id.Keys(), func(keys []NodeKey) error { saved = append(saved, keys); return nil })
	removed := NewKeyring(id.Keys(), nil)
	req := &clusterv1.ReportRequest{}
	const m = clusterv1.Cluster_Report_FullMethodName
	next, err := NewNodeKey(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Install(next); err != nil {
		t.Fatal(err)
	}
	if err := k.Install(next); err != nil {
		t.Fatalf("installing the same key again must pass (a retried rotation): %v", err)
	}
	if k.Newest().Gen != 1 || len(saved) != 1 {
		t.Fatalf("after Install: newest generation %d, %d saves", k.Newest().Gen, len(saved))
	}
	sctx, _ := removed.Sign(context.Background(), m, req)
	if err := k.Verify(incoming(t, sctx), m, req); err != nil {
		t.Fatalf("during a rotation the old key still verifies: %v", err)
	}
	if err := k.Retire(1); err != nil {
		t.Fatal(err)
	}
	sctx, _ = removed.Sign(context.Background(), m, req)
	wantRefused(t, "a removed node after the rotation", k.Verify(incoming(t, sctx), m, req), "key generation 0")
	if err := k.Retire(5); err == nil {
		t.Fatal("retiring down to a generation not held must fail")
	}
	if got := saved[len(saved)-1]; len(got) != 1 || got[0].Gen != 1 {
		t.Fatalf("persisted keys after Retire: %+v", got)
	}
	// The new key travels sealed with a key both hold, and opens only with one.
	sealed, err := sealNodeKey(id.Keys()[0], next)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := openNodeKey(removed.Keys(), 1, sealed); err != nil || string(got.Key) != string(next.Key) {
		t.Fatalf("open with the base key: %v", err)
	}
	if _, err := openNodeKey([]NodeKey{next}, 1, sealed); err == nil {
		t.Fatal("a sealed key must not open with a key it was not sealed with")
	}
}

// TestNodeCallsNeedACertificateWithTLS: with node TLS on, a correctly signed call
// without a verified client certificate is refused.
func TestNodeCallsNeedACertificateWithTLS(t *testing.T) {
	id, _ := NewIdentity()
	k := NewKeyring(id.Keys(), nil)
	s := &Service{NodeID: 1, Keys: k, Admin: secure.Admin{Token: "t", Certificates: true}}
	req := &clusterv1.ReportRequest{}
	sctx, _ := k.Sign(context.Background(), clusterv1.Cluster_Report_FullMethodName, req)
	in := metadata.NewIncomingContext(context.Background(), metadata.Join(mdOf(sctx), metadata.Pairs("authorization", "Bearer t")))
	_, err := s.Report(in, req)
	wantRefused(t, "a signed call without a node certificate", err, "certificate")
}

func mdOf(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}
