package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-relay/flotilla/adminrpc"
	"github.com/flotilla-relay/flotilla/internal/secure"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

var outputFlag = &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}

// call runs one admin API call with a connection and a timeout.
func call(c *cli.Context, timeout time.Duration, f func(ctx context.Context, cl *adminrpc.Client) error) error {
	var tlsCfg *tls.Config
	if f := (secure.Files{CA: c.String("tls-ca"), Cert: c.String("tls-cert"), Key: c.String("tls-key")}); f.Enabled() {
		if f.CA == "" || (f.Cert == "") != (f.Key == "") {
			return fmt.Errorf("TLS to the admin API needs --tls-ca, and --tls-cert with --tls-key for a client certificate")
		}
		var err error
		if tlsCfg, err = f.ClientConfig(); err != nil {
			return err
		}
	}
	token := c.String("token")
	if f := c.String("token-file"); f != "" && token == "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	cl, err := adminrpc.Dial(c.String("admin"), token, tlsCfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	return f(ctx, cl)
}

// render prints a message as JSON or, with a table function, as a table.
func render(c *cli.Context, m proto.Message, table func(w io.Writer)) error {
	switch c.String("output") {
	case "json":
		b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(m)
		if err != nil {
			return err
		}
		fmt.Println(string(b))
	case "table", "":
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		table(w)
		return w.Flush()
	default:
		return fmt.Errorf("-o %q: use table or json", c.String("output"))
	}
	return nil
}

func needName(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("%s needs exactly one upstream NAME", c.Command.FullName())
	}
	return c.Args().First(), nil
}

