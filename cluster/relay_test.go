package cluster

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla-relay/flotilla/mysqlfront"
	"github.com/flotilla-relay/flotilla/placement"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// frozenServer serves a dump that sends one batch of events, then keepalives for a
// while (if it sends them at all), then nothing, as a node that froze (SIGSTOP, a
// hung disk) would.
type frozenServer struct {
	clusterv1.UnimplementedClusterServer
	keepalives int // sent before it freezes; -1: sends nothing at all, not even events
}

func (f *frozenServer) Dump(_ *clusterv1.DumpRequest, stream clusterv1.Cluster_DumpServer) error {
	if f.keepalives >= 0 {
		if err := stream.Send(&clusterv1.DumpChunk{Events: [][]byte{[]byte("event")}, File: 1, Pos: 100}); err != nil {
			return err
		}
		for i := 0; i < f.keepalives; i++ {
			time.Sleep(20 * time.Millisecond)
			if err := stream.Send(&clusterv1.DumpChunk{}); err != nil {
				return err
			}
		}
	}
	<-stream.Context().Done() // frozen: the connection stays up, nothing comes
	return nil
}

// slowServer sends an event and keepalives, a second event, then keepalives for
// keepFor, then freezes.
type slowServer struct {
	clusterv1.UnimplementedClusterServer
	keepFor time.Duration
}

