// Package adminrpc serves the flotilla.admin.v1.Admin gRPC API and provides the client
// the CLI uses. The server translates between the API and the placement metadata and
// the node's local group replicas.
package adminrpc

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"net"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla-relay/flotilla/internal/mysqlauth"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/placement"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
	"github.com/flotilla-relay/flotilla/shard"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// Metadata is the part of the placement service the admin API uses.
type Metadata interface {
	Read(ctx context.Context) (*placement.State, error)
	// View runs fn on the metadata after a linearizable read, without copying it;
	// fn must neither modify nor keep the State.
	View(ctx context.Context, fn func(*placement.State)) error
	SetDraining(ctx context.Context, id uint64, draining bool, note string) error
	RemoveNode(ctx context.Context, id uint64, note string) error
	AddUpstream(ctx context.Context, u placement.Upstream) (*placement.Upstream, error)
	RemoveUpstream(ctx context.Context, name string) error
	SetPaused(ctx context.Context, name string, paused bool) error
	SetCandidates(ctx context.Context, name string, cands []string, downAfter time.Duration, note string) error
	UpdateUpstream(ctx context.Context, name string, ch placement.UpstreamChange, note string) error
}

// Shards gives the node's local group replicas.
type Shards interface {
	Shard(gid uint64) (*shard.Shard, bool)
	// RaftMembers is every local group's voting members, read in one pass.
	RaftMembers() map[uint64][]uint64
}

// ReplicaLister lists the replicas connected to this node's front end.
type ReplicaLister interface {
	ConnectedReplicas(gid uint64) []*adminv1.ConnectedReplica
}

// Inspector checks a master before it is added; shard.InspectSource in production.
type Inspector func(ctx context.Context, chk shard.SourceCheck) (shard.SourceInfo, error)

// Server implements adminv1.AdminServer.
type Server struct {
	adminv1.UnimplementedAdminServer
	NodeID   uint64
	Meta     Metadata
	Shards   Shards
	Replicas ReplicaLister
	Inspect  Inspector
	// MetaLeader reports the metadata group's leader, for status.
	MetaLeader func() uint64
	// Local is this node's copy of the metadata (no quorum needed).
	Local func() (*placement.State, error)
	// Peers gathers the nodes' reports for whole-cluster answers (nil: this node's
	// view only).
	Peers Peers
	// RemoveMetaMember takes a removed node out of the metadata raft group.
	RemoveMetaMember func(ctx context.Context, id uint64) error
	// ClusterID is shown by status.
	ClusterID string
	// MetaVoters lists the metadata group's voting members, for status.
	MetaVoters func(ctx context.Context) []uint64
	// Sealer seals upstream passwords before they enter the metadata group.
	Sealer *secure.Sealer
	// Auth decides who may call: the bearer token or a verified client certificate.
	Auth secure.Admin
	// TLS, when set, serves the API over TLS (with client certificates verified
	// against its CA); PeerTLS is how this node calls other nodes' admin APIs.
	TLS, PeerTLS *tls.Config
	// Services registers further gRPC services on the admin port (the node-to-node
	// Cluster service); OwnAuthPrefixes are method prefixes that authenticate
	// themselves and so skip the token check.
	Services        []func(*grpc.Server)
	OwnAuthPrefixes []string
	// Rotate replaces the key nodes sign their calls to each other with, on every
	// member (cluster.Relay.Rotate), returning the new generation and the nodes.
	Rotate func(ctx context.Context) (uint64, []uint64, error)
	// Shed makes this node hand its leaderships away and take none for d (cancel:
	// take them again), returning once it leads nothing; Transfer asks node n to hand
	// group gid's leadership to target (for nodes whose release cannot shed).
	Shed     func(ctx context.Context, d time.Duration, cancel bool) error
	Transfer func(ctx context.Context, n *placement.Node, gid, target uint64) error
	Log      *slog.Logger
}

