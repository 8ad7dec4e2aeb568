package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/flotilla-relay/flotilla/adminrpc"
	"github.com/flotilla-relay/flotilla/internal/binlog"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

// progress draws one line that it rewrites in place at a terminal (and prints a
// line per update elsewhere): what, percentage, and an ETA from the rate so far.
type progress struct {
	w       io.Writer
	what    string
	started time.Time
	tty     bool
	// first is the first amount done seen: the ETA is from the rate since then.
	first    float64
	hasFirst bool
	mark     time.Time // when first was seen
}

func newProgress(what string) *progress {
	return &progress{w: os.Stderr, what: what, started: time.Now(), tty: term.IsTerminal(int(os.Stderr.Fd()))}
}

func (p *progress) update(done, total float64, detail string) {
	pct := 0.0
	if total > 0 {
		pct = min(100, 100*done/total)
	}
	if !p.hasFirst {
		p.first, p.hasFirst = done, true
		p.mark = time.Now()
	}
	eta := "ETA -"
	if el, moved := time.Since(p.mark), done-p.first; moved > 0 && total > done {
		eta = "ETA " + (time.Duration(float64(el) * (total - done) / moved)).Round(time.Second).String()
	}
	line := fmt.Sprintf("%s: %3.0f%% %s, %s", p.what, pct, detail, eta)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func (p *progress) finish(msg string) {
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "%s: %s in %s\n", p.what, msg, time.Since(p.started).Round(time.Second))
}

// poll calls step every interval until it reports done, ctx ends or it fails.
func poll(ctx context.Context, interval time.Duration, step func() (bool, error)) error {
	for {
		done, err := step()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting: %w", ctx.Err())
		case <-time.After(interval):
		}
	}
}

// waitInitialCopy follows an upstream's initial copy until the group has executed the
// master's GTID position at add (the percentage is of the master's binlog bytes then,
// which also count file headers, so it is an estimate).
func waitInitialCopy(ctx context.Context, cl *adminrpc.Client, name string, initial uint64, endGTID, flavor string) error {
	reached, err := gtidsReached(endGTID, flavor)
	if err != nil {
		return fmt.Errorf("the master's GTID position at add, %q: %w", endGTID, err)
	}
	p := newProgress("initial copy of " + name)
	return poll(ctx, time.Second, func() (bool, error) {
		r, err := cl.GetUpstream(ctx, &adminv1.UpstreamRef{Name: name})
		if err != nil {
			return false, err
		}
		g := r.Group
		if g == nil {
			return false, nil
		}
		done, err := reached(g.ExecutedGtid)
		if err != nil {
			return false, fmt.Errorf("executed GTID %q: %w", g.ExecutedGtid, err)
		}
		if done {
			p.finish(fmt.Sprintf("caught up, %d transactions, %s", g.Transactions, bytesText(g.Bytes)))
			return true, nil
		}
		p.update(float64(min(g.Bytes, initial*99/100)), float64(initial), fmt.Sprintf("(%s of %s, %d transactions, lag %.0fs)", bytesText(g.Bytes), bytesText(initial), g.Transactions, g.LagSeconds))
		return false, nil
	})
}

// waitMembers follows an upstream's group until every member holds what the leader
// holds, showing the furthest-behind member's progress.
func waitMembers(ctx context.Context, cl *adminrpc.Client, name string) (*adminv1.UpstreamStatus, error) {
	p := newProgress("catch-up of " + name)
	var last *adminv1.UpstreamStatus
	var prevLead uint64 // the leader's count one poll ago: under writes, members trail the instant
	var unreachableSince time.Time
	err := poll(ctx, time.Second, func() (bool, error) {
		r, err := cl.GetUpstream(ctx, &adminv1.UpstreamRef{Name: name})
		if err != nil {
			return false, err
		}
		last = r
		var lead uint64
		found := false
		for _, m := range r.GetGroup().GetMemberStatus() {
			if m.Leader {
				lead, found = m.Transactions, true
			}
		}
		if !found {
			p.update(0, 1, "(no leader known yet)")
			return false, nil
		}
		target := lead
		if prevLead > 0 {
			target = min(lead, prevLead)
		}
		prevLead = lead
		behind, slowest, unreachable := 0, lead, 0
		for _, m := range r.Group.MemberStatus {
			if !m.Reachable {
				unreachable++
				continue
			}
			if m.Transactions < target {
				behind++
				slowest = min(slowest, m.Transactions)
			}
		}
		switch {
		case unreachable == 0:
			unreachableSince = time.Time{}
		case unreachableSince.IsZero():
			unreachableSince = time.Now()
		case time.Since(unreachableSince) > time.Minute:
			return false, fmt.Errorf("%d member(s) of %s did not answer for a minute: see `flotilla status`", unreachable, name)
		}
		if behind == 0 && unreachable == 0 {
			p.finish(fmt.Sprintf("every member caught up (%d members, %d transactions)", len(r.Group.MemberStatus), lead))
			return true, nil
		}
		p.update(float64(slowest), float64(lead), fmt.Sprintf("(%d of %d members behind, slowest at %d of %d transactions, %d unreachable)",
			behind, len(r.Group.MemberStatus), slowest, lead, unreachable))
		return false, nil
	})
	return last, err
}

