package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/internal/buildinfo"
	"github.com/flotilla-relay/flotilla/internal/raftlog"
	"github.com/flotilla-relay/flotilla/internal/rafttransport"
	"github.com/flotilla-relay/flotilla/placement"
)

// clusterVersionFile records, in the data directory, the newest cluster version the
// node has seen: a binary too old for it refuses to start before it touches the
// data (the metadata group refuses its registration too, but only once it runs).
const clusterVersionFile = "CLUSTER_VERSION"

// checkDataVersion refuses a data directory last used at a cluster version this
// binary does not understand; it returns the version recorded (0: none).
func checkDataVersion(dir string) (uint32, error) {
	b, err := os.ReadFile(filepath.Join(dir, clusterVersionFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", filepath.Join(dir, clusterVersionFile), err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return 0, nil // a crash while it was first written: the metadata still guards
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s holds %q, not a cluster version: restore it or delete it (the metadata still guards against an old binary)", filepath.Join(dir, clusterVersionFile), b)
	}
	if bi := buildinfo.Get(); uint32(v) > bi.ClusterVersion {
		return 0, fmt.Errorf("data directory %s belongs to a cluster at version %d, and this binary (flotilla %s) understands versions up to %d: install the release the cluster runs, or a newer one (a downgrade below the cluster version is not possible)",
			dir, v, bi.Version, bi.ClusterVersion)
	}
	return uint32(v), nil
}

// writeClusterVersion writes the cluster version to the data directory, atomically (a
// torn file must not stop the next start) and durably (the raft log's payload files
// rely on it: see followVersion).
func writeClusterVersion(dir string, v uint32) error {
	err := cluster.WriteDurable(filepath.Join(dir, clusterVersionFile), []byte(strconv.FormatUint(uint64(v), 10)+"\n"), 0o600)
	if err != nil {
		return fmt.Errorf("record the cluster version: %w", err)
	}
	return nil
}

// noteClusterVersion records v in the data directory when it is newer than what is
// recorded there (only forward: the cluster version never goes back, but the
// metadata replica a restarted node reads may lag what it recorded before), and turns
// the raft log's payload files (and the raft transport's own frames) on once the
// recorded version allows them: recorded
// durably first, so that from then on a release that cannot read them refuses this
// data directory. Only startMeta, then followVersion, call it.
func (n *Node) noteClusterVersion(v uint32) error {
	if v > n.recordedVersion {
		if err := writeClusterVersion(n.cfg.DataDir, v); err != nil {
			return err
		}
		n.recordedVersion = v
	}
	if n.recordedVersion >= raftlog.PayloadFilesVersion && !n.payloadFiles.Load() {
		n.payloadFiles.Store(true)
		n.log.Info("raft payloads now go to files beside the LogDB", "cluster_version", n.recordedVersion)
	}
	if n.recordedVersion >= raftlog.RecycleVersion && !n.recycle.Load() {
		n.recycle.Store(true)
		n.log.Info("raft payload files now salted, and recycled from log cuts up to the reserve", "cluster_version", n.recordedVersion, "raft_payload_reserve", n.cfg.RaftPayloadReserve)
	}
	if n.recordedVersion >= rafttransport.WireVersion && !n.raftWire.Load() {
		n.raftWire.Store(true)
		n.log.Info("raft messages now sent in Flotilla's own frames (payloads not copied)", "cluster_version", n.recordedVersion)
	}
	return nil
}

// self is this node as it registers in the metadata.
func (n *Node) self() placement.Node {
	bi := buildinfo.Get()
	return placement.Node{ID: n.cfg.NodeID, RaftAddr: n.cfg.RaftAddr, MySQLAddr: n.cfg.MySQLAddr.String(), AdminAddr: n.cfg.AdminAddr, Labels: n.cfg.Labels,
		Version: bi.Version, Commit: bi.Commit, MaxClusterVersion: bi.ClusterVersion}
}

// followVersion keeps this node's registration current (a snapshot taken by a node
// of an older release drops the version fields it does not know) and records the
// cluster version in the data directory whenever it moves. A cluster version this
// binary does not understand stops the node: it could misread the metadata.
func (n *Node) followVersion(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var seen uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, ok := n.changedMeta(&seen)
		if !ok {
			continue
		}
		if v := st.Version(); v > buildinfo.ClusterVersion {
			select {
			case n.errc <- fmt.Errorf("the cluster moved to version %d, which this binary (flotilla %s) does not understand: install a newer release", v, buildinfo.Get().Version):
			case <-ctx.Done():
			}
			return
		}
		if err := n.noteClusterVersion(st.Version()); err != nil {
			n.log.Warn("cluster version not recorded in the data directory", "err", err)
			seen = 0 // try again at the next tick
		}
		if cur, ok := st.Nodes[n.cfg.NodeID]; ok && !sameNode(*cur, n.self()) {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := n.meta.RegisterNode(rctx, n.self()); err != nil {
				n.log.Warn("re-register this node's version", "err", err)
				seen = 0
			}
			cancel()
		}
	}
}