func upstreamCommand() *cli.Command {
	simple := func(name, usage string, f func(context.Context, *adminrpc.Client, string) (proto.Message, error)) *cli.Command {
		return &cli.Command{Name: name, Usage: usage, ArgsUsage: "NAME", Flags: []cli.Flag{outputFlag}, Action: func(c *cli.Context) error {
			n, err := needName(c)
			if err != nil {
				return err
			}
			return call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
				m, err := f(ctx, cl, n)
				if err != nil {
					return err
				}
				if u, ok := m.(*adminv1.Upstream); ok {
					return render(c, u, func(w io.Writer) { upstreamTable(w, []*adminv1.UpstreamStatus{{Upstream: u}}) })
				}
				return render(c, m, func(w io.Writer) { fmt.Fprintf(w, "%s: done\n", n) })
			})
		}}
	}
	return &cli.Command{
		Name:  "upstream",
		Usage: "add, inspect and remove relayed masters",
		Subcommands: []*cli.Command{
			{
				Name: "add", Usage: "check a master and start relaying it", ArgsUsage: "NAME",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "source", Required: true, Usage: "master address HOST:PORT"},
					&cli.StringFlag{Name: "user", Required: true, Usage: "replication user on the master"},
					&cli.StringFlag{Name: "password", Usage: "its password (visible in ps: prefer --password-file or $FLOTILLA_SOURCE_PASSWORD)"},
					&cli.StringFlag{Name: "password-file", Usage: "file holding the master user's password (first line)"},
					&cli.StringFlag{Name: "flavor", Value: "auto", Usage: "auto, mysql or mariadb"},
					&cli.StringFlag{Name: "semi-sync", Value: "auto", Usage: "auto (when the master has semi-sync on), on or off: acknowledge transactions to the master as a semi-sync replica once the group's quorum has committed them"},
					&cli.StringSliceFlag{Name: "candidate", Usage: "HOST:PORT of a server to switch to when the source is unreachable for --source-down-after, if it is writable and continues the group's history (repeatable)"},
					&cli.StringFlag{Name: "source-down-after", Usage: "how long the source may be unreachable before a candidate takes over (default 10s)"},
					&cli.BoolFlag{Name: "source-tls", Usage: "connect to the master over TLS, verifying its certificate"},
					&cli.StringFlag{Name: "source-tls-ca", Usage: "CA file (PEM) the master's certificate must chain to (implies --source-tls; default: system roots)"},
					&cli.StringFlag{Name: "source-tls-server-name", Usage: "name checked in the master's certificate (default: the host of --source)"},
					&cli.IntFlag{Name: "replicas", Usage: "raft replicas of the group (default: min(3, nodes))"},
					&cli.StringFlag{Name: "start-gtid", Usage: "start from this GTID position instead of the oldest binlog on the master"},
					&cli.UintFlag{Name: "server-id", Usage: "server_id toward the master (default: derived from the cluster id and the upstream name)"},
					&cli.BoolFlag{Name: "wait", Usage: "after adding, show the initial copy's progress until Flotilla has caught up with the master"},
					&cli.StringFlag{Name: "serve-from", Value: "leader", Usage: "leader: every node relays dumps from the group's leader; any: nodes holding a replica serve from it (dumps survive leader changes)"},
					outputFlag,
				}, replicaUserFlags()...),
				Action: func(c *cli.Context) error {
					n, err := needName(c)
					if err != nil {
						return err
					}
					password, err := secret(c.String("password"), c.String("password-file"), "FLOTILLA_SOURCE_PASSWORD", "--password")
					if err != nil {
						return err
					}
					replicaUsers, err := replicaUsersOf(c)
					if err != nil {
						return err
					}
					var caPEM string
					if f := c.String("source-tls-ca"); f != "" {
						b, err := os.ReadFile(f)
						if err != nil {
							return fmt.Errorf("--source-tls-ca: %w", err)
						}
						caPEM = string(b)
					}
					req := &adminv1.AddUpstreamRequest{Name: n, SourceTls: c.Bool("source-tls"), SourceTlsCa: caPEM, SourceTlsServerName: c.String("source-tls-server-name"), Source: c.String("source"), User: c.String("user"), Password: password,
						Flavor: c.String("flavor"), Replicas: int32(c.Int("replicas")), StartGtid: c.String("start-gtid"), ServeFrom: c.String("serve-from"), ServerId: uint32(c.Uint("server-id")), SemiSync: c.String("semi-sync"),
						Candidates: c.StringSlice("candidate"), SourceDownAfter: c.String("source-down-after")}
					req.ReplicaUsers = replicaUsers
					var added *adminv1.Upstream
					err = call(c, 60*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
						u, err := cl.AddUpstream(ctx, req)
						if err != nil {
							return err
						}
						added = u
						return render(c, u, func(w io.Writer) {
							upstreamTable(w, []*adminv1.UpstreamStatus{{Upstream: u}})
							for _, warn := range u.AddWarnings {
								fmt.Fprintf(w, "WARNING: %s\n", warn)
							}
						})
					})
					if err != nil || !c.Bool("wait") {
						return err
					}
					return call(c, 7*24*time.Hour, func(ctx context.Context, cl *adminrpc.Client) error {
						return waitInitialCopy(ctx, cl, n, added.InitialBytes, added.InitialGtid, added.Flavor)
					})
				},
			},
			{
				Name: "list", Usage: "list upstreams", Flags: []cli.Flag{outputFlag},
				Action: func(c *cli.Context) error {
					return call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
						r, err := cl.ListUpstreams(ctx, &adminv1.ListUpstreamsRequest{})
						if err != nil {
							return err
						}
						return render(c, r, func(w io.Writer) { upstreamTable(w, r.Upstreams) })
					})
				},
			},
			{
				Name: "get", Usage: "show one upstream and its group", ArgsUsage: "NAME", Flags: []cli.Flag{outputFlag},
				Action: func(c *cli.Context) error {
					n, err := needName(c)
					if err != nil {
						return err
					}
					return call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
						r, err := cl.GetUpstream(ctx, &adminv1.UpstreamRef{Name: n})
						if err != nil {
							return err
						}
						return render(c, r, func(w io.Writer) { upstreamDetail(w, r) })
					})
				},
			},
			{
				Name: "catch-up", Usage: "follow the group's members until each holds what its leader holds (after a replica was re-created or a node returned)", ArgsUsage: "NAME",
				Flags: []cli.Flag{outputFlag},
				Action: func(c *cli.Context) error {
					n, err := needName(c)
					if err != nil {
						return err
					}
					return call(c, 7*24*time.Hour, func(ctx context.Context, cl *adminrpc.Client) error {
						r, err := waitMembers(ctx, cl, n)
						if err != nil {
							return err
						}
						return render(c, r, func(io.Writer) {})
					})
				},
			},
			simple("pause", "stop pulling from the master (replicas keep being served)", func(ctx context.Context, cl *adminrpc.Client, n string) (proto.Message, error) {
				return cl.PauseUpstream(ctx, &adminv1.UpstreamRef{Name: n})
			}),
			simple("resume", "resume pulling from the master", func(ctx context.Context, cl *adminrpc.Client, n string) (proto.Message, error) {
				return cl.ResumeUpstream(ctx, &adminv1.UpstreamRef{Name: n})
			}),
			simple("remove", "stop relaying and delete the upstream's binlog on every node", func(ctx context.Context, cl *adminrpc.Client, n string) (proto.Message, error) {
				return cl.RemoveUpstream(ctx, &adminv1.UpstreamRef{Name: n})
			}),
			{
				Name: "purge", Usage: "delete served binlog files before --to on every node (files connected replicas read are kept)", ArgsUsage: "NAME",
				Flags: []cli.Flag{&cli.StringFlag{Name: "to", Required: true, Usage: "first served file to keep, e.g. flotilla-bin.000012"}, outputFlag},
				Action: func(c *cli.Context) error {
					n, err := needName(c)
					if err != nil {
						return err
					}
					return call(c, 60*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
						r, err := cl.PurgeUpstream(ctx, &adminv1.PurgeRequest{Name: n, ToFile: c.String("to")})
						if err != nil {
							return err
						}
						return render(c, r, func(w io.Writer) {
							fmt.Fprintf(w, "%s: oldest file now %s, oldest GTID available %s\n", n, r.FirstFile, dash(r.OldestGtid))
						})
					})
				},
			},
			upstreamUpdateCommand(),
			{
				Name: "set-candidates", Usage: "replace the servers the upstream switches to when its source is down", ArgsUsage: "NAME",
				Flags: []cli.Flag{&cli.StringSliceFlag{Name: "candidate", Usage: "HOST:PORT (repeatable; none: no automatic switch)"},
					&cli.StringFlag{Name: "source-down-after", Usage: "how long the source may be unreachable before a candidate takes over (default: unchanged)"}, outputFlag},
				Action: func(c *cli.Context) error {
					n, err := needName(c)
					if err != nil {
						return err
					}
					return call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
						u, err := cl.SetCandidates(ctx, &adminv1.SetCandidatesRequest{Name: n, Candidates: c.StringSlice("candidate"), SourceDownAfter: c.String("source-down-after")})
						if err != nil {
							return err
						}
						return render(c, u, func(w io.Writer) {
							fmt.Fprintf(w, "%s: candidates %s, switch after %s down\n", n, dash(strings.Join(u.Candidates, ", ")), u.SourceDownAfter)
						})
					})
				},
			},
			{
				Name: "repoint", Usage: "point the upstream at a new master after failover (it must hold everything the group holds, and the group everything it has but its writes since its promotion)", ArgsUsage: "NAME",
				Flags: []cli.Flag{&cli.StringFlag{Name: "source", Required: true, Usage: "the new master, HOST:PORT"},
					&cli.BoolFlag{Name: "force", Usage: "switch even if the continuity checks fail (recorded with a warning)"}, outputFlag},
				Action: func(c *cli.Context) error {
					n, err := needName(c)
					if err != nil {
						return err
					}
					// The leader checks the new master (up to 2 minutes) before switching.
					return call(c, 3*time.Minute, func(ctx context.Context, cl *adminrpc.Client) error {
						u, err := cl.RepointUpstream(ctx, &adminv1.RepointUpstreamRequest{Name: n, Source: c.String("source"), Force: c.Bool("force")})
						if err != nil {
							return err
						}
						return render(c, u, func(w io.Writer) {
							if len(u.Switches) > 0 {
								sw := u.Switches[len(u.Switches)-1]
								fmt.Fprintf(w, "%s: source %s -> %s\n", n, sw.From, sw.To)
								if sw.Forced {
									fmt.Fprintf(w, "FORCED despite: %s\n", sw.Warning)
								}
							}
							upstreamTable(w, []*adminv1.UpstreamStatus{{Upstream: u}})
						})
					})
				},
			},
		},
	}
}

