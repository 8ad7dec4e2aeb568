package raftprop

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lni/dragonboat/v3"
	"github.com/lni/dragonboat/v3/client"
	sm "github.com/lni/dragonboat/v3/statemachine"
)

// busyHost refuses busy proposals with ErrSystemBusy, then answers with err.
type busyHost struct {
	busy  int
	err   error
	calls int
}

func (h *busyHost) SyncPropose(ctx context.Context, _ *client.Session, _ []byte) (sm.Result, error) {
	h.calls++
	if h.calls <= h.busy {
		return sm.Result{}, dragonboat.ErrSystemBusy
	}
	if h.err != nil {
		return sm.Result{}, h.err
	}
	return sm.Result{Value: 7}, nil
}

func (h *busyHost) GetNoOPSession(uint64) *client.Session { return nil }

// TestSyncProposeWaitsOutBusy: a busy group is asked again until it takes the
// proposal; other errors come back at once; a group busy until the context ends
// returns the context's error, naming the busy one.
func TestSyncProposeWaitsOutBusy(t *testing.T) {
	h := &busyHost{busy: 3}
	if res, err := SyncPropose(t.Context(), h, 1, nil); err != nil || res.Value != 7 || h.calls != 4 {
		t.Fatalf("after 3 busy answers: %v, %v, %d calls; want the result at the 4th", res, err, h.calls)
	}
	other := errors.New("dropped")
	h = &busyHost{err: other}
	if _, err := SyncPropose(t.Context(), h, 1, nil); !errors.Is(err, other) || h.calls != 1 {
		t.Fatalf("another error: %v after %d calls, want it at once", err, h.calls)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	h = &busyHost{busy: 1 << 30}
	_, err := SyncPropose(ctx, h, 1, nil)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, dragonboat.ErrSystemBusy) {
		t.Fatalf("busy until the deadline: %v, want the deadline and the busy error", err)
	}
}