// errNoTarget: no member could take a leadership (none answers, or none caught up).
var errNoTarget = errors.New("no caught-up member answers to take the leadership")

// shedding reports whether the node is handing its leaderships away.
func (n *Node) shedding() bool {
	until := n.shedUntil.Load()
	return until != nil && time.Now().Before(*until)
}

// shed makes the node hand every leadership it holds to a caught-up member and take
// none for d (the controller moves none to it while its reports say so); it returns
// once the node leads nothing. cancel ends shedding at once.
func (n *Node) shed(ctx context.Context, d time.Duration, cancel bool) error {
	if cancel {
		n.shedUntil.Store(nil)
		return nil
	}
	until := time.Now().Add(d)
	n.shedUntil.Store(&until)
	n.log.Info("handing leaderships away (leaders-only drain)", "for", d)
	for {
		led := n.ledGroups()
		if len(led) == 0 {
			return nil
		}
		st, err := n.meta.Local()
		if err != nil {
			return fmt.Errorf("read the local metadata to hand leaderships away: %w", err)
		}
		moved := 0
		for _, gid := range led {
			var cands []uint64
			if gid == placement.MetaGroupID {
				cands = n.metaVoters(ctx)
			} else {
				for _, u := range st.Upstreams {
					if u.GroupID == gid {
						cands = st.Assignments[gid]
					}
				}
			}
			for _, m := range cands {
				if m == n.cfg.NodeID {
					continue
				}
				if gid == placement.MetaGroupID {
					if _, up := n.reportOf(ctx, m); !up {
						continue
					}
				} else if !n.caughtUp(ctx, gid, m) {
					continue
				}
				if err := n.transferLeader(gid, m); err != nil {
					n.log.Warn("leadership transfer", "group", gid, "to", m, "err", err)
					continue
				}
				moved++
				break
			}
		}
		if moved == 0 {
			return fmt.Errorf("%w: groups %v", errNoTarget, led)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still leads groups %v: %w", n.ledGroups(), ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ledGroups lists the groups (the metadata group included) this node leads.
func (n *Node) ledGroups() []uint64 {
	var out []uint64
	if id, ok, _ := n.nh.GetLeaderID(placement.MetaGroupID); ok && id == n.cfg.NodeID {
		out = append(out, placement.MetaGroupID)
	}
	st, err := n.meta.Local()
	if err != nil {
		return out
	}
	for _, u := range st.Upstreams {
		if !slices.Contains(st.Assignments[u.GroupID], n.cfg.NodeID) {
			continue
		}
		if l, _ := n.leaders.Leader(u.GroupID); l == n.cfg.NodeID {
			out = append(out, u.GroupID)
		}
	}
	slices.Sort(out)
	return out
}