func (f *slowServer) Dump(_ *clusterv1.DumpRequest, stream clusterv1.Cluster_DumpServer) error {
	ev := &clusterv1.DumpChunk{Events: [][]byte{[]byte("event")}, File: 1, Pos: 100}
	for _, ch := range []*clusterv1.DumpChunk{ev, {}, {}, ev} {
		if err := stream.Send(ch); err != nil {
			return err
		}
	}
	for start := time.Now(); time.Since(start) < f.keepFor; time.Sleep(20 * time.Millisecond) {
		if err := stream.Send(&clusterv1.DumpChunk{}); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

type recordingSink struct {
	mu     sync.Mutex
	events int
	// stall is how long the second event takes to hand on (a replica reading slowly).
	stall time.Duration
}

func (s *recordingSink) Event([]byte) error {
	s.mu.Lock()
	s.events++
	n := s.events
	s.mu.Unlock()
	if n == 2 {
		time.Sleep(s.stall)
	}
	return nil
}
func (s *recordingSink) EventPart([]byte) error  { return nil }
func (s *recordingSink) Position(uint64, uint64) {}
func (s *recordingSink) EOF() error              { return nil }

// relayTo starts srv as node 2 and returns node 1's relay source for group 7 there.
func relayTo(t *testing.T, srv clusterv1.ClusterServer, silence time.Duration) mysqlfront.Source {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	clusterv1.RegisterClusterServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	st := &placement.State{Nodes: map[uint64]*placement.Node{2: {ID: 2, AdminAddr: lis.Addr().String()}}, Assignments: map[uint64][]uint64{7: {2}}}
	r := NewRelay(1, "c1", NewKeyring(id.Keys(), 0, nil), nil, func() (*placement.State, error) { return st, nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.silence = silence
	t.Cleanup(r.Close)
	return r.Source(&placement.Upstream{Name: "main", GroupID: 7}, 2, false)
}

// TestRelayGivesUpOnASilentNode: a relay whose serving node falls silent after it
// showed it sends keepalives ends the replica's dump with a retry (1053) within the
// silence limit, so the replica reconnects and reaches the new leader; a node that
// never answers is given up as not serving. A node of an older release, which sends
// no keepalives, is waited for as before.
func TestRelayGivesUpOnASilentNode(t *testing.T) {
	const silence = 300 * time.Millisecond
	dump := func(src mysqlfront.Source, within time.Duration) (time.Duration, *recordingSink, error) {
		// The replica leaves after within: a cancel, as a closed session is. A
		// deadline would travel to the serving node too, whose stream could then
		// end first and reach the relay as a break (seen once in CI).
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		leave := time.AfterFunc(within, cancel)
		defer leave.Stop()
		sink := &recordingSink{stall: 4 * silence}
		start := time.Now()
		err := src.Dump(ctx, mysqlfront.DumpSpec{GroupID: 7}, sink)
		return time.Since(start), sink, err
	}

	took, sink, err := dump(relayTo(t, &frozenServer{keepalives: 3}, silence), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "sent nothing") || took > 3*silence+time.Second {
		t.Fatalf("frozen after keepalives: dump ended after %v with %v; want a retry naming the silence within about %v", took, err, silence)
	}
	if sink.events != 1 {
		t.Fatalf("frozen after keepalives: %d events relayed, want 1", sink.events)
	}

	took, _, err = dump(relayTo(t, &frozenServer{keepalives: -1}, silence), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "no node serves") || took > 3*silence+time.Second {
		t.Fatalf("silent from the start: dump ended after %v with %v; want the node given up within about %v", took, err, silence)
	}

	// A replica that reads slowly holds the relay in its sink longer than the limit,
	// after keepalives were heard: that is not the serving node's silence.
	took, sink, err = dump(relayTo(t, &slowServer{keepFor: 8 * silence}, silence), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "sent nothing") || took < 8*silence || sink.events != 2 {
		t.Fatalf("slow replica: dump ended after %v with %v (%d events); want it to outlast the stall and the keepalives (%v), then end on the silence", took, err, sink.events, 8*silence)
	}

	took, sink, err = dump(relayTo(t, &frozenServer{keepalives: 0}, silence), 5*silence)
	if err != nil || took < 5*silence || sink.events != 1 {
		t.Fatalf("no keepalives (an older release): dump ended after %v with %v (%d events); want it waited for until the replica left", took, err, sink.events)
	}
}

// dumpStream records what a served dump sends.
type dumpStream struct {
	grpc.ServerStream
	mu   sync.Mutex
	sent []*clusterv1.DumpChunk
}

func (d *dumpStream) Send(ch *clusterv1.DumpChunk) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sent = append(d.sent, ch)
	return nil
}

func (d *dumpStream) Context() context.Context     { return context.Background() }
func (d *dumpStream) SetHeader(metadata.MD) error  { return nil }
func (d *dumpStream) SendHeader(metadata.MD) error { return nil }
func (d *dumpStream) SetTrailer(metadata.MD)       {}
func (d *dumpStream) SendMsg(any) error            { return nil }
func (d *dumpStream) RecvMsg(any) error            { return nil }
func (d *dumpStream) count() (keepalives, others int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ch := range d.sent {
		if (&silenceWatch{}).isKeepalive(ch) {
			keepalives++
		} else {
			others++
		}
	}
	return keepalives, others
}

// TestServedDumpSendsKeepalives: a served dump with nothing to send sends an empty
// message each keepalive period, and none while it sends events.
func TestServedDumpSendsKeepalives(t *testing.T) {
	const period = 500 * time.Millisecond
	st := &dumpStream{}
	sink := &chunkSink{stream: st, sent: time.Now()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sink.keepalive(ctx, period)
	}()
	// Busy for two periods: a position report (a message) every 10 ms; only a stall
	// of a whole period could let a keepalive in.
	busy := 0
	for start := time.Now(); time.Since(start) < 2*period; busy++ {
		if err := sink.Event([]byte("event")); err != nil {
			t.Fatal(err)
		}
		sink.Position(1, uint64(100+busy))
		time.Sleep(10 * time.Millisecond)
	}
	if k, o := st.count(); k != 0 || o != busy {
		t.Fatalf("while busy: %d keepalives, %d messages; want none and %d", k, o, busy)
	}
	// Quiet for 6 periods: about one keepalive each.
	time.Sleep(6 * period)
	cancel()
	<-done
	if k, _ := st.count(); k < 3 || k > 7 {
		t.Fatalf("quiet for 6 periods: %d keepalives; want about 6", k)
	}
}

// identityServer answers Identity as node 2 of cluster.
type identityServer struct {
	clusterv1.UnimplementedClusterServer
	cluster string
}

func (s *identityServer) Identity(context.Context, *clusterv1.IdentityRequest) (*clusterv1.IdentityResponse, error) {
	return &clusterv1.IdentityResponse{ClusterId: s.cluster, NodeId: 2}, nil
}

// TestAliveChecksTheCluster: a node that answers with the right node id but another
// cluster's id (it took a dead node's address) is not alive to this cluster.
func TestAliveChecksTheCluster(t *testing.T) {
	for _, c := range []struct {
		cluster string
		alive   bool
	}{{"c1", true}, {"another", false}} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		clusterv1.RegisterClusterServer(gs, &identityServer{cluster: c.cluster})
		go gs.Serve(lis)
		id, _ := NewIdentity()
		r := NewRelay(1, "c1", NewKeyring(id.Keys(), 0, nil), nil, func() (*placement.State, error) { return &placement.State{}, nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
		got := r.Alive(context.Background(), map[uint64]*placement.Node{2: {ID: 2, AdminAddr: lis.Addr().String()}}, 5*time.Second)
		r.Close()
		gs.Stop()
		if got[2] != c.alive {
			t.Fatalf("node 2 answering for cluster %q: alive %v, want %v", c.cluster, got[2], c.alive)
		}
	}
}

// TestReportsTakeTheNodesOwnLocally: with ReportLocally set, a node's own report comes
// from it, not from a call to its own admin port (here an address nothing answers
// on, so a call would leave the report out).
func TestReportsTakeTheNodesOwnLocally(t *testing.T) {
	id, _ := NewIdentity()
	r := NewRelay(1, "c1", NewKeyring(id.Keys(), 0, nil), nil, func() (*placement.State, error) { return &placement.State{}, nil }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer r.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	nodes := map[uint64]*placement.Node{1: {ID: 1, AdminAddr: dead}}
	if got := r.Reports(context.Background(), nodes, 500*time.Millisecond); got[1] != nil {
		t.Fatalf("without ReportLocally, a report came from a dead address: %v", got[1])
	}
	r.ReportLocally(func() *clusterv1.NodeReport { return &clusterv1.NodeReport{NodeId: 1, MaxClusterVersion: 9} })
	got := r.Reports(context.Background(), nodes, 500*time.Millisecond)
	if got[1] == nil || got[1].MaxClusterVersion != 9 {
		t.Fatalf("own report %v, want the local one", got[1])
	}
}
