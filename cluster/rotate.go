package cluster

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/placement"
)

// RotationMeta is the part of the metadata group a rotation needs: it alone decides
// rotations, so a node that is no longer a member cannot make or follow one.
type RotationMeta interface {
	Read(ctx context.Context) (*placement.State, error)
	AddNodeKey(ctx context.Context, k placement.SealedNodeKey, note string) error
	ActivateNodeKey(ctx context.Context, gen uint64, note string) error
}

func nodeKeyName(gen uint64) string { return fmt.Sprintf("flotilla node key %d", gen) }

// SealNodeKey seals a node key for the metadata, with the cluster key.
func SealNodeKey(s secure.Sealer, k NodeKey) (placement.SealedNodeKey, error) {
	sealed, err := s.Seal(hex.EncodeToString(k.Key), nodeKeyName(k.Gen))
	if err != nil {
		return placement.SealedNodeKey{}, err
	}
	return placement.SealedNodeKey{Gen: k.Gen, Sealed: sealed}, nil
}

// OpenNodeKeys opens the node keys the metadata holds.
func OpenNodeKeys(s secure.Sealer, sealed []placement.SealedNodeKey) ([]NodeKey, error) {
	out := make([]NodeKey, 0, len(sealed))
	for _, sk := range sealed {
		v, err := s.Open(sk.Sealed, nodeKeyName(sk.Gen))
		if err != nil {
			return nil, fmt.Errorf("node key generation %d: %w", sk.Gen, err)
		}
		b, err := hex.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("node key generation %d is malformed", sk.Gen)
		}
		out = append(out, NodeKey{Gen: sk.Gen, Key: b})
	}
	return out, nil
}

// rotationWait bounds how long a rotation waits for every member to hold the new key.
const rotationWait = 30 * time.Second

// Rotate replaces the node key through the metadata group: it adds the next
// generation (every member installs it to verify with), waits until every member
// reports holding it, then activates it, which retires the older generations
// everywhere: a node no longer a member is refused from then on. A member that does
// not report the new key stops the rotation before anything signs with it; running
// it again finishes the same rotation. It returns the new generation and the
// members.
func (r *Relay) Rotate(ctx context.Context, meta RotationMeta, sealer secure.Sealer, raftMembers func(context.Context) ([]uint64, error)) (uint64, []uint64, error) {
	st, err := meta.Read(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("read the cluster's members: %w", err)
	}
	// A node still in the metadata raft group follows its entries, a new key
	// among them: a removal that did not finish must finish first.
	members, err := raftMembers(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("read the metadata group's membership: %w", err)
	}
	for _, id := range members {
		if _, ok := st.Nodes[id]; !ok {
			return 0, nil, fmt.Errorf("node %d is still a member of the metadata raft group though not of the cluster: finish its removal (`flotilla node remove %d`) before rotating", id, id)
		}
	}
	p, pending := st.PendingNodeKey()
	if !pending {
		k, err := NewNodeKey(max(st.LastNodeKeyGen, st.ActiveNodeKey) + 1)
		if err != nil {
			return 0, nil, err
		}
		if p, err = SealNodeKey(sealer, k); err != nil {
			return 0, nil, err
		}
		if err := meta.AddNodeKey(ctx, p, placement.Note("operator: rotate the node key to generation %d", k.Gen)); err != nil {
			return 0, nil, fmt.Errorf("add node key generation %d: %w", k.Gen, err)
		}
	}
	ids := make([]uint64, 0, len(st.Nodes))
	for id := range st.Nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if missing := r.waitKeys(ctx, st.Nodes, ids, func(gens []uint64) bool { return slices.Contains(gens, p.Gen) }); len(missing) > 0 {
		return 0, nil, fmt.Errorf("nodes %v have not taken node key generation %d (down or unreachable?); nothing signs with it yet: run the rotation again once they answer, or remove them first", missing, p.Gen)
	}
	if err := meta.ActivateNodeKey(ctx, p.Gen, placement.Note("operator: node key generation %d active; older ones retired", p.Gen)); err != nil {
		return 0, nil, fmt.Errorf("activate node key generation %d: %w", p.Gen, err)
	}
	// Done when every member has retired the older keys: from then on a removed
	// node's calls are refused everywhere.
	if missing := r.waitKeys(ctx, st.Nodes, ids, func(gens []uint64) bool { return slices.Equal(gens, []uint64{p.Gen}) }); len(missing) > 0 {
		return 0, nil, fmt.Errorf("node key generation %d is active, but nodes %v have not reported retiring the older ones yet (they will as they follow the metadata); check `flotilla status`", p.Gen, missing)
	}
	r.log.Info("node key rotated", "generation", p.Gen, "nodes", ids)
	return p.Gen, ids, nil
}

// waitKeys polls the members' reports until every one's node key generations pass
// ok, for up to rotationWait; it returns the members that did not.
func (r *Relay) waitKeys(ctx context.Context, nodes map[uint64]*placement.Node, ids []uint64, ok func([]uint64) bool) []uint64 {
	var missing []uint64
	for deadline := time.Now().Add(rotationWait); ; {
		reps := r.Reports(ctx, nodes, 5*time.Second)
		missing = missing[:0]
		for _, id := range ids {
			if rep, found := reps[id]; !found || !ok(rep.NodeKeyGens) {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return missing
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}
