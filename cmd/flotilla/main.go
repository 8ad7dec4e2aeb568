// Command flotilla is the single Flotilla binary: `serve` runs a node; `upstream`,
// `node` and `status` administer a cluster through the admin gRPC API.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/flotilla-relay/flotilla/internal/buildinfo"
	"google.golang.org/grpc/status"
)

// newApp is the command tree (main and tests use it).
func newApp() *cli.App {
	app := &cli.App{
		Name:  "flotilla",
		Usage: "a highly available binlog relay for MySQL and MariaDB masters",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin", Usage: "admin API address of any node", EnvVars: []string{"FLOTILLA_ADMIN"}, Value: "127.0.0.1:7070"},
			&cli.StringFlag{Name: "token", Usage: "admin API bearer token (prefer $FLOTILLA_TOKEN or --token-file: a flag shows in ps)", EnvVars: []string{"FLOTILLA_TOKEN"}},
			&cli.StringFlag{Name: "token-file", Usage: "file holding the admin API bearer token", EnvVars: []string{"FLOTILLA_TOKEN_FILE"}},
			&cli.StringFlag{Name: "tls-ca", Usage: "CA certificate to verify the admin API's TLS certificate (enables TLS)", EnvVars: []string{"FLOTILLA_TLS_CA"}},
			&cli.StringFlag{Name: "tls-cert", Usage: "client certificate for the admin API (in place of the token)", EnvVars: []string{"FLOTILLA_TLS_CERT"}},
			&cli.StringFlag{Name: "tls-key", Usage: "key of --tls-cert", EnvVars: []string{"FLOTILLA_TLS_KEY"}},
			&cli.BoolFlag{Name: "version", Usage: "print the version and exit (`flotilla version` says more)"},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("version") {
				fmt.Fprintln(c.App.Writer, buildinfo.Get().String())
				return nil
			}
			return cli.ShowAppHelp(c)
		},
		Commands:       []*cli.Command{serveCommand(), upstreamCommand(), nodeCommand(), clusterCommand(), statusCommand(), versionCommand()},
		Description:    "Example:\n   flotilla --admin 10.0.0.1:7070 status",
		ExitErrHandler: func(*cli.Context, error) {},
	}
	addExamples(app.Commands, app.Name, examples())
	return app
}

func main() {
	app := newApp()
	args := reorderArgs(app, os.Args)
	// The process's dragonboat, before any NodeHost (serve's) exists.
	app.Metadata = map[string]any{dragonboatMetadata: tuneDragonboat()}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.RunContext(ctx, args)
	stop()
	var quiet cli.ExitCoder // the command said why already (cluster health)
	if errors.As(err, &quiet) && err.Error() == "" {
		os.Exit(quiet.ExitCode())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "flotilla: %s\n", errorLine(err))
		os.Exit(1)
	}
}

// errorLine reduces an error to the one clear line the command-line contract promises:
// for admin API errors, the server's message without transport noise.
func errorLine(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		s := se.GRPCStatus()
		if s.Code().String() == "Unavailable" {
			return "cannot reach the admin API (is `flotilla serve` running? set --admin or FLOTILLA_ADMIN): " + s.Message()
		}
		return s.Message()
	}
	return err.Error()
}
