package server

import (
	"context"
	"fmt"
	"slices"

	"github.com/flotilla-relay/flotilla/mysqlfront"
	"github.com/flotilla-relay/flotilla/placement"
)

// Routing a replica's session to the replica of its group that serves it.

// routerAdapter answers the front end's routing questions from the node's state.
type routerAdapter struct{ n *Node }

func (r routerAdapter) Metadata() (*placement.State, error) { return r.n.meta.Local() }

// Source serves a session from this node's replica when it may (it leads the group,
// or the upstream serves from any replica), and otherwise relays from the node that
// does.
func (r routerAdapter) Source(_ context.Context, u *placement.Upstream) (mysqlfront.Source, error) {
	anyReplica := u.ServeFrom == placement.ServeFromAny
	src, leader := r.n.localSource(u.GroupID, anyReplica)
	if src != nil {
		return src, nil
	}
	if _, local := r.n.shards.Shard(u.GroupID); local {
		switch leader {
		case 0:
			if !anyReplica {
				return nil, fmt.Errorf("the upstream's group %d has no leader right now (election in progress); the replica will retry", u.GroupID)
			}
		case r.n.cfg.NodeID:
			return nil, fmt.Errorf("group %d is starting on this node; the replica will retry", u.GroupID)
		}
	} else if st, err := r.n.meta.Local(); err == nil && slices.Equal(st.Assignments[u.GroupID], []uint64{r.n.cfg.NodeID}) {
		// Only this node holds the group and has not started it yet (right after a
		// restart): there is no one to relay from, so the session waits for it.
		return nil, fmt.Errorf("group %d is starting on this node; the replica will retry", u.GroupID)
	}
	return r.n.relay.Source(u, leader, anyReplica), nil
}

// localSource returns this node's replica of a group as a source, if it may serve:
// it leads the group, or anyReplica. Otherwise it returns the leader it knows of.
func (n *Node) localSource(gid uint64, anyReplica bool) (mysqlfront.Source, uint64) {
	sh, ok := n.shards.Shard(gid)
	if !ok {
		return nil, 0
	}
	leader, _ := sh.Leader()
	if !anyReplica && !sh.IsLeader() {
		return nil, leader
	}
	g, ok := sh.Group()
	if !ok {
		return nil, leader
	}
	u := sh.Upstream()
	eligible := func() error {
		if cur, ok := n.shards.Shard(gid); !ok || cur != sh {
			return mysqlfront.ErrRetry("this node no longer holds a replica of upstream %s; the replica reconnects and resumes from its position", u.Name)
		}
		if !anyReplica && !sh.IsLeader() {
			return mysqlfront.ErrRetry("this Flotilla node no longer leads upstream %s; the replica reconnects and resumes from its position on the new leader", u.Name)
		}
		return nil
	}
	return mysqlfront.NewLocalSource(g, &u, mysqlfront.LocalPolicy{Eligible: eligible}, n.log.With("component", "mysqlfront")), leader
}
