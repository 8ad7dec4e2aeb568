// Package raftprop proposes to a raft group and waits for the result, riding out
// dragonboat's backpressure.
//
// Invariant: ErrSystemBusy (the group's proposal queue is full, or its LogDB is
// stalling writes) is retried until the context ends; no other error is, since
// dragonboat may have applied a proposal it reports as timed out, and only the
// caller knows whether its command may be sent twice.
package raftprop

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/client"
	sm "github.com/lni/dragonboat/v3/statemachine"
)

// Proposer is the part of a dragonboat NodeHost that SyncPropose uses.
type Proposer interface {
	SyncPropose(ctx context.Context, session *client.Session, cmd []byte) (sm.Result, error)
	GetNoOPSession(clusterID uint64) *client.Session
}

// SyncPropose proposes cmd to group gid (without a client session) and returns the
// state machine's result.
func SyncPropose(ctx context.Context, nh Proposer, gid uint64, cmd []byte) (sm.Result, error) {
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		res, err := nh.SyncPropose(ctx, nh.GetNoOPSession(gid), cmd)
		if !errors.Is(err, dragonboat.ErrSystemBusy) {
			return res, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, fmt.Errorf("%w (the group stayed busy: %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}
