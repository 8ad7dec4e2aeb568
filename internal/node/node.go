// Package node assembles one Flotilla process: the raft NodeHost, the node's storage,
// the metadata group, the agent that runs local group replicas, the MySQL front end
// and the admin API.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/config"
	dblog "github.com/lni/dragonboat/v3/logger"

	"github.com/flotilla-relay/flotilla/adminrpc"
	"github.com/flotilla-relay/flotilla/mysqlfront"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/shard"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// Config is a node's configuration (flags or YAML).
type Config struct {
	NodeID     uint64            `yaml:"node_id"`
	DataDir    string            `yaml:"data"`
	MySQLAddr  string            `yaml:"mysql_addr"`
	AdminAddr  string            `yaml:"admin_addr"`
	RaftAddr   string            `yaml:"raft_addr"`
	Join       []string          `yaml:"join"`
	Labels     map[string]string `yaml:"labels"`
	AdminToken string            `yaml:"admin_token"`
	// RetentionAge and RetentionBytes bound each group's binlog (0 = unbounded).
	RetentionAge   time.Duration `yaml:"retention_age"`
	RetentionBytes uint64        `yaml:"retention_bytes"`
	// SegmentSize is where segment files roll (0: the default, 256 MiB).
	SegmentSize uint64 `yaml:"segment_size"`
}

// Defaults fills unset fields with the one-node defaults of the design.
func (c *Config) Defaults() {
	if c.NodeID == 0 {
		c.NodeID = 1
	}
	if c.DataDir == "" {
		c.DataDir = "./flotilla-data"
	}
	if c.MySQLAddr == "" {
		c.MySQLAddr = "127.0.0.1:3307"
	}
	if c.AdminAddr == "" {
		c.AdminAddr = "127.0.0.1:7070"
	}
	if c.RaftAddr == "" {
		c.RaftAddr = "127.0.0.1:7071"
	}
}

// Node is a running Flotilla process.
type Node struct {
	cfg    Config
	log    *slog.Logger
	nh     *dragonboat.NodeHost
	store  *statemachine.Store
	meta   *placement.Service
	shards *shard.Manager
	front  *mysqlfront.Server
	errc   chan error
}

// Start brings a node up and returns once it serves. Stop it by cancelling ctx and
// calling Wait.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Node, error) {
	cfg.Defaults()
	if len(cfg.Join) > 0 {
		return nil, errors.New("--join: multi-node clusters are not available in this build yet; start a one-node cluster without --join")
	}
	for _, name := range []string{"raft", "rsm", "transport", "dragonboat", "logdb", "raftpb", "config", "settings", "grpc"} {
		dblog.GetLogger(name).SetLevel(dblog.WARNING)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", cfg.DataDir, err)
	}
	// Bind the client-facing ports first: a port in use is the most common start-up
	// mistake and must fail before anything touches the data directory.
	mysqlLis, err := net.Listen("tcp", cfg.MySQLAddr)
	if err != nil {
		return nil, fmt.Errorf("MySQL port %s: %w (is another Flotilla or MySQL running? use --mysql-addr)", cfg.MySQLAddr, err)
	}
	adminLis, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		mysqlLis.Close()
		return nil, fmt.Errorf("admin port %s: %w (use --admin-addr)", cfg.AdminAddr, err)
	}
	closeLis := func() { mysqlLis.Close(); adminLis.Close() }

	store, err := statemachine.Open(filepath.Join(cfg.DataDir, "storage"), log)
	if err != nil {
		closeLis()
		return nil, err
	}
	if cfg.SegmentSize > 0 {
		store.SetSegmentSize(cfg.SegmentSize)
	}
	nh, err := dragonboat.NewNodeHost(config.NodeHostConfig{
		DeploymentID:   1,
		NodeHostDir:    filepath.Join(cfg.DataDir, "raft"),
		RTTMillisecond: 50,
		RaftAddress:    cfg.RaftAddr,
		Expert:         config.ExpertConfig{LogDB: config.GetSmallMemLogDBConfig()},
	})
	if err != nil {
		store.Close()
		closeLis()
		return nil, fmt.Errorf("start raft node host (raft address %s, data %s): %w", cfg.RaftAddr, cfg.DataDir, err)
	}
	n := &Node{cfg: cfg, log: log, nh: nh, store: store, meta: placement.NewService(nh), errc: make(chan error, 2)}
	if err := n.startMeta(ctx); err != nil {
		n.close()
		closeLis()
		return nil, err
	}
	n.shards = shard.NewManager(nh, store, n.meta, cfg.NodeID, statemachine.Retention{MaxAge: cfg.RetentionAge, MaxBytes: cfg.RetentionBytes}, log)
	go n.shards.Run(ctx, 300*time.Millisecond)

	n.front = mysqlfront.New(routerAdapter{n}, cfg.NodeID, log.With("component", "mysqlfront"))
	go func() { n.errc <- n.front.Serve(ctx, mysqlLis) }()
	admin := &adminrpc.Server{
		NodeID: cfg.NodeID, Meta: n.meta, Shards: n.shards, Replicas: n.front, Inspect: shard.InspectSource,
		Token: cfg.AdminToken, Log: log.With("component", "admin"),
		MetaLeader: func() uint64 {
			id, _, _ := nh.GetLeaderID(placement.MetaGroupID)
			return id
		},
	}
	go func() { n.errc <- admin.Serve(ctx, adminLis) }()
	log.Info("flotilla node serving", "node", cfg.NodeID, "mysql", cfg.MySQLAddr, "admin", cfg.AdminAddr, "raft", cfg.RaftAddr, "data", cfg.DataDir)
	return n, nil
}