// secret returns a password from a flag, else the first line of a file, else an
// environment variable: the last two keep it out of the process list.
func secret(flag, file, env, what string) (string, error) {
	if flag != "" && file != "" {
		return "", fmt.Errorf("%s and its -file form both given: use one", what)
	}
	if flag != "" {
		return flag, nil
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		return strings.TrimRight(line, "\r"), nil
	}
	if env != "" {
		if v := os.Getenv(env); v != "" {
			return v, nil
		}
	}
	// At a terminal, ask without echo: a password typed there shows in no process
	// list or shell history.
	if fd := int(os.Stdin.Fd()); term.IsTerminal(fd) {
		fmt.Fprintf(os.Stderr, "%s: ", strings.TrimLeft(what, "-"))
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return "", fmt.Errorf("%s: read from the terminal: %w", what, err)
		}
		return string(b), nil
	}
	return "", nil
}

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "the cluster's health and its own credentials",
		Subcommands: []*cli.Command{clusterHealthCommand(), {
			Name:  "rotate-secret",
			Usage: "replace the key that signs node-to-node calls, through the metadata group, and retire the old one: run it after `node remove` so the removed node's signed calls are refused (change the admin token too); every member must answer",
			Flags: []cli.Flag{outputFlag},
			Action: func(c *cli.Context) error {
				return call(c, 2*time.Minute, func(ctx context.Context, cl *adminrpc.Client) error {
					r, err := cl.RotateSecret(ctx, &adminv1.RotateSecretRequest{})
					if err != nil {
						return err
					}
					return render(c, r, func(w io.Writer) {
						fmt.Fprintf(w, "node key generation %d now signs node-to-node calls on nodes %v; older keys are retired\n", r.Generation, r.Nodes)
					})
				})
			},
		}},
	}
}