// Serve listens on addr until ctx ends.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(s.intercept), grpc.StreamInterceptor(s.interceptStream)}
	if s.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.TLS)))
	}
	gs := grpc.NewServer(opts...)
	adminv1.RegisterAdminServer(gs, s)
	for _, reg := range s.Services {
		reg(gs)
	}
	go func() {
		<-ctx.Done()
		// Let calls in flight finish, but not a relayed dump, which never does on
		// its own: after a grace period the rest are cut.
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			gs.Stop()
		}
	}()
	if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("admin API: %w", err)
	}
	return nil
}

func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	// A bug reached through one call fails that call, never the node.
	defer func() {
		if r := recover(); r != nil {
			s.Log.Error("panic in an admin call", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "internal error in %s (logged on node %d)", info.FullMethod, s.NodeID)
		}
	}()
	if !s.ownAuth(info.FullMethod) {
		if err := s.Auth.Check(ctx); err != nil {
			s.Log.Warn("admin call refused", "method", info.FullMethod, "err", err)
			return nil, err
		}
	}
	resp, err = h(ctx, req)
	if err != nil {
		s.Log.Warn("admin call failed", "method", info.FullMethod, "err", err)
	}
	return resp, err
}

// interceptStream recovers a panic in a streaming call (a relayed binlog dump): it
// ends that stream, never the node. Streams authenticate themselves (the Cluster
// service checks the cluster secret).
func (s *Server) interceptStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.Log.Error("panic in a streaming call", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "internal error in %s (logged on node %d)", info.FullMethod, s.NodeID)
		}
	}()
	if !s.ownAuth(info.FullMethod) {
		return status.Errorf(codes.Unimplemented, "no streaming call %s", info.FullMethod)
	}
	return h(srv, ss)
}

