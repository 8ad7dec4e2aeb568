package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/lni/dragonboat/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-relay/flotilla/internal/buildinfo"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/mysqlfront"
	"github.com/flotilla-relay/flotilla/placement"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// MaxMetaVoters is how many nodes vote in the metadata group; further nodes follow
// it as non-voting members, so a large cluster does not slow metadata commits.
const MaxMetaVoters = 3

// Membership is the part of dragonboat's NodeHost that changes the metadata group.
type Membership interface {
	SyncGetClusterMembership(ctx context.Context, clusterID uint64) (*dragonboat.Membership, error)
	SyncRequestAddNode(ctx context.Context, clusterID, nodeID uint64, addr string, ccid uint64) error
	SyncRequestAddObserver(ctx context.Context, clusterID, nodeID uint64, addr string, ccid uint64) error
	SyncRequestDeleteNode(ctx context.Context, clusterID, nodeID uint64, ccid uint64) error
}

// Metadata is the part of the placement service joining needs.
type Metadata interface {
	Read(ctx context.Context) (*placement.State, error)
	RegisterNode(ctx context.Context, n placement.Node) error
}

// LocalSourceFunc returns this node's source for a group, or nil and the leader this
// node knows of when it does not serve the group (anyReplica: a follower's replica
// will do).
type LocalSourceFunc func(gid uint64, anyReplica bool) (mysqlfront.Source, uint64)

// Service implements clusterv1.ClusterServer.
type Service struct {
	clusterv1.UnimplementedClusterServer
	NodeID uint64
	Ident  Identity
	// Keys verifies node-to-node calls (and holds what Join hands out).
	Keys *Keyring
	// Admin authenticates Join and Identity: the admin token or a node certificate.
	Admin   secure.Admin
	Members Membership
	Meta    Metadata
	Local   LocalSourceFunc
	// Groups describes this node's group replicas, for Report; Shedding says whether
	// it is handing its leaderships away.
	Groups   func() []*adminv1.GroupStatus
	Shedding func() bool
	// Storage says why the node stores nothing now ("" when it does).
	Storage func() string
	// Transfer asks raft to move a group's leadership (dragonboat's
	// RequestLeaderTransfer).
	Transfer func(gid, target uint64) error
	Log      *slog.Logger
}

// MethodPrefix is the gRPC method prefix of this service: the admin API's token check
// leaves these methods to the checks below.
const MethodPrefix = "/flotilla.cluster.v1.Cluster/"

func (s *Service) checkAdmin(ctx context.Context) error {
	if err := s.Admin.Check(ctx); err != nil {
		return status.Errorf(codes.Unauthenticated, "joining needs the cluster's admin credentials on the joining node: %s", status.Convert(err).Message())
	}
	return nil
}

// checkNode authenticates a node-to-node call: with node TLS, a verified node
// certificate (the token or a bare connection is not enough); always, a signature
// with a node key this node holds, over the method and the request, used once.
func (s *Service) checkNode(ctx context.Context, method string, req proto.Message) error {
	if s.Admin.Certificates && !secure.VerifiedPeer(ctx) {
		return status.Errorf(codes.Unauthenticated, "node-to-node call %s refused: node TLS is on and the caller presented no certificate signed by the cluster's CA", method)
	}
	return s.Keys.Verify(ctx, s.NodeID, method, req)
}

