package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultMinFreeDisk is the free space a node keeps by default: room for raft's log
// and its compactions, a segment roll and the metadata while replicas stop.
const DefaultMinFreeDisk = 512 << 20

// DefaultRaftPayloadReserve is the serve command's raft_payload_reserve: 7 spare
// payload files of 68 MiB, more than one group's payload files between two of its
// log cuts (every 256 MiB applied). MinRaftPayloadReserve holds one.
const (
	DefaultRaftPayloadReserve = 512 << 20
	MinRaftPayloadReserve     = 68 << 20
)

// diskState is what watchDisk learnt of the data directory's free space.
type diskState struct {
	free atomic.Uint64
	mu   sync.Mutex
	why  string // "" while space suffices
}

// problem says why the node stores nothing now ("" when it does).
func (d *diskState) problem() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.why
}

func (d *diskState) set(why string) (changed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	changed, d.why = d.why != why, why
	return changed
}

// resumeLevel is the free space at which a node suspended below reserve resumes:
// a hysteresis, so that it does not flap around the line.
func resumeLevel(reserve uint64) uint64 { return reserve + min(reserve/4, 128<<20) }

// spareRoom says whether the data directory's filesystem can hold n more bytes and
// stay clear of the level at which watchDisk resumes a suspended node: the spare
// payload files never take a node towards min_free_disk.
func spareRoom(cfg Config) func(int64) bool {
	resume := resumeLevel(uint64(cfg.MinFreeDisk))
	return func(n int64) bool {
		free, err := freeSpace(cfg.DataDir)
		return err == nil && free >= resume+uint64(n)
	}
}

// freeSpace is what the node's user may still write on dir's filesystem.
func freeSpace(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// watchDisk keeps the data directory's filesystem from filling: when its free space
// falls below MinFreeDisk, the node hands its leaderships away and stops its group
// replicas, keeping their data (their groups go on with the other members, and the
// replicas connected here are served from those); when space is back above the
// reserve plus a margin, the replicas start again from their disk and catch up.
// Status, /readyz and the metrics say so meanwhile. A write that still finds the
// disk full stops the process (dragonboat does not survive a failed log or apply
// write): the reserve is what keeps that from happening.
func (n *Node) watchDisk(ctx context.Context, every time.Duration) {
	reserve := uint64(n.cfg.MinFreeDisk)
	resume := resumeLevel(reserve)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		free, err := freeSpace(n.cfg.DataDir)
		if err == nil {
			n.disk.free.Store(free)
			low := n.disk.problem() != ""
			switch {
			case !low && free < reserve:
				why := fmt.Sprintf("the data directory %s has %s free, below min_free_disk %s: this node's group replicas are stopped (their data kept) until space returns; free space there",
					n.cfg.DataDir, Size(free), Size(reserve))
				n.disk.set(why)
				n.log.Error("storage suspended: "+why, "free", free, "min_free_disk", reserve)
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if err := n.shed(sctx, 24*time.Hour, false); err != nil {
					n.log.Warn("leaderships not all handed away before stopping the replicas", "err", err)
				}
				cancel()
				n.shards.SetSuspended(why)
			case low && free >= resume:
				n.disk.set("")
				n.shards.SetSuspended("")
				_ = n.shed(ctx, 0, true)
				n.log.Info("storage resumed: free space is back; group replicas start again from their disk and catch up", "free", free, "min_free_disk", reserve)
			}
		} else {
			n.log.Warn("cannot read the data directory's free space", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