// waitDrain follows a drain until the node holds no replica.
func waitDrain(ctx context.Context, cl *adminrpc.Client, id uint64, start uint64) error {
	p := newProgress(fmt.Sprintf("drain of node %d", id))
	return poll(ctx, time.Second, func() (bool, error) {
		r, err := cl.ListNodes(ctx, &adminv1.ListNodesRequest{})
		if err != nil {
			return false, err
		}
		for _, n := range r.Nodes {
			if n.Id != id {
				continue
			}
			if n.Groups == 0 {
				p.finish("no replica left; `flotilla node remove` may take it out")
				return true, nil
			}
			moved := float64(start) - float64(n.Groups)
			p.update(moved, float64(start), fmt.Sprintf("(%d of %d replicas moved)", int(moved), start))
			return false, nil
		}
		return false, fmt.Errorf("node %d is no longer in the cluster", id)
	})
}

// watch runs show every interval, redrawing the screen at a terminal, until ctx ends.
func watch(c *cli.Context, show func() error) error {
	tty := term.IsTerminal(int(os.Stdout.Fd()))
	for {
		if tty {
			fmt.Print("\033[H\033[2J")
		}
		fmt.Printf("every %s, %s (Ctrl-C to stop)\n\n", c.Duration("interval"), time.Now().Format(time.TimeOnly))
		if err := show(); err != nil {
			fmt.Println("error:", errorLine(err))
		}
		select {
		case <-c.Context.Done():
			return nil
		case <-time.After(max(c.Duration("interval"), 100*time.Millisecond)):
		}
	}
}

func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// examples are shown by each command's --help (a function: no package-level
// mutable state).
func examples() map[string]string {
	return map[string]string{
		"flotilla serve":                   "flotilla serve --node-id 1 --data /var/lib/flotilla --mysql-addr 0.0.0.0:3307\n   flotilla serve --config /etc/flotilla/flotilla.yaml --check-config",
		"flotilla upstream":                "flotilla upstream list",
		"flotilla upstream add":            "flotilla upstream add main --source db1:3306 --user flotilla --password-file /etc/flotilla/db1.pw \\\n       --replica-user repl --replica-password-file /etc/flotilla/repl.pw --wait",
		"flotilla upstream list":           "flotilla upstream list -o json",
		"flotilla upstream get":            "flotilla upstream get main",
		"flotilla upstream pause":          "flotilla upstream pause main",
		"flotilla upstream resume":         "flotilla upstream resume main",
		"flotilla upstream remove":         "flotilla upstream remove main",
		"flotilla upstream purge":          "flotilla upstream purge main --to flotilla-bin.000012",
		"flotilla upstream catch-up":       "flotilla upstream catch-up main",
		"flotilla upstream repoint":        "flotilla upstream repoint main --source db2:3306",
		"flotilla upstream set-candidates": "flotilla upstream set-candidates main --candidate db1:3306 --candidate db2:3306 --source-down-after 10s",
		"flotilla cluster":                 "flotilla cluster rotate-secret",
		"flotilla cluster health":          "flotilla cluster health --wait 5m   # before stopping a node",
		"flotilla cluster rotate-secret":   "flotilla --token-file /etc/flotilla/token cluster rotate-secret",
		"flotilla node":                    "flotilla node list",
		"flotilla node list":               "flotilla node list -o json",
		"flotilla node drain":              "flotilla node drain 3 --wait\n   flotilla node drain 3 --leaders-only   # before restarting node 3",
		"flotilla node remove":             "flotilla node remove 3",
		"flotilla status":                  "flotilla status --watch --interval 5s",
		"flotilla upstream update":         "flotilla upstream update main --replica-user repl --replica-password-file /etc/flotilla/repl.pw --replicas 3",
		"flotilla version":                 "flotilla version -o json\n   flotilla --version",
	}
}

// addExamples puts each command's example into its --help.
func addExamples(cmds []*cli.Command, parent string, all map[string]string) {
	for _, c := range cmds {
		full := parent + " " + c.Name
		if ex, ok := all[full]; ok {
			if c.Description != "" {
				c.Description += "\n\n"
			}
			c.Description += "Example:\n   " + ex
		}
		addExamples(c.Subcommands, full, all)
	}
}

// gtidsReached returns a test of whether an executed GTID text (as the group status
// prints it for the flavor) holds everything of end.
func gtidsReached(end, flavor string) (func(string) (bool, error), error) {
	if flavor == "mysql" {
		want, err := binlog.ParseMySQLSet(end)
		if err != nil {
			return nil, err
		}
		return func(s string) (bool, error) {
			have, err := binlog.ParseMySQLSet(s)
			return err == nil && have.ContainsSet(want), err
		}, nil
	}
	want, err := binlog.ParsePosition(end)
	if err != nil {
		return nil, err
	}
	return func(s string) (bool, error) {
		have, err := binlog.ParsePosition(s)
		if err != nil {
			return false, err
		}
		for _, g := range want {
			if !have.Contains(g) {
				return false, nil
			}
		}
		return true, nil
	}, nil
}
