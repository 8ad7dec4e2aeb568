package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"google.golang.org/grpc"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/mysqlfront"
	"github.com/flotilla-relay/flotilla/placement"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// maxRelayMessage bounds one relayed message: events are batched up to 1 MiB, and a
// single event or part is at most one stored piece (an event larger than a piece
// comes in parts, see DumpChunk.event_part): under 8 MiB, or an event of up to 48 MiB
// stored whole by a Flotilla before parts existed.
const maxRelayMessage = 64 << 20

// Relay reads binlog from other nodes for replicas connected to this one.
type Relay struct {
	nodeID    uint64
	clusterID string
	keys      *Keyring
	tls       *tls.Config // nil: plaintext
	meta      func() (*placement.State, error)
	log       *slog.Logger
	// silence is relaySilence (tests shorten it).
	silence time.Duration

	// local, once set, is this node's own report: Reports takes it directly
	// instead of calling the node's own admin port (a signed gRPC round trip that
	// every status request and placement round made to itself).
	local atomic.Pointer[func() *clusterv1.NodeReport]

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// ReportLocally makes Reports take this node's own report from f.
func (r *Relay) ReportLocally(f func() *clusterv1.NodeReport) { r.local.Store(&f) }

// NewRelay creates a relay for node nodeID of cluster clusterID that signs its calls
// with keys; tlsCfg (nil: plaintext) is how it reaches other nodes' admin ports.
func NewRelay(nodeID uint64, clusterID string, keys *Keyring, tlsCfg *tls.Config, meta func() (*placement.State, error), log *slog.Logger) *Relay {
	return &Relay{nodeID: nodeID, clusterID: clusterID, keys: keys, tls: tlsCfg, meta: meta, log: log, silence: relaySilence, conns: map[string]*grpc.ClientConn{}}
}

// Close closes the connections to other nodes.
func (r *Relay) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = map[string]*grpc.ClientConn{}
}

func (r *Relay) client(addr string) (clusterv1.ClusterClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.conns[addr]; ok {
		return clusterv1.NewClusterClient(c), nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(secure.GRPCCredentials(r.tls)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRelayMessage)))
	if err != nil {
		return nil, fmt.Errorf("connect to node at %s: %w", addr, err)
	}
	r.conns[addr] = c
	return clusterv1.NewClusterClient(c), nil
}

// Source returns a source that relays upstream u from the node leading its group
// (leaderHint, when known) or, with anyReplica, from any node holding a replica.
func (r *Relay) Source(u *placement.Upstream, leaderHint uint64, anyReplica bool) mysqlfront.Source {
	return &relaySource{r: r, u: u, hint: leaderHint, any: anyReplica}
}

type relaySource struct {
	r    *Relay
	u    *placement.Upstream
	hint uint64
	any  bool
}

