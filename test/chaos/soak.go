package chaos

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
)

// soak samples every node's resident memory and open files during a run.
type soak struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	rss    map[uint64][]int64
	fds    map[uint64][]int64
}

func startSoak(ctx context.Context, nodes []*flotillatest.Node, every time.Duration) *soak {
	ctx, cancel := context.WithCancel(ctx)
	s := &soak{cancel: cancel, done: make(chan struct{}), rss: map[uint64][]int64{}, fds: map[uint64][]int64{}}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for _, n := range nodes {
				if !n.Running() {
					continue
				}
				pid := n.PID()
				rss := vmRSS(pid)
				ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
				if rss == 0 || err != nil {
					continue
				}
				s.mu.Lock()
				s.rss[n.ID] = append(s.rss[n.ID], rss)
				s.fds[n.ID] = append(s.fds[n.ID], int64(len(ents)))
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (s *soak) stop() { s.cancel(); <-s.done }

// rising reports the nodes whose memory or open files in the last quarter of the
// run are well above the first quarter's (medians: restarts and spikes do not count).
func (s *soak) rising() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	check := func(what string, by map[uint64][]int64, ratio float64, slack int64) {
		for id, v := range by {
			if len(v) < 8 {
				continue
			}
			q := len(v) / 4
			first, last := median(v[:q]), median(v[len(v)-q:])
			if float64(last) > ratio*float64(first) && last-first > slack {
				out = append(out, fmt.Sprintf("node %d: %s rose from %d to %d (medians of the first and last quarter of %d samples)", id, what, first, last, len(v)))
			}
		}
	}
	check("resident memory", s.rss, 2, 64<<20)
	check("open files", s.fds, 1.5, 100)
	return out
}

func median(v []int64) int64 {
	c := slices.Clone(v)
	slices.Sort(c)
	return c[len(c)/2]
}