// Join implements clusterv1.ClusterServer. It hands out the cluster secret, so it
// always needs a credential: an admin API open on the loopback (no token, no
// certificates) admits no node, or any local user could take the secret.
func (s *Service) Join(ctx context.Context, r *clusterv1.JoinRequest) (*clusterv1.JoinResponse, error) {
	if s.Admin.Token == "" && !s.Admin.Certificates {
		return nil, status.Error(codes.Unauthenticated, "this cluster admits no node: its nodes run without an admin token or node certificates; start every node with the same admin token ($FLOTILLA_TOKEN or --admin-token-file) or with --tls-ca/--tls-cert/--tls-key")
	}
	if err := s.checkAdmin(ctx); err != nil {
		return nil, err
	}
	if r.NodeId == 0 || r.RaftAddr == "" || r.AdminAddr == "" || r.MysqlAddr == "" {
		return nil, status.Error(codes.InvalidArgument, "join needs a positive node id and the raft, admin and MySQL addresses")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := s.Meta.Read(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "metadata group unavailable: %v", err)
	}
	if n, ok := st.Nodes[r.NodeId]; ok && n.RaftAddr != r.RaftAddr {
		return nil, status.Errorf(codes.AlreadyExists,
			"node id %d is already registered with raft address %s; the joining node has raft address %s: give it another --node-id (or, if it replaces node %d, remove that node first)",
			r.NodeId, n.RaftAddr, r.RaftAddr, r.NodeId)
	}
	for id, n := range st.Nodes {
		if id != r.NodeId && n.RaftAddr == r.RaftAddr {
			return nil, status.Errorf(codes.AlreadyExists, "raft address %s already belongs to node %d; the joining node claims id %d", r.RaftAddr, id, r.NodeId)
		}
	}
	m, err := s.Members.SyncGetClusterMembership(ctx, placement.MetaGroupID)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "read metadata membership: %v", err)
	}
	// Register first: while a second voter is being added the group needs it to
	// commit, and it cannot answer until this call returns.
	self := placement.Node{ID: r.NodeId, RaftAddr: r.RaftAddr, MySQLAddr: r.MysqlAddr, AdminAddr: r.AdminAddr, Labels: r.Labels,
		Version: r.Version, Commit: r.Commit, MaxClusterVersion: r.MaxClusterVersion}
	if self.Understands() < st.Version() {
		return nil, status.Errorf(codes.FailedPrecondition, "node %d runs %s, which understands cluster versions up to %d, and the cluster is at %d: install a release that understands %d",
			r.NodeId, self.VersionOrUnknown(), self.Understands(), st.Version(), st.Version())
	}
	if err := s.Meta.RegisterNode(ctx, self); err != nil {
		return nil, status.Errorf(codes.Unavailable, "register node %d: %v", r.NodeId, err)
	}
	// The node joins as a non-voting member: until it runs and has caught up it
	// cannot vote, and counting it would raise the quorum (a 1-node cluster would
	// stop until the joiner starts). The placement controller promotes observers
	// that answer while the group has fewer than MaxMetaVoters voters.
	_, voter := m.Nodes[r.NodeId]
	_, observer := m.Observers[r.NodeId]
	if !voter && !observer {
		err = s.Members.SyncRequestAddObserver(ctx, placement.MetaGroupID, r.NodeId, r.RaftAddr, m.ConfigChangeID)
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "add node %d to the metadata group: %v (retry the join)", r.NodeId, err)
	}
	s.Log.Info("node joined the cluster", "node", r.NodeId, "raft", r.RaftAddr, "admin", r.AdminAddr, "voter", voter)
	resp := &clusterv1.JoinResponse{ClusterId: s.Ident.ClusterID, Secret: s.Ident.Secret,
		DeploymentId: s.Ident.DeploymentID, Voter: voter}
	keys, active := s.Keys.Keys()
	for _, k := range keys {
		resp.NodeKeys = append(resp.NodeKeys, &clusterv1.NodeKey{Gen: k.Gen, Key: k.Key})
	}
	resp.ActiveNodeKey = active
	return resp, nil
}

// Identity implements clusterv1.ClusterServer. It needs no credentials: a node
// started with --join asks it to refuse joining a different cluster.
func (s *Service) Identity(context.Context, *clusterv1.IdentityRequest) (*clusterv1.IdentityResponse, error) {
	return &clusterv1.IdentityResponse{ClusterId: s.Ident.ClusterID, NodeId: s.NodeID}, nil
}

// Files implements clusterv1.ClusterServer.
func (s *Service) Files(ctx context.Context, r *clusterv1.FilesRequest) (*clusterv1.FilesResponse, error) {
	if err := s.checkNode(ctx, clusterv1.Cluster_Files_FullMethodName, r); err != nil {
		return nil, err
	}
	src, leader := s.Local(r.GroupId, true)
	if src == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "node %d holds no replica of group %d (leader: %d)", s.NodeID, r.GroupId, leader)
	}
	fl, err := src.Files(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "group %d on node %d: %v", r.GroupId, s.NodeID, err)
	}
	out := &clusterv1.FilesResponse{GtidState: fl.GTIDs, GtidPurged: fl.Purged, CurrentFile: fl.File, CurrentSize: fl.Size}
	for _, f := range fl.Files {
		out.Files = append(out.Files, &clusterv1.FileInfo{Name: f.Name, Size: f.Size})
	}
	return out, nil
}

// Dump implements clusterv1.ClusterServer: it serves a dump from this node's replica
// for a replica connected to another node.
func (s *Service) Dump(r *clusterv1.DumpRequest, stream clusterv1.Cluster_DumpServer) error {
	ctx := stream.Context()
	if err := s.checkNode(ctx, clusterv1.Cluster_Dump_FullMethodName, r); err != nil {
		return err
	}
	src, leader := s.Local(r.GroupId, r.AnyReplica)
	if src == nil {
		return stream.Send(&clusterv1.DumpChunk{NotServing: true, LeaderNode: leader})
	}
	spec := mysqlfront.DumpSpec{GroupID: r.GroupId, GTIDMode: r.GtidMode, ConnectState: r.ConnectState, File: r.File, Pos: r.Pos,
		Flags: uint16(r.Flags), ServerID: r.ServerId, HasChecksum: r.HasChecksum, Checksum: r.Checksum, Heartbeat: time.Duration(r.HeartbeatNanos),
		MySQLGTIDMode: r.MysqlGtidMode, MySQLSet: r.MysqlGtidSet}
	s.Log.Debug("serving a relayed dump", "group", r.GroupId, "via_node", r.ViaNode)
	sink := &chunkSink{stream: stream, sent: time.Now()}
	kctx, stopKeepalive := context.WithCancel(ctx)
	kdone := make(chan struct{})
	go func() {
		defer close(kdone)
		sink.keepalive(kctx, relayKeepalive)
	}()
	err := src.Dump(ctx, spec, sink)
	stopKeepalive()
	<-kdone // no Send may follow the handler's return
	if ferr := sink.flush(); ferr != nil || ctx.Err() != nil {
		return nil
	}
	if err == nil {
		return nil
	}
	code, msg := uint16(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG), err.Error()
	var me *mysql.MyError
	if errors.As(err, &me) {
		code, msg = me.Code, me.Message
	}
	return stream.Send(&clusterv1.DumpChunk{ErrorCode: uint32(code), ErrorMessage: msg})
}