// targets lists the nodes to ask, best first: the known leader, then the group's
// other members; never this node.
func (s *relaySource) targets() ([]*placement.Node, error) {
	st, err := s.r.meta()
	if err != nil {
		return nil, err
	}
	var ids []uint64
	if s.hint != 0 {
		ids = append(ids, s.hint)
	}
	for _, id := range st.Assignments[s.u.GroupID] {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	var out []*placement.Node
	for _, id := range ids {
		if n, ok := st.Nodes[id]; ok && id != s.r.nodeID {
			out = append(out, n)
		}
	}
	return out, nil
}

// Files implements mysqlfront.Source.
func (s *relaySource) Files(ctx context.Context) (mysqlfront.FileList, error) {
	nodes, err := s.targets()
	if err != nil {
		return mysqlfront.FileList{}, err
	}
	var errs []string
	for _, n := range nodes {
		c, err := s.r.client(n.AdminAddr)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		req := &clusterv1.FilesRequest{GroupId: s.u.GroupID}
		sctx, err := s.r.keys.Sign(ctx, n.ID, clusterv1.Cluster_Files_FullMethodName, req)
		if err != nil {
			return mysqlfront.FileList{}, err
		}
		resp, err := c.Files(sctx, req)
		if err != nil {
			errs = append(errs, fmt.Sprintf("node %d: %v", n.ID, err))
			continue
		}
		fl := mysqlfront.FileList{GTIDs: resp.GtidState, Purged: resp.GtidPurged, File: resp.CurrentFile, Size: resp.CurrentSize}
		if s.u.Flavor != "mysql" {
			if fl.State, err = binlog.ParsePosition(resp.GtidState); err != nil {
				return mysqlfront.FileList{}, fmt.Errorf("node %d sent GTID state %q: %w", n.ID, resp.GtidState, err)
			}
		}
		for _, f := range resp.Files {
			fl.Files = append(fl.Files, statemachine.FileStatus{Name: f.Name, Size: f.Size})
		}
		return fl, nil
	}
	return mysqlfront.FileList{}, fmt.Errorf("no node holding upstream %s answered: %s", s.u.Name, strings.Join(errs, "; "))
}

// Dump implements mysqlfront.Source: it relays the dump from the first node that
// serves it. Anything that ends the relay early (the serving node died or stopped
// leading) ends the replica's dump with 1053, so it reconnects and resumes exactly.
func (s *relaySource) Dump(ctx context.Context, spec mysqlfront.DumpSpec, sink mysqlfront.EventSink) error {
	nodes, err := s.targets()
	if err != nil {
		return mysqlfront.ErrRetry("cannot read the cluster metadata: %v", err)
	}
	req := &clusterv1.DumpRequest{GroupId: spec.GroupID, GtidMode: spec.GTIDMode, ConnectState: spec.ConnectState, File: spec.File,
		Pos: spec.Pos, Flags: uint32(spec.Flags), ServerId: spec.ServerID, HasChecksum: spec.HasChecksum, Checksum: spec.Checksum,
		HeartbeatNanos: uint64(spec.Heartbeat), AnyReplica: s.any, ViaNode: s.r.nodeID, MysqlGtidMode: spec.MySQLGTIDMode, MysqlGtidSet: spec.MySQLSet}
	var tried []string
	for i := 0; i < len(nodes); i++ {
		n := nodes[i]
		done, leader, err := s.dumpFrom(ctx, n, req, sink)
		if done || ctx.Err() != nil {
			return err
		}
		tried = append(tried, fmt.Sprintf("node %d: %v", n.ID, err))
		// A node that knows the leader points there next.
		if leader != 0 && leader != s.r.nodeID {
			if j := slices.IndexFunc(nodes, func(x *placement.Node) bool { return x.ID == leader }); j > i+1 {
				nodes[i+1], nodes[j] = nodes[j], nodes[i+1]
			}
		}
	}
	return mysqlfront.ErrRetry("no node serves upstream %s right now (%s); the replica retries", s.u.Name, strings.Join(tried, "; "))
}

// dumpFrom relays from one node. done reports that the dump started there (its end,
// whatever it is, is the replica's); otherwise err says why that node did not serve
// and leader names the leader it knows of.
func (s *relaySource) dumpFrom(ctx context.Context, n *placement.Node, req *clusterv1.DumpRequest, sink mysqlfront.EventSink) (done bool, leader uint64, err error) {
	c, err := s.r.client(n.AdminAddr)
	if err != nil {
		return false, 0, err
	}
	replica := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sctx, err := s.r.keys.Sign(ctx, n.ID, clusterv1.Cluster_Dump_FullMethodName, req)
	if err != nil {
		return false, 0, err
	}
	stream, err := c.Dump(sctx, req)
	if err != nil {
		return false, 0, err
	}
	w := newSilenceWatch(s.r.silence)
	go w.run(ctx, cancel)
	started := false
	for {
		w.waiting()
		ch, err := stream.Recv()
		if err != nil {
			if replica.Err() != nil {
				return true, 0, nil // the replica went away
			}
			if cause := context.Cause(ctx); errors.Is(cause, errRelaySilent) {
				err = cause
			}
			if !started {
				return false, 0, err
			}
			return true, 0, mysqlfront.ErrRetry("the relay of upstream %s from node %d broke (%v); the replica reconnects and resumes", s.u.Name, n.ID, err)
		}
		w.heard(ch)
		if ch.NotServing {
			return false, ch.LeaderNode, fmt.Errorf("does not serve it (leader: node %d)", ch.LeaderNode)
		}
		if w.isKeepalive(ch) {
			continue
		}
		if !started {
			started = true
			s.r.log.Info("relaying a binlog dump", "upstream", s.u.Name, "group", s.u.GroupID, "from_node", n.ID)
		}
		for _, ev := range ch.Events {
			if err := sink.Event(ev); err != nil {
				return true, 0, err // the replica went away, or the events were not whole (the sink says)
			}
		}
		if len(ch.EventPart) > 0 {
			if err := sink.EventPart(ch.EventPart); err != nil {
				return true, 0, err
			}
		}
		if ch.File != 0 {
			sink.Position(ch.File, ch.Pos)
		}
		if ch.Eof {
			return true, 0, sink.EOF()
		}
		if ch.ErrorCode != 0 {
			return true, 0, mysql.NewError(uint16(ch.ErrorCode), ch.ErrorMessage)
		}
	}
}

// relaySilence is how long a relay waits to hear from the node serving it before it
// gives that node up: for the first message after asking (every release answers at
// once, with events or a refusal), and between messages once the node has shown that
// it sends keepalives (see relayKeepalive; a release before 0.33 does not, and is
// waited for as before). A frozen leader (a stopped process, a hung disk) otherwise
// held every replica relayed from it until the replica's own slave_net_timeout
// (60 s by default), though a new leader served within seconds.
const relaySilence = 5 * time.Second

// errRelaySilent ends a relay whose serving node fell silent.
var errRelaySilent = errors.New("the serving node sent nothing")

// silenceWatch tells when a relay's serving node fell silent. Only time spent
// waiting for a message counts: a replica that reads slowly holds the relay in its
// sink (for up to the front end's write timeout), and gRPC's flow control then holds
// the serving node's messages, keepalives included.
type silenceWatch struct {
	limit      time.Duration
	last       atomic.Int64 // unix nanoseconds since which the relay has waited (0: not waiting)
	heardAny   atomic.Bool
	keepsAlive atomic.Bool
}

func newSilenceWatch(limit time.Duration) *silenceWatch {
	return &silenceWatch{limit: limit}
}

// waiting notes that the relay waits for the next message from now on.
func (w *silenceWatch) waiting() { w.last.Store(time.Now().UnixNano()) }

// heard notes a message: the relay no longer waits.
func (w *silenceWatch) heard(ch *clusterv1.DumpChunk) {
	w.last.Store(0)
	w.heardAny.Store(true)
	if w.isKeepalive(ch) {
		w.keepsAlive.Store(true)
	}
}

// isKeepalive reports whether ch is a keepalive: a message with nothing in it.
func (*silenceWatch) isKeepalive(ch *clusterv1.DumpChunk) bool {
	return len(ch.Events) == 0 && len(ch.EventPart) == 0 && ch.File == 0 && !ch.Eof && ch.ErrorCode == 0 && !ch.NotServing
}

// run cancels the relay, with errRelaySilent, once the node is silent too long;
// it returns when ctx ends.
func (w *silenceWatch) run(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(w.limit / 10)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		since := w.last.Load()
		if since == 0 {
			continue // handing a message on
		}
		quiet := time.Since(time.Unix(0, since))
		if quiet >= w.limit && (!w.heardAny.Load() || w.keepsAlive.Load()) {
			cancel(fmt.Errorf("%w for %v", errRelaySilent, quiet.Round(100*time.Millisecond)))
			return
		}
	}
}

