package main

import (
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/flotilla-relay/flotilla/internal/buildinfo"
)

// versionCommand prints what this binary is; `flotilla --version` prints its first line.
func versionCommand() *cli.Command {
	return &cli.Command{
		Name: "version", Usage: "print this binary's version, commit, build date, Go version and the newest cluster version it understands",
		Flags: []cli.Flag{outputFlag},
		Action: func(c *cli.Context) error {
			i := buildinfo.Get()
			switch c.String("output") {
			case "json":
				b, err := json.MarshalIndent(i, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(c.App.Writer, string(b))
			case "table", "":
				fmt.Fprintf(c.App.Writer, "flotilla %s\ncommit:          %s\nbuilt:           %s\ngo:              %s\ncluster version: %d (newest understood)\n",
					i.Version, i.Commit, i.Date, i.GoVersion, i.ClusterVersion)
			default:
				return fmt.Errorf("-o %q: use table or json", c.String("output"))
			}
			return nil
		},
	}
}
