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
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

// progress draws one line that it rewrites in place at a terminal (and prints a
// line per update elsewhere): what, percentage, and an ETA from the rate so far.
type progress struct {
	w       io.Writer
	what    string
	started time.Time
	tty     bool
}

func newProgress(what string) *progress {
	return &progress{w: os.Stderr, what: what, started: time.Now(), tty: term.IsTerminal(int(os.Stderr.Fd()))}
}

func (p *progress) update(done, total float64, detail string) {
	pct := 0.0
	if total > 0 {
		pct = min(100, 100*done/total)
	}
	eta := "ETA -"
	if el := time.Since(p.started); done > 0 && total > done {
		eta = "ETA " + (time.Duration(float64(el) * (total - done) / done)).Round(time.Second).String()
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

// waitInitialCopy follows an upstream's initial copy until the group holds what the
// master had at add and the syncer is caught up (lag 0).
func waitInitialCopy(ctx context.Context, cl *adminrpc.Client, name string, initial uint64) error {
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
		if g.Connected && g.LagSeconds == 0 && g.Bytes >= initial && g.Transactions > 0 {
			p.finish(fmt.Sprintf("caught up, %d transactions, %s", g.Transactions, bytesText(g.Bytes)))
			return true, nil
		}
		p.update(float64(g.Bytes), float64(initial), fmt.Sprintf("(%s of %s, %d transactions, lag %.0fs)", bytesText(g.Bytes), bytesText(initial), g.Transactions, g.LagSeconds))
		return false, nil
	})
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
		case <-time.After(c.Duration("interval")):
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

// examples are shown by each command's --help.
var examples = map[string]string{
	"flotilla serve":            "flotilla serve --node-id 1 --data /var/lib/flotilla --mysql-addr 0.0.0.0:3307\n   flotilla serve --config /etc/flotilla/flotilla.yaml --check-config",
	"flotilla upstream":         "flotilla upstream list",
	"flotilla upstream add":     "flotilla upstream add main --source db1:3306 --user flotilla --password-file /etc/flotilla/db1.pw \\\n       --replica-user repl --replica-password-file /etc/flotilla/repl.pw --wait",
	"flotilla upstream list":    "flotilla upstream list -o json",
	"flotilla upstream get":     "flotilla upstream get main",
	"flotilla upstream pause":   "flotilla upstream pause main",
	"flotilla upstream resume":  "flotilla upstream resume main",
	"flotilla upstream remove":  "flotilla upstream remove main",
	"flotilla upstream purge":   "flotilla upstream purge main --to flotilla-bin.000012",
	"flotilla upstream repoint": "flotilla upstream repoint main --source db2:3306",
	"flotilla node":             "flotilla node list",
	"flotilla node list":        "flotilla node list -o json",
	"flotilla node drain":       "flotilla node drain 3 --wait",
	"flotilla node remove":      "flotilla node remove 3",
	"flotilla status":           "flotilla status --watch --interval 5s",
}

// addExamples puts each command's example into its --help.
func addExamples(cmds []*cli.Command, parent string) {
	for _, c := range cmds {
		full := parent + " " + c.Name
		if ex, ok := examples[full]; ok {
			if c.Description != "" {
				c.Description += "\n\n"
			}
			c.Description += "Example:\n   " + ex
		}
		addExamples(c.Subcommands, full)
	}
}