// Reports asks every node for its report at once; a node missing from the result did
// not answer within the timeout.
func (r *Relay) Reports(ctx context.Context, nodes map[uint64]*placement.Node, timeout time.Duration) map[uint64]*clusterv1.NodeReport {
	var mu sync.Mutex
	out := map[uint64]*clusterv1.NodeReport{}
	var done chan struct{} // closed once the local report is in out
	if local := r.local.Load(); local != nil {
		if _, ok := nodes[r.nodeID]; ok {
			// Made while the other nodes are asked.
			done = make(chan struct{})
			go func() {
				defer close(done)
				rep := (*local)()
				mu.Lock()
				out[r.nodeID] = rep
				mu.Unlock()
			}()
			others := make(map[uint64]*placement.Node, len(nodes))
			for id, n := range nodes {
				if id != r.nodeID {
					others[id] = n
				}
			}
			nodes = others
		}
	}
	r.each(ctx, nodes, timeout, func(ctx context.Context, id uint64, c clusterv1.ClusterClient) {
		req := &clusterv1.ReportRequest{}
		sctx, err := r.keys.Sign(ctx, id, clusterv1.Cluster_Report_FullMethodName, req)
		if err != nil {
			return
		}
		rep, err := c.Report(sctx, req)
		if err != nil {
			r.log.Debug("node did not report", "node", id, "err", err)
			return
		}
		mu.Lock()
		out[id] = rep
		mu.Unlock()
	})
	if done != nil {
		<-done
	}
	return out
}

// Alive asks every node who it is at once, which costs a node next to nothing where
// a report covers all its groups: the nodes that answered as themselves, of this
// cluster, within the timeout (a node of another cluster that took a dead node's
// address is not that node).
func (r *Relay) Alive(ctx context.Context, nodes map[uint64]*placement.Node, timeout time.Duration) map[uint64]bool {
	var mu sync.Mutex
	out := map[uint64]bool{}
	r.each(ctx, nodes, timeout, func(ctx context.Context, id uint64, c clusterv1.ClusterClient) {
		resp, err := c.Identity(ctx, &clusterv1.IdentityRequest{})
		if err != nil || resp.NodeId != id || resp.ClusterId != r.clusterID {
			return
		}
		mu.Lock()
		out[id] = true
		mu.Unlock()
	})
	return out
}

// each calls f for every node at once, with a client of it and a context that ends
// after timeout, and returns when every call has.
func (r *Relay) each(ctx context.Context, nodes map[uint64]*placement.Node, timeout time.Duration, f func(ctx context.Context, id uint64, c clusterv1.ClusterClient)) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var wg sync.WaitGroup
	for id, n := range nodes {
		c, err := r.client(n.AdminAddr)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx, id, c)
		}()
	}
	wg.Wait()
}

// TransferLeader asks node n, which leads gid, to hand leadership to target.
func (r *Relay) TransferLeader(ctx context.Context, n *placement.Node, gid, target uint64) error {
	c, err := r.client(n.AdminAddr)
	if err != nil {
		return err
	}
	req := &clusterv1.TransferLeaderRequest{GroupId: gid, TargetNode: target}
	if ctx, err = r.keys.Sign(ctx, n.ID, clusterv1.Cluster_TransferLeader_FullMethodName, req); err != nil {
		return err
	}
	_, err = c.TransferLeader(ctx, req)
	return err
}