func (s *Server) ownAuth(method string) bool {
	for _, p := range s.OwnAuthPrefixes {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	return false
}

// metaErr maps metadata errors to gRPC codes: refusals are the caller's to fix.
func metaErr(err error) error {
	var re *placement.RefusedError
	if errors.As(err, &re) {
		if re.NotFound {
			return status.Error(codes.NotFound, re.Reason)
		}
		return status.Error(codes.FailedPrecondition, re.Reason)
	}
	return status.Errorf(codes.Unavailable, "metadata group unavailable: %v", err)
}

// replicaUser checks a replica login and keeps only its password's hash.
func replicaUser(ru *adminv1.ReplicaUser) (placement.ReplicaUser, error) {
	if ru.User == "" {
		return placement.ReplicaUser{}, status.Error(codes.InvalidArgument, "a replica user name is empty")
	}
	if utf8.RuneCountInString(ru.User) > mysqlauth.MaxUserName {
		return placement.ReplicaUser{}, status.Errorf(codes.InvalidArgument, "replica user name %q is longer than %d characters, which no login may use (as MySQL); choose a shorter one", ru.User, mysqlauth.MaxUserName)
	}
	if ru.Password == "" {
		return placement.ReplicaUser{}, status.Errorf(codes.InvalidArgument, "replica user %q has an empty password: anyone could log in as it and read the binlog; give it one", ru.User)
	}
	plugin := ru.AuthPlugin
	if plugin == "" {
		plugin = mysqlauth.Native
	}
	hash, err := mysqlauth.Hash(plugin, ru.Password)
	if err != nil {
		return placement.ReplicaUser{}, status.Errorf(codes.InvalidArgument, "replica user %q: %v", ru.User, err)
	}
	// An older node reading this metadata knows only the cleartext field: a random
	// value there (nobody's password) keeps it from taking "" as the password.
	lock := make([]byte, 24)
	_, _ = rand.Read(lock)
	return placement.ReplicaUser{User: ru.User, Plugin: plugin, Hash: hash, RequireTLS: ru.RequireTls,
		Password: "!locked-" + hex.EncodeToString(lock)}, nil
}

// AddUpstream checks the master and registers the upstream.
func (s *Server) AddUpstream(ctx context.Context, r *adminv1.AddUpstreamRequest) (*adminv1.Upstream, error) {
	if r.Name == "" || r.Source == "" || r.User == "" {
		return nil, status.Error(codes.InvalidArgument, "name, --source and --user are required")
	}
	if _, _, err := net.SplitHostPort(r.Source); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "--source %q is not HOST:PORT", r.Source)
	}
	if len(r.ReplicaUsers) == 0 {
		return nil, status.Error(codes.InvalidArgument, "declare at least one --replica-user (with --replica-password) that replicas will log in with")
	}
	// The metadata's applier refuses a duplicate name again; this check only spares
	// the master a connection. A view, not Read's copy of every upstream: that copy
	// was the largest cost of adding the 1,000th upstream.
	var dup bool
	var nodes int
	if err := s.Meta.View(ctx, func(st *placement.State) {
		_, dup = st.Upstreams[r.Name]
		nodes = len(st.Nodes)
	}); err != nil {
		return nil, metaErr(err)
	}
	if dup {
		return nil, status.Errorf(codes.AlreadyExists, "upstream %q already exists", r.Name)
	}
	serverID := r.ServerId
	if serverID == 0 {
		serverID = SyncerServerID(s.ClusterID, r.Name)
	}
	var srcTLS *placement.SourceTLS
	if r.SourceTls || r.SourceTlsCa != "" || r.SourceTlsServerName != "" {
		srcTLS = &placement.SourceTLS{CAPEM: r.SourceTlsCa, ServerName: r.SourceTlsServerName}
	}
	if s.Sealer == nil {
		return nil, status.Error(codes.Internal, "this node has no cluster key to seal the upstream's password with")
	}
	sealed, err := s.Sealer.Seal(r.Password, r.Name)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	info, err := s.Inspect(ctx, shard.SourceCheck{Addr: r.Source, User: r.User, Password: r.Password, Flavor: r.Flavor, TLS: srcTLS,
		StartGTID: r.StartGtid, ServerID: serverID, SemiSync: r.SemiSync})
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	downAfter, err := parseDownAfter(r.SourceDownAfter)
	if err != nil {
		return nil, err
	}
	replicas := int(r.Replicas)
	if replicas == 0 {
		replicas = min(3, nodes)
	}
	u := placement.Upstream{
		Name: r.Name, Flavor: info.Flavor, Source: r.Source, User: r.User, Password: sealed, SourceTLS: srcTLS,
		ServerID: info.ServerID, DomainID: info.DomainID, ServerUUID: info.ServerUUID, Version: info.Version, BinlogChecksum: info.BinlogChecksum,
		StartGTID: info.StartGTID, InitialBytes: info.BinlogBytes, InitialGTID: info.EndGTID, Replicas: replicas, CreatedAt: time.Now().UTC(), ServeFrom: r.ServeFrom, SyncerServerID: serverID,
		SemiSync: info.SemiSync, Candidates: r.Candidates, SourceDownAfter: downAfter, AddWarnings: info.Warnings,
	}
	for _, ru := range r.ReplicaUsers {
		ruser, err := replicaUser(ru)
		if err != nil {
			return nil, err
		}
		u.ReplicaUsers = append(u.ReplicaUsers, ruser)
	}
	added, err := s.Meta.AddUpstream(ctx, u)
	if err != nil {
		return nil, metaErr(err)
	}
	s.Log.Info("upstream added", "upstream", added.Name, "group", added.GroupID, "start_gtid", added.StartGTID)
	for _, w := range added.AddWarnings {
		s.Log.Warn("upstream added without a check", "upstream", added.Name, "warning", w)
	}
	return toProto(added), nil
}

// ListUpstreams lists every upstream with the status this node knows.
func (s *Server) ListUpstreams(ctx context.Context, _ *adminv1.ListUpstreamsRequest) (*adminv1.ListUpstreamsResponse, error) {
	st, err := s.Meta.Read(ctx)
	if err != nil {
		return nil, metaErr(err)
	}
	v := &clusterView{st: st, reports: s.reports(ctx, st)}
	out := &adminv1.ListUpstreamsResponse{}
	for _, n := range st.UpstreamNames() {
		u := st.Upstreams[n]
		out.Upstreams = append(out.Upstreams, &adminv1.UpstreamStatus{Upstream: toProto(u), Group: v.group(u, s.NodeID)})
	}
	return out, nil
}

