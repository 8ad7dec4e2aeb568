package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/flotilla-relay/flotilla/adminrpc"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

// replicaUserFlags declare the logins replicas use (upstream add and update).
func replicaUserFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "replica-user", Usage: "user replicas log in to Flotilla with (repeatable)"},
		&cli.StringSliceFlag{Name: "replica-password", Usage: "password of the matching --replica-user (or --replica-password-file, $FLOTILLA_REPLICA_PASSWORD)"},
		&cli.StringSliceFlag{Name: "replica-password-file", Usage: "file holding the password of the matching --replica-user"},
		&cli.StringFlag{Name: "replica-auth-plugin", Value: "mysql_native_password", Usage: "authentication plugin of the replica users: mysql_native_password or caching_sha2_password"},
		&cli.BoolFlag{Name: "replica-require-tls", Usage: "refuse replica logins that did not switch to TLS (MASTER_SSL=1)"},
	}
}

// replicaUsersOf pairs each --replica-user with its password (flag, file,
// environment or prompt).
func replicaUsersOf(c *cli.Context) ([]*adminv1.ReplicaUser, error) {
	users, pws := c.StringSlice("replica-user"), c.StringSlice("replica-password")
	if len(pws) > 0 && len(c.StringSlice("replica-password-file")) > 0 {
		return nil, fmt.Errorf("give replica passwords either all with --replica-password or all with --replica-password-file: mixed, they could not be paired with their users")
	}
	for _, f := range c.StringSlice("replica-password-file") {
		pw, err := secret("", f, "", "--replica-password-file")
		if err != nil {
			return nil, err
		}
		pws = append(pws, pw)
	}
	if len(pws) == 0 && len(users) == 1 {
		if pw := os.Getenv("FLOTILLA_REPLICA_PASSWORD"); pw != "" {
			pws = []string{pw}
		}
	}
	if len(pws) == 0 {
		for _, u := range users {
			pw, err := secret("", "", "", "password of replica user "+u)
			if err != nil {
				return nil, err
			}
			if pw != "" {
				pws = append(pws, pw)
			}
		}
	}
	if len(pws) != len(users) {
		return nil, fmt.Errorf("give one replica password per --replica-user (%d users, %d passwords)", len(users), len(pws))
	}
	var out []*adminv1.ReplicaUser
	for i := range users {
		out = append(out, &adminv1.ReplicaUser{User: users[i], Password: pws[i],
			AuthPlugin: c.String("replica-auth-plugin"), RequireTls: c.Bool("replica-require-tls")})
	}
	return out, nil
}

// upstreamUpdateCommand changes what an existing upstream allows to change; it
// prints whether anything changed, which configuration tools (deploy/ansible)
// read from -o json.
func upstreamUpdateCommand() *cli.Command {
	return &cli.Command{
		Name: "update", Usage: "change an upstream's replica users (the list given replaces the current one) or replica count; says whether anything changed", ArgsUsage: "NAME",
		Flags: append([]cli.Flag{&cli.IntFlag{Name: "replicas", Usage: "raft replicas of the group (the controller adds or removes members)"}, outputFlag}, replicaUserFlags()...),
		Action: func(c *cli.Context) error {
			n, err := needName(c)
			if err != nil {
				return err
			}
			req := &adminv1.UpdateUpstreamRequest{Name: n, Replicas: int32(c.Int("replicas"))}
			if c.IsSet("replica-user") {
				if req.ReplicaUsers, err = replicaUsersOf(c); err != nil {
					return err
				}
				req.SetReplicaUsers = true
			}
			if !req.SetReplicaUsers && req.Replicas == 0 {
				return fmt.Errorf("nothing to change: give --replica-user (with passwords) or --replicas")
			}
			return call(c, 30*time.Second, func(ctx context.Context, cl *adminrpc.Client) error {
				r, err := cl.UpdateUpstream(ctx, req)
				if err != nil {
					return err
				}
				return render(c, r, func(w io.Writer) {
					if !r.Changed {
						fmt.Fprintf(w, "%s: unchanged\n", n)
					}
					for _, ch := range r.Changes {
						fmt.Fprintf(w, "%s: %s\n", n, ch)
					}
				})
			})
		},
	}
}