func nodeCommand() *cli.Command {
	idCmd := func(name, usage string, flags []cli.Flag, f func(*cli.Context, context.Context, *adminrpc.Client, uint64) error) *cli.Command {
		return &cli.Command{Name: name, Usage: usage, ArgsUsage: "ID", Flags: append(flags, outputFlag), Action: func(c *cli.Context) error {
			var id uint64
			if c.NArg() != 1 {
				return fmt.Errorf("%s needs exactly one node ID", c.Command.FullName())
			}
			if _, err := fmt.Sscan(c.Args().First(), &id); err != nil || id == 0 {
				return fmt.Errorf("node ID %q is not a positive number", c.Args().First())
			}
			timeout := 60 * time.Second
			if c.Bool("wait") {
				timeout = 7 * 24 * time.Hour
			}
			return call(c, timeout, func(ctx context.Context, cl *adminrpc.Client) error { return f(c, ctx, cl, id) })
		}}
	}
	return &cli.Command{
		Name:  "node",
		Usage: "list, drain and remove nodes",
		Subcommands: []*cli.Command{
			{
				Name: "list", Usage: "list nodes", Flags: []cli.Flag{outputFlag},
				Action: func(c *cli.Context) error {
					return call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
						r, err := cl.ListNodes(ctx, &adminv1.ListNodesRequest{})
						if err != nil {
							return err
						}
						return render(c, r, func(w io.Writer) { nodeTable(w, r.Nodes) })
					})
				},
			},
			idCmd("drain", "move every replica off a node, gradually (`node list` shows how many it still holds); with --leaders-only, only its leaderships, before a restart",
				[]cli.Flag{&cli.BoolFlag{Name: "wait", Usage: "show the drain's progress until the node holds no replica"},
					&cli.BoolFlag{Name: "leaders-only", Usage: "hand the node's leaderships (upstream groups and metadata) to caught-up members and keep its replicas; returns when it leads nothing, and it takes no leadership for --for"},
					&cli.DurationFlag{Name: "for", Value: adminrpc.DefaultShedFor, Usage: "with --leaders-only: how long the node takes no leadership (a restart ends it sooner)"},
					&cli.BoolFlag{Name: "cancel", Usage: "with --leaders-only: let the node lead again now"}},
				func(c *cli.Context, ctx context.Context, cl *adminrpc.Client, id uint64) error {
					if c.Bool("leaders-only") {
						if d := c.Duration("for"); d < time.Second || d > 24*time.Hour {
							return fmt.Errorf("--for %s: give 1s to 24h", d)
						}
						n, err := cl.ShedLeaders(ctx, &adminv1.ShedLeadersRequest{Id: id, Seconds: uint32(c.Duration("for").Seconds()), Cancel: c.Bool("cancel")})
						if err != nil {
							return err
						}
						return render(c, n, func(w io.Writer) {
							if c.Bool("cancel") {
								fmt.Fprintf(w, "node %d may lead again\n", n.Id)
								return
							}
							fmt.Fprintf(w, "node %d leads no group and keeps its %d replicas; it takes no leadership for %s or until it restarts\n", n.Id, n.Groups, c.Duration("for"))
						})
					}
					n, err := cl.DrainNode(ctx, &adminv1.NodeRef{Id: id})
					if err != nil {
						return err
					}
					if err := render(c, n, func(w io.Writer) {
						fmt.Fprintf(w, "node %d is draining: it holds %d replicas and leads %d groups; they move off one at a time\n", n.Id, n.Groups, n.Leaders)
					}); err != nil || !c.Bool("wait") {
						return err
					}
					return waitDrain(ctx, cl, id, n.Groups)
				}),
			idCmd("remove", "remove a drained node from the cluster (refused while it holds replicas)", nil,
				func(c *cli.Context, ctx context.Context, cl *adminrpc.Client, id uint64) error {
					r, err := cl.RemoveNode(ctx, &adminv1.NodeRef{Id: id})
					if err != nil {
						return err
					}
					return render(c, r, func(w io.Writer) { fmt.Fprintf(w, "node %d removed from the cluster\n", id) })
				}),
		},
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name: "status", Usage: "cluster overview: nodes and every upstream's group",
		Flags: []cli.Flag{outputFlag,
			&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "redraw every --interval until interrupted"},
			&cli.DurationFlag{Name: "interval", Value: 2 * time.Second, Usage: "refresh period of --watch"}},
		Action: func(c *cli.Context) error {
			if c.Bool("watch") {
				return watch(c, func() error { return showStatus(c) })
			}
			return showStatus(c)
		},
	}
}

