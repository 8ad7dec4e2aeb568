package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/internal/buildinfo"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// clusterIdentity returns the cluster this node belongs to: the one in its data
// directory, or, on first start, a new cluster (no --join) or the one its --join
// members admit it to. A node never changes cluster: --join naming members of
// another cluster is an error.
func clusterIdentity(ctx context.Context, cfg Config, peerTLS *tls.Config, log *slog.Logger) (cluster.Identity, error) {
	id, err := cluster.LoadIdentity(cfg.DataDir)
	if err == nil {
		for _, addr := range cfg.Join {
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			other, err := cluster.AskIdentity(actx, addr, peerTLS)
			cancel()
			if err != nil {
				log.Info("--join member not reachable; this node restarts from its own disk", "member", addr, "err", err)
				continue
			}
			if other != id.ClusterID && addr != cfg.AdminAddr {
				return cluster.Identity{}, fmt.Errorf("--join %s: that node belongs to cluster %s, but this node's data (%s) belongs to cluster %s; a node never changes cluster: use a fresh --data directory to join another one",
					addr, other, cfg.DataDir, id.ClusterID)
			}
		}
		if len(cfg.Join) > 0 {
			log.Info("already a member of the cluster; --join has no effect", "cluster", id.ClusterID)
		}
		return id, nil
	}
	if !errors.Is(err, cluster.ErrNoIdentity) {
		return cluster.Identity{}, err
	}
	switch {
	case hasRaftData(cfg.DataDir):
		// A data directory from before cluster identities: keep its deployment id.
		id, err = cluster.NewIdentity()
		id.DeploymentID = cluster.LegacyDeploymentID
		log.Warn("data directory has no cluster identity; recording one with the legacy raft deployment id", "cluster", id.ClusterID)
	case len(cfg.Join) == 0:
		id, err = cluster.NewIdentity()
		if err == nil {
			log.Info("bootstrapping a new cluster", "cluster", id.ClusterID, "node", cfg.NodeID)
		}
	default:
		jctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		bi := buildinfo.Get()
		id, err = cluster.Join(jctx, cfg.Join, cfg.AdminToken, peerTLS, &clusterv1.JoinRequest{NodeId: cfg.NodeID, RaftAddr: cfg.RaftAddr,
			MysqlAddr: cfg.MySQLAddr.String(), AdminAddr: cfg.AdminAddr, Labels: cfg.Labels,
			Version: bi.Version, Commit: bi.Commit, MaxClusterVersion: bi.ClusterVersion})
		cancel()
		if err == nil {
			log.Info("joined the cluster as a non-voting metadata member (promoted once running)", "cluster", id.ClusterID, "node", cfg.NodeID)
		}
	}
	if err != nil {
		return cluster.Identity{}, err
	}
	if err := cluster.SaveIdentity(cfg.DataDir, id); err != nil {
		return cluster.Identity{}, err
	}
	return id, nil
}

func hasRaftData(dataDir string) bool {
	entries, err := os.ReadDir(filepath.Join(dataDir, "raft"))
	return err == nil && len(entries) > 0
}