// chunkSink batches a dump's events into stream messages: a message goes out at each
// position report (at the tail, at each file's end and every 64 KiB), so nothing waits
// in the batch while the dump sits at the tail.
type chunkSink struct {
	stream  clusterv1.Cluster_DumpServer
	pending clusterv1.DumpChunk
	bytes   int
	// mu orders the sends of the dump and of keepalive.
	mu   sync.Mutex
	sent time.Time // of the last message
	err  error     // the first failed send: the relaying node went away
}

const maxChunkBytes = 1 << 20

// relayKeepalive: a serving node that sent nothing for this long sends an empty
// message, so that the relaying node can tell a dump quiet at the tail from a node
// that froze or a link that died (see relaySilence), which a replica would otherwise
// wait out for slave_net_timeout. A release before 0.33 ignores empty messages.
const relayKeepalive = time.Second

// keepalive sends an empty message whenever nothing was sent for period, until ctx
// ends.
func (c *chunkSink) keepalive(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		if c.err == nil && time.Since(c.sent) >= period {
			c.send(&clusterv1.DumpChunk{})
		}
		c.mu.Unlock()
	}
}

// send sends msg; c.mu is held.
func (c *chunkSink) send(msg *clusterv1.DumpChunk) {
	if err := c.stream.Send(msg); err != nil && c.err == nil {
		c.err = fmt.Errorf("relay dump to the connected node: %w", err)
	}
	c.sent = time.Now()
}

func (c *chunkSink) Event(ev []byte) error {
	if err := c.failed(); err != nil {
		return err
	}
	if c.bytes > 0 && c.bytes+len(ev) > maxChunkBytes {
		if err := c.flush(); err != nil {
			return err
		}
	}
	c.pending.Events = append(c.pending.Events, append([]byte(nil), ev...))
	c.bytes += len(ev)
	return nil
}

// EventPart sends the part in a message of its own, after the events before it.
func (c *chunkSink) EventPart(part []byte) error {
	if err := c.failed(); err != nil {
		return err
	}
	c.pending.EventPart = part // sent (copied into the message) before flush returns
	return c.flush()
}

func (c *chunkSink) Position(file, pos uint64) {
	c.pending.File, c.pending.Pos = file, pos
	_ = c.flush()
}

func (c *chunkSink) EOF() error {
	c.pending.Eof = true
	return c.flush()
}

func (c *chunkSink) flush() error {
	if len(c.pending.Events) == 0 && !c.pending.Eof && c.pending.File == 0 && c.pending.EventPart == nil {
		return nil
	}
	msg := &clusterv1.DumpChunk{Events: c.pending.Events, File: c.pending.File, Pos: c.pending.Pos, Eof: c.pending.Eof, EventPart: c.pending.EventPart}
	c.pending, c.bytes = clusterv1.DumpChunk{}, 0
	c.mu.Lock()
	defer c.mu.Unlock()
	c.send(msg)
	return c.err
}

// failed returns the error of the first failed send.
func (c *chunkSink) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Report implements clusterv1.ClusterServer.
func (s *Service) Report(ctx context.Context, r *clusterv1.ReportRequest) (*clusterv1.NodeReport, error) {
	if err := s.checkNode(ctx, clusterv1.Cluster_Report_FullMethodName, r); err != nil {
		return nil, err
	}
	return s.LocalReport(), nil
}

// LocalReport is the report Report sends, for this node's own use (Relay.ReportLocally).
func (s *Service) LocalReport() *clusterv1.NodeReport {
	rep := &clusterv1.NodeReport{NodeId: s.NodeID, Groups: s.Groups(), NodeKeyGens: s.Keys.Gens(), MaxClusterVersion: buildinfo.ClusterVersion}
	if s.Shedding != nil {
		rep.SheddingLeaders = s.Shedding()
	}
	if s.Storage != nil {
		rep.StorageProblem = s.Storage()
	}
	return rep
}

// TransferLeader implements clusterv1.ClusterServer.
func (s *Service) TransferLeader(ctx context.Context, r *clusterv1.TransferLeaderRequest) (*clusterv1.TransferLeaderResponse, error) {
	if err := s.checkNode(ctx, clusterv1.Cluster_TransferLeader_FullMethodName, r); err != nil {
		return nil, err
	}
	if err := s.Transfer(r.GroupId, r.TargetNode); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "node %d: transfer the leadership of group %d to node %d: %v", s.NodeID, r.GroupId, r.TargetNode, err)
	}
	s.Log.Info("leadership transfer requested", "group", r.GroupId, "to", r.TargetNode)
	return &clusterv1.TransferLeaderResponse{}, nil
}