// upstream reads the metadata and finds an upstream by name.
func (s *Server) upstream(ctx context.Context, name string) (*placement.State, *placement.Upstream, error) {
	st, err := s.Meta.Read(ctx)
	if err != nil {
		return nil, nil, metaErr(err)
	}
	u, ok := st.Upstreams[name]
	if !ok {
		return nil, nil, status.Errorf(codes.NotFound, "unknown upstream %q (see `flotilla upstream list`)", name)
	}
	return st, u, nil
}

// GetUpstream returns one upstream and its group's status.
func (s *Server) GetUpstream(ctx context.Context, r *adminv1.UpstreamRef) (*adminv1.UpstreamStatus, error) {
	st, u, err := s.upstream(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	v := &clusterView{st: st, reports: s.reports(ctx, st)}
	return &adminv1.UpstreamStatus{Upstream: toProto(u), Group: v.group(u, s.NodeID)}, nil
}

// PauseUpstream stops pulling from the master; replicas keep being served.
func (s *Server) PauseUpstream(ctx context.Context, r *adminv1.UpstreamRef) (*adminv1.Upstream, error) {
	return s.setPaused(ctx, r.Name, true)
}

// ResumeUpstream resumes pulling from the master.
func (s *Server) ResumeUpstream(ctx context.Context, r *adminv1.UpstreamRef) (*adminv1.Upstream, error) {
	return s.setPaused(ctx, r.Name, false)
}

func (s *Server) setPaused(ctx context.Context, name string, paused bool) (*adminv1.Upstream, error) {
	if err := s.Meta.SetPaused(ctx, name, paused); err != nil {
		return nil, metaErr(err)
	}
	st, err := s.Meta.Read(ctx)
	if err != nil {
		return nil, metaErr(err)
	}
	return toProto(st.Upstreams[name]), nil
}

// RemoveUpstream removes an upstream; every node deletes its data for it.
func (s *Server) RemoveUpstream(ctx context.Context, r *adminv1.UpstreamRef) (*adminv1.RemoveUpstreamResponse, error) {
	if err := s.Meta.RemoveUpstream(ctx, r.Name); err != nil {
		return nil, metaErr(err)
	}
	s.Log.Info("upstream removed", "upstream", r.Name)
	return &adminv1.RemoveUpstreamResponse{}, nil
}

// PurgeUpstream purges served files before the given one.
func (s *Server) PurgeUpstream(ctx context.Context, r *adminv1.PurgeRequest) (*adminv1.PurgeResponse, error) {
	_, u, err := s.upstream(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	sh, ok := s.Shards.Shard(u.GroupID)
	if !ok || !sh.IsLeader() {
		return forwardToLeader(ctx, s, u, "purge", func(ctx context.Context, c *Client) (*adminv1.PurgeResponse, error) { return c.PurgeUpstream(ctx, r) })
	}
	first, err := sh.Purge(ctx, r.ToFile)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	out := &adminv1.PurgeResponse{FirstFile: statemachine.FileName(first)}
	if g, ok := sh.Group(); ok {
		if t, _ := g.Tail(); t.MySQL {
			if purged, err := g.PurgedMySQL(); err == nil {
				out.OldestGtid = "after " + purged.String() // MySQL's gtid_purged
			}
		} else if av, err := g.OldestAvailable(); err == nil {
			out.OldestGtid = av.String()
		}
	}
	s.Log.Info("binlog purged", "upstream", r.Name, "first_file", out.FirstFile)
	return out, nil
}

// forwardedHeader marks a call one node forwarded to another, which must not forward
// it again.
const forwardedHeader = "x-flotilla-forwarded"

// forwardToLeader runs call on the node leading the upstream's group, for what only
// the leader may do: purge (it knows which files the replicas connected anywhere
// still read) and repoint (it holds the group's latest state and runs the syncer).
func forwardToLeader[T any](ctx context.Context, s *Server, u *placement.Upstream, what string, call func(context.Context, *Client) (T, error)) (T, error) {
	var zero T
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedHeader)) > 0 {
		return zero, status.Errorf(codes.Unavailable, "node %d was asked to %s upstream %q but does not lead its group (a leader change?): retry", s.NodeID, what, u.Name)
	}
	v, err := s.view(ctx)
	if err != nil {
		return zero, err
	}
	leader := v.group(u, s.NodeID).LeaderNode
	n, ok := v.st.Nodes[leader]
	if leader == 0 || !ok {
		return zero, status.Errorf(codes.Unavailable, "upstream %q's group has no leader right now; retry shortly", u.Name)
	}
	c, err := Dial(n.AdminAddr, s.Auth.Token, s.PeerTLS)
	if err != nil {
		return zero, status.Errorf(codes.Unavailable, "reach node %d, which leads upstream %q: %v", leader, u.Name, err)
	}
	defer c.Close()
	return call(metadata.AppendToOutgoingContext(ctx, forwardedHeader, fmt.Sprint(s.NodeID)), c)
}