func showStatus(c *cli.Context) error {
	return call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
		r, err := cl.Status(ctx, &adminv1.StatusRequest{})
		if err != nil {
			return err
		}
		return render(c, r, func(w io.Writer) {
			fmt.Fprintf(w, "cluster %s, answered by node %d; metadata leader: node %d, voters %v\n", r.ClusterId, r.NodeId, r.MetaLeader, r.MetaVoters)
			fmt.Fprintf(w, "cluster version %d; %s\n\n", r.ClusterVersion, versionSummary(r.Nodes))
			nodeTable(w, r.Nodes)
			fmt.Fprintln(w)
			upstreamTable(w, r.Upstreams)
			if len(r.Decisions) > 0 {
				fmt.Fprintln(w, "\nRecent placement decisions:")
				for _, d := range r.Decisions[max(0, len(r.Decisions)-10):] {
					fmt.Fprintf(w, "  %s\n", d)
				}
			}
		})
	})
}

func nodeTable(w io.Writer, nodes []*adminv1.Node) {
	// 80 columns: the admin and raft addresses are in -o json.
	fmt.Fprintln(w, "NODE\tSTATE\tVERSION\tMYSQL\tGROUPS\tLEADS\tLABELS")
	for _, n := range nodes {
		var labels []string
		for k, v := range n.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		state := dash(n.State)
		if n.Draining {
			state += ",draining"
		}
		if n.SheddingLeaders {
			state += ",shedding"
		}
		if n.StorageProblem != "" {
			state += ",disk-low"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%d\t%s\n", n.Id, state, clip(versionOf(n), 10), clip(n.MysqlAddr, 21), n.Groups, n.Leaders, clip(strings.Join(labels, ","), 12))
	}
}

// versionOf is the node's release as tables show it.
func versionOf(n *adminv1.Node) string {
	if n.Version == "" {
		return "<0.29"
	}
	return n.Version
}

// versionSummary says which releases the nodes run: one, or, during a rolling
// upgrade, each with its nodes.
func versionSummary(nodes []*adminv1.Node) string {
	by := map[string][]string{}
	var order []string
	for _, n := range nodes {
		v := versionOf(n)
		if _, ok := by[v]; !ok {
			order = append(order, v)
		}
		by[v] = append(by[v], fmt.Sprint(n.Id))
	}
	if len(order) == 1 {
		return "every node runs " + order[0]
	}
	sort.Strings(order)
	parts := make([]string, 0, len(order))
	for _, v := range order {
		parts = append(parts, fmt.Sprintf("%s on node %s", v, strings.Join(by[v], ",")))
	}
	return "MIXED versions (a rolling upgrade?): " + strings.Join(parts, "; ")
}

func upstreamTable(w io.Writer, ups []*adminv1.UpstreamStatus) {
	// 80 columns: the source, flavor and full GTID set are in `upstream get` and -o json.
	fmt.Fprintln(w, "UPSTREAM\tGROUP\tLEAD\tSTATE\tLAG\tEXECUTED GTID\tFILE\tREPL")
	for _, s := range ups {
		u, g := s.Upstream, s.Group
		if g == nil {
			g = &adminv1.GroupStatus{GroupId: u.GroupId}
		}
		file := strings.TrimPrefix(g.CurrentFile, "flotilla-bin.")
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%.0fs\t%s\t%s\t%d\n", clip(u.Name, 14), u.GroupId, g.LeaderNode, stateWord(u, g), g.LagSeconds,
			clip(dash(g.ExecutedGtid), 16), dash(file), len(g.Replicas))
	}
}

