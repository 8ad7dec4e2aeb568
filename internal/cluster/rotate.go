package cluster

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/placement"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// sealNodeKey seals key for a node that holds with.
func sealNodeKey(with, key NodeKey) (string, error) {
	s, err := secure.NewSealer(with.Key)
	if err != nil {
		return "", err
	}
	return s.Seal(hex.EncodeToString(key.Key), fmt.Sprintf("flotilla node key %d", key.Gen))
}

// openNodeKey opens a key of generation gen sealed with any of the keys held.
func openNodeKey(held []NodeKey, gen uint64, sealed string) (NodeKey, error) {
	for _, k := range held {
		s, err := secure.NewSealer(k.Key)
		if err != nil {
			continue
		}
		if v, err := s.Open(sealed, fmt.Sprintf("flotilla node key %d", gen)); err == nil {
			b, err := hex.DecodeString(v)
			if err != nil {
				return NodeKey{}, fmt.Errorf("node key generation %d is malformed", gen)
			}
			return NodeKey{Gen: gen, Key: b}, nil
		}
	}
	return NodeKey{}, fmt.Errorf("node key generation %d is not sealed with a key this node holds", gen)
}

// Rotate gives every member (nodes, this node among them) the next node key, then
// retires the older ones everywhere, so that a node no longer a member, which holds
// only older keys, is refused from then on. It returns the new generation and the
// nodes that hold it. An unreachable member stops it before anything is retired
// (the member would be locked out); a retry is safe.
func (r *Relay) Rotate(ctx context.Context, nodes map[uint64]*placement.Node) (uint64, []uint64, error) {
	// The oldest key held is one every member holds as long as no rotation retired
	// it; a rotation that stopped part way (this node holds two keys) is finished
	// with the key it began, so members that missed it are not locked out.
	held := r.keys.Keys()
	base, next := held[0], held[len(held)-1]
	if len(held) == 1 {
		var err error
		if next, err = NewNodeKey(base.Gen + 1); err != nil {
			return 0, nil, err
		}
	}
	sealed, err := sealNodeKey(base, next)
	if err != nil {
		return 0, nil, err
	}
	ids := make([]uint64, 0, len(nodes))
	for id := range nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// This node first: from here on it verifies the calls of members that have
	// installed the new key. The calls that install it are signed with the base
	// key, which the others hold (or, on a member that retired it already, with the
	// new one).
	if err := r.keys.Install(next); err != nil {
		return 0, nil, err
	}
	for _, id := range ids {
		if id == r.nodeID {
			continue
		}
		c, err := r.client(nodes[id].AdminAddr)
		if err == nil {
			req := &clusterv1.InstallKeyRequest{Gen: next.Gen, SealedKey: sealed}
			for _, with := range []NodeKey{base, next} {
				var sctx context.Context
				if sctx, err = signWith(ctx, with, r.keys.now(), clusterv1.Cluster_InstallKey_FullMethodName, req); err == nil {
					if _, err = c.InstallKey(sctx, req); status.Code(err) != codes.Unauthenticated {
						break
					}
				}
			}
		}
		if err != nil {
			return 0, nil, fmt.Errorf("node %d did not take node key generation %d: %w; no key was retired: bring it back (or remove it) and rotate again", id, next.Gen, err)
		}
	}
	var failed []string
	for _, id := range ids {
		if id == r.nodeID {
			continue
		}
		c, err := r.client(nodes[id].AdminAddr)
		if err == nil {
			req := &clusterv1.RetireKeysRequest{KeepGen: next.Gen}
			var sctx context.Context
			if sctx, err = r.keys.Sign(ctx, clusterv1.Cluster_RetireKeys_FullMethodName, req); err == nil {
				_, err = c.RetireKeys(sctx, req)
			}
		}
		if err != nil {
			failed = append(failed, fmt.Sprintf("node %d: %v", id, err))
		}
	}
	if err := r.keys.Retire(next.Gen); err != nil {
		failed = append(failed, fmt.Sprintf("node %d: %v", r.nodeID, err))
	}
	if len(failed) > 0 {
		return next.Gen, ids, fmt.Errorf("every member holds node key generation %d, but some still accept older keys (%s): rotate again", next.Gen, strings.Join(failed, "; "))
	}
	r.log.Info("node keys rotated", "generation", next.Gen, "nodes", ids)
	return next.Gen, ids, nil
}