// ListNodes lists the cluster's nodes with their group counts.
func (s *Server) ListNodes(ctx context.Context, _ *adminv1.ListNodesRequest) (*adminv1.ListNodesResponse, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	return &adminv1.ListNodesResponse{Nodes: v.nodes()}, nil
}

// Status summarises the whole cluster: every node's state and counts, every group as
// its leader reports it with each member's progress, and the controller's decisions.
func (s *Server) Status(ctx context.Context, _ *adminv1.StatusRequest) (*adminv1.StatusResponse, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	out := &adminv1.StatusResponse{NodeId: s.NodeID, Nodes: v.nodes(), ClusterId: s.ClusterID, Decisions: v.st.Decisions, ClusterVersion: v.st.Version()}
	if s.MetaLeader != nil {
		out.MetaLeader = s.MetaLeader()
	}
	if s.MetaVoters != nil {
		out.MetaVoters = s.MetaVoters(ctx)
	}
	for _, n := range v.st.UpstreamNames() {
		u := v.st.Upstreams[n]
		out.Upstreams = append(out.Upstreams, &adminv1.UpstreamStatus{Upstream: toProto(u), Group: v.group(u, s.NodeID)})
	}
	return out, nil
}

// reports gathers the nodes' reports (or this node's own, without peers).
func (s *Server) reports(ctx context.Context, st *placement.State) map[uint64]*clusterv1.NodeReport {
	if s.Peers != nil {
		return s.Peers.Reports(ctx, st.Nodes, reportTimeout)
	}
	return map[uint64]*clusterv1.NodeReport{s.NodeID: {NodeId: s.NodeID, Groups: s.LocalGroups()}}
}