func stateWord(u *adminv1.Upstream, g *adminv1.GroupStatus) string {
	switch {
	case u.Paused:
		return "paused"
	case g.Connected:
		return "streaming"
	case g.LastError != "":
		return "retrying"
	case g.LeaderNode == 0:
		return "starting"
	}
	return "connecting"
}

// clip shortens s to n characters, marking the cut.
func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func upstreamDetail(w io.Writer, s *adminv1.UpstreamStatus) {
	u, g := s.Upstream, s.Group
	row := func(k string, v any) { fmt.Fprintf(w, "%s:\t%v\n", k, v) }
	row("Name", u.Name)
	row("Flavor", u.Flavor)
	row("Source", u.Source)
	if len(u.Candidates) > 0 {
		row("Candidates", fmt.Sprintf("%s (switch after %s down)", strings.Join(u.Candidates, ", "), u.SourceDownAfter))
	}
	for _, sw := range u.Switches {
		line := fmt.Sprintf("%s %s -> %s (%s)", sw.At, sw.From, sw.To, sw.Reason)
		if sw.Forced {
			line += " FORCED despite: " + sw.Warning
		}
		row("Source switch", line)
	}
	if g.SourceSelection != "" {
		row("Source selection", g.SourceSelection)
	}
	for _, w := range u.AddWarnings {
		row("Warning at add", w)
	}
	row("Master version", u.Version)
	row("Master server_id", u.ServerId)
	row("Flotilla's server_id", u.SyncerServerId)
	row("Replica users", strings.Join(u.ReplicaUsers, ", "))
	row("History starts after", dash(u.StartGtid))
	row("Group", u.GroupId)
	row("Members", fmt.Sprint(g.Members))
	for _, m := range g.MemberStatus {
		state := "unreachable"
		if m.Reachable {
			state = fmt.Sprintf("%d transactions, %s", m.Transactions, dash(m.ExecutedGtid))
		}
		if m.Leader {
			state += " (leader)"
		}
		fmt.Fprintf(w, "  node %d\t%s\n", m.Node, state)
	}
	row("Leader", g.LeaderNode)
	row("State", stateWord(u, g))
	row("Executed GTID", dash(g.ExecutedGtid))
	row("Transactions", g.Transactions)
	row("Bytes", g.Bytes)
	row("Files", fmt.Sprintf("%s .. %s (current: %d bytes)", dash(g.FirstFile), dash(g.CurrentFile), g.CurrentFileSize))
	if g.CompressedPlainBytes > 0 {
		row("Compression", fmt.Sprintf("%d bytes of closed files stored in %d (%.0f%% saved)", g.CompressedPlainBytes, g.CompressedBytes,
			100*(1-float64(g.CompressedBytes)/float64(g.CompressedPlainBytes))))
	}
	row("Master file", dash(g.MasterFile))
	row("Last event", dash(g.LastEventAt))
	row("Lag (s)", fmt.Sprintf("%.1f", g.LagSeconds))
	row("Reconnects", g.Reconnects)
	if g.SemiSync {
		row("Semi-sync ACKs", fmt.Sprintf("%d (last %.1f ms after receipt)", g.SemiSyncAcks, g.SemiSyncAckMs))
	}
	row("Corrupt events re-fetched", g.CorruptEvents)
	if g.LastError != "" {
		row("Last error", g.LastError+" ("+g.LastErrorAt+")")
	}
	row("Connected replicas", len(g.Replicas))
	for _, r := range g.Replicas {
		fmt.Fprintf(w, "  %s\tvia node %d user=%s server_id=%d mode=%s at %s since %s", r.Addr, r.Node, r.User, r.ServerId, r.Mode, r.Position, r.ConnectedAt)
		if r.SemiSync {
			fmt.Fprintf(w, " semi-sync acks=%d acked=%s", r.SemiSyncAcks, dash(r.AckedPosition))
		}
		fmt.Fprintln(w)
	}
}