// startMeta starts (or bootstraps) the metadata group and registers this node.
func (n *Node) startMeta(ctx context.Context) error {
	members := map[uint64]string{}
	if !n.nh.HasNodeInfo(placement.MetaGroupID, n.cfg.NodeID) {
		members[n.cfg.NodeID] = n.cfg.RaftAddr
	}
	cfg := config.Config{NodeID: n.cfg.NodeID, ClusterID: placement.MetaGroupID, ElectionRTT: 10, HeartbeatRTT: 1,
		CheckQuorum: true, SnapshotEntries: 1000, CompactionOverhead: 100}
	if err := n.nh.StartCluster(members, false, placement.CreateStateMachine, cfg); err != nil {
		return fmt.Errorf("start metadata group: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	self := placement.Node{ID: n.cfg.NodeID, RaftAddr: n.cfg.RaftAddr, MySQLAddr: n.cfg.MySQLAddr, AdminAddr: n.cfg.AdminAddr, Labels: n.cfg.Labels}
	for {
		st, err := n.meta.Read(ctx)
		if err == nil {
			if cur, ok := st.Nodes[self.ID]; ok && sameNode(*cur, self) {
				return nil
			}
			if err = n.meta.RegisterNode(ctx, self); err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("metadata group did not become available: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func sameNode(a, b placement.Node) bool {
	if a.RaftAddr != b.RaftAddr || a.MySQLAddr != b.MySQLAddr || a.AdminAddr != b.AdminAddr || len(a.Labels) != len(b.Labels) {
		return false
	}
	for k, v := range a.Labels {
		if b.Labels[k] != v {
			return false
		}
	}
	return true
}

// Wait blocks until ctx ends or a server fails, then shuts the node down.
func (n *Node) Wait(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
	case err = <-n.errc:
	}
	n.close()
	return err
}

func (n *Node) close() {
	n.nh.Stop()
	if err := n.store.Close(); err != nil {
		n.log.Warn("close storage", "err", err)
	}
}

// routerAdapter answers the front end's routing questions from the node's state.
type routerAdapter struct{ n *Node }

func (r routerAdapter) Metadata() (*placement.State, error) { return r.n.meta.Local() }

func (r routerAdapter) Serving(gid uint64) (*statemachine.Group, error) {
	sh, ok := r.n.shards.Shard(gid)
	if !ok {
		return nil, fmt.Errorf("this node (%d) holds no replica of the upstream's group %d yet; retry shortly or connect to another node", r.n.cfg.NodeID, gid)
	}
	if !sh.IsLeader() {
		lead, ok := sh.Leader()
		if !ok {
			return nil, fmt.Errorf("the upstream's group %d has no leader right now (election in progress); the replica will retry", gid)
		}
		return nil, fmt.Errorf("node %d leads the upstream's group %d; connect the replica to node %d (proxying is not available in this build)", lead, gid, lead)
	}
	g, ok := sh.Group()
	if !ok {
		return nil, fmt.Errorf("group %d is starting on this node; the replica will retry", gid)
	}
	return g, nil
}

func (r routerAdapter) StillServing(gid uint64) bool {
	sh, ok := r.n.shards.Shard(gid)
	return ok && sh.IsLeader()
}