// upstreamStatus describes u's group as this node sees it; members are the raft
// memberships of the local groups (Shards.RaftMembers), read once by callers that
// describe every group.
func (s *Server) upstreamStatus(st *placement.State, u *placement.Upstream, members map[uint64][]uint64) *adminv1.UpstreamStatus {
	gs := &adminv1.GroupStatus{GroupId: u.GroupID, Members: st.Assignments[u.GroupID], ReportedBy: s.NodeID}
	if sh, ok := s.Shards.Shard(u.GroupID); ok {
		if id, ok := sh.Leader(); ok {
			gs.LeaderNode = id
		}
		gs.RaftMembers = members[u.GroupID]
		ss := sh.Status()
		gs.Syncing, gs.Connected, gs.LastError, gs.MasterFile, gs.Reconnects = ss.Running, ss.Connected, ss.LastError, ss.MasterFile, ss.Reconnects
		gs.CorruptEvents, gs.SourceSelection = ss.CorruptEvents, ss.Selection
		gs.SemiSync, gs.SemiSyncAcks, gs.SemiSyncAckMs = ss.SemiSync, ss.Acks, float64(ss.LastAckLatency.Microseconds())/1000
		gs.LastErrorAt, gs.LastEventAt = timeString(ss.LastErrorAt), timeString(ss.LastEventAt)
		// As Seconds_Behind_Master: 0 when the group holds everything the master sent
		// (connected, nothing in flight); else the age on the master of the newest
		// transaction held, in whole seconds (master timestamps have no fraction).
		if !ss.LastEventAt.IsZero() && (ss.Busy || !ss.Connected) {
			gs.LagSeconds = max(0, math.Floor(time.Since(ss.LastEventAt).Seconds()))
		}
		if g, ok := sh.Group(); ok {
			if f, ok := g.OldestReading(); ok {
				gs.OldestReadingFile = f
			}
			t, _ := g.Tail()
			gs.ExecutedGtid, gs.Transactions, gs.Bytes = t.GTIDs(), t.Ordinal, t.Bytes
			if t.File > 0 {
				gs.CurrentFile, gs.CurrentFileSize = statemachine.FileName(t.File), t.FileSize
				gs.FirstFile = statemachine.FileName(t.FirstFile)
			}
			gs.CompressedPlainBytes, gs.CompressedBytes = g.Compression()
		}
	}
	if s.Replicas != nil {
		gs.Replicas = s.Replicas.ConnectedReplicas(u.GroupID)
	}
	for name, f := range map[string]*string{"last_error": &gs.LastError, "master_file": &gs.MasterFile, "executed_gtid": &gs.ExecutedGtid} {
		if !utf8.ValidString(*f) {
			s.Log.Warn("status field is not valid UTF-8", "field", name, "value", fmt.Sprintf("%q", *f))
			*f = strings.ToValidUTF8(*f, "?")
		}
	}
	return &adminv1.UpstreamStatus{Upstream: toProto(u), Group: gs}
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// SyncerServerID derives the server_id an upstream's syncer uses toward its master
// from the cluster id and the upstream's name: stable across leader changes (the
// master drops a former leader's stream when the new one connects), and different
// between two clusters that follow the same master.
func SyncerServerID(clusterID, upstream string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(clusterID + "/" + upstream))
	return 1_000_000_000 + h.Sum32()%3_000_000_000
}

// serveFrom names where an upstream is served from; metadata written before the
// setting existed means the default.
func serveFrom(u *placement.Upstream) string {
	if u.ServeFrom == "" {
		return placement.ServeFromLeader
	}
	return u.ServeFrom
}

func toProto(u *placement.Upstream) *adminv1.Upstream {
	if u == nil {
		return nil
	}
	out := &adminv1.Upstream{
		Name: u.Name, Flavor: u.Flavor, Source: u.Source, User: u.User, ServerId: u.ServerID, DomainId: u.DomainID, SemiSync: u.SemiSync,
		ServerUuid: u.ServerUUID, Version: u.Version, StartGtid: u.StartGTID, GroupId: u.GroupID,
		Replicas: int32(u.Replicas), Paused: u.Paused, CreatedAt: timeString(u.CreatedAt), ServeFrom: serveFrom(u), SyncerServerId: u.SyncerServerID,
		InitialBytes: u.InitialBytes, InitialGtid: u.InitialGTID, Candidates: u.Candidates, SourceDownAfter: u.DownAfter().String(),
		AddWarnings: u.AddWarnings,
	}
	for _, sw := range u.Switches {
		out.Switches = append(out.Switches, &adminv1.SourceSwitch{At: timeString(sw.At), From: sw.From, To: sw.To, Reason: sw.Reason, Forced: sw.Forced, Warning: sw.Warning})
	}
	for _, ru := range u.ReplicaUsers {
		out.ReplicaUsers = append(out.ReplicaUsers, ru.User)
	}
	return out
}
