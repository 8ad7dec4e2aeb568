package server

import (
	"context"
	"time"

	"github.com/flotilla-relay/flotilla/cluster"
	"github.com/flotilla-relay/flotilla/internal/secure"
	"github.com/flotilla-relay/flotilla/placement"
)

// followNodeKeys keeps the node keys in step with the metadata group's rotations:
// a new generation is held (to verify with) as soon as this node's metadata replica
// has it, signs once the rotation activates it, and older ones are retired then.
func (n *Node) followNodeKeys(ctx context.Context, keys *cluster.Keyring, sealer secure.Sealer) {
	var lastErr string
	var seen uint64
	var st *placement.State // the last metadata read: Sync runs at every look (keys retire with time)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		if fresh, ok := n.changedMeta(&seen); ok {
			st = fresh
		}
		if st == nil || len(st.NodeKeys) == 0 {
			continue
		}
		meta, err := cluster.OpenNodeKeys(sealer, st.NodeKeys)
		changed := false
		if err == nil {
			changed, err = keys.Sync(meta, st.ActiveNodeKey)
		}
		if err != nil {
			if err.Error() != lastErr {
				n.log.Error("cannot follow the cluster's node keys; node-to-node calls may be refused", "err", err)
			}
			lastErr = err.Error()
			continue
		}
		lastErr = ""
		if changed {
			gens := keys.Gens()
			n.log.Info("node keys follow the metadata", "held", gens, "active", st.ActiveNodeKey)
		}
	}
}
