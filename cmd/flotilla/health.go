package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/flotilla-relay/flotilla/adminrpc"
	"github.com/flotilla-relay/flotilla/cluster"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

// health is what `cluster health` reports.
type health struct {
	Healthy        bool     `json:"healthy"`
	ClusterVersion uint32   `json:"cluster_version"`
	Versions       string   `json:"versions"`
	Problems       []string `json:"problems"`
}

// judgeHealth says whether the cluster can lose any one node without stopping a
// group: every node answers, the metadata group has a leader, and every group has a
// leader and every member caught up with it (within cluster.CatchUpSlack
// transactions).
func judgeHealth(r *adminv1.StatusResponse) health {
	h := health{ClusterVersion: r.ClusterVersion, Versions: versionSummary(r.Nodes), Problems: []string{}}
	for _, n := range r.Nodes {
		if n.State != "up" {
			h.Problems = append(h.Problems, fmt.Sprintf("node %d is %s", n.Id, dash(n.State)))
		}
		if n.StorageProblem != "" {
			h.Problems = append(h.Problems, fmt.Sprintf("node %d: %s", n.Id, n.StorageProblem))
		}
	}
	if r.MetaLeader == 0 {
		h.Problems = append(h.Problems, "the metadata group has no leader")
	}
	for _, s := range r.Upstreams {
		u, g := s.Upstream, s.Group
		if g == nil || g.LeaderNode == 0 {
			h.Problems = append(h.Problems, fmt.Sprintf("upstream %s: its group has no leader", u.Name))
			continue
		}
		var lead uint64
		for _, m := range g.MemberStatus {
			if m.Leader {
				lead = m.Transactions
			}
		}
		for _, m := range g.MemberStatus {
			switch {
			case !m.Reachable:
				h.Problems = append(h.Problems, fmt.Sprintf("upstream %s: member node %d does not answer", u.Name, m.Node))
			case m.Transactions+cluster.CatchUpSlack < lead:
				h.Problems = append(h.Problems, fmt.Sprintf("upstream %s: member node %d trails its leader by %d transactions", u.Name, m.Node, lead-m.Transactions))
			}
		}
	}
	h.Healthy = len(h.Problems) == 0
	return h
}

func clusterHealthCommand() *cli.Command {
	return &cli.Command{
		Name: "health", Usage: "exit 0 when any one node may stop without stopping a group (every node up, every group led and caught up), else 1 with the problems",
		Flags: []cli.Flag{outputFlag,
			&cli.DurationFlag{Name: "wait", Usage: "poll until healthy for up to this long (a rolling upgrade waits for a restarted node's groups to catch up)"}},
		Action: func(c *cli.Context) error {
			deadline := time.Now().Add(c.Duration("wait"))
			var h health
			for {
				err := call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
					r, err := cl.Status(ctx, &adminv1.StatusRequest{})
					if err != nil {
						return err
					}
					h = judgeHealth(r)
					return nil
				})
				if err != nil {
					h = health{Problems: []string{errorLine(err)}}
				}
				if h.Healthy || !time.Now().Before(deadline) {
					break
				}
				select {
				case <-c.Context.Done():
					return c.Context.Err()
				case <-time.After(time.Second):
				}
			}
			switch c.String("output") {
			case "json":
				b, _ := json.MarshalIndent(h, "", "  ")
				fmt.Fprintln(c.App.Writer, string(b))
			default:
				if h.Healthy {
					fmt.Fprintf(c.App.Writer, "healthy: cluster version %d; %s\n", h.ClusterVersion, h.Versions)
				}
				for _, p := range h.Problems {
					fmt.Fprintln(c.App.Writer, "unhealthy: "+p)
				}
			}
			if !h.Healthy {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}
