package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/flotilla-relay/flotilla/internal/node"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run a Flotilla node (with no flags: a one-node cluster in ./flotilla-data)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "YAML configuration file; flags override it"},
			&cli.Uint64Flag{Name: "node-id", Usage: "this node's id (positive, unique in the cluster)"},
			&cli.StringFlag{Name: "data", Usage: "data directory (default ./flotilla-data)"},
			&cli.StringFlag{Name: "mysql-addr", Usage: "MySQL protocol listen address (default 127.0.0.1:3307)"},
			&cli.StringFlag{Name: "admin-addr", Usage: "admin gRPC listen address (default 127.0.0.1:7070)"},
			&cli.StringFlag{Name: "raft-addr", Usage: "raft address, reachable by the other nodes (default 127.0.0.1:7071)"},
			&cli.StringFlag{Name: "join", Usage: "admin addresses of existing nodes, comma-separated"},
			&cli.StringSliceFlag{Name: "label", Usage: "node label k=v (e.g. zone=a); repeatable"},
			&cli.DurationFlag{Name: "retention-age", Value: 7 * 24 * time.Hour, Usage: "purge served binlog files whose last transaction is older (0 keeps all)"},
			&cli.Uint64Flag{Name: "retention-bytes", Usage: "purge the oldest served files while an upstream holds more bytes (0 = no limit)"},
			&cli.Uint64Flag{Name: "segment-size", Usage: "bytes at which segment files roll (default 268435456, 256 MiB)"},
			&cli.DurationFlag{Name: "node-down-after", Usage: "re-create the replicas of a node that has not answered for this long (default 60s)"},
			&cli.IntFlag{Name: "max-connections", Usage: "client connections to the MySQL port at most; more get error 1040 (default 10000)"},
			&cli.IntFlag{Name: "max-user-connections", Usage: "connections per replica user at most; more get error 1203 (default 0: no limit)"},
			&cli.Int64Flag{Name: "max-allowed-packet", Usage: "largest client packet in bytes; a larger one is refused with error 1153 (default 67108864)"},
			&cli.DurationFlag{Name: "idle-timeout", Usage: "close sessions that send nothing for this long while not dumping (default 8h)"},
			&cli.StringFlag{Name: "allow-ips", Usage: "comma-separated client addresses and CIDR networks accepted; others get error 1130 (default: all)"},
			&cli.StringFlag{Name: "mysql-tls-cert", Usage: "certificate (PEM) that lets replicas connect with TLS (MASTER_SSL=1)"},
			&cli.StringFlag{Name: "mysql-tls-key", Usage: "key of --mysql-tls-cert"},
			&cli.StringFlag{Name: "tls-ca", Usage: "CA of the cluster's node certificates: enables mutual TLS for raft and TLS for the admin API (client certificates from this CA are accepted as admin credentials)"},
			&cli.StringFlag{Name: "tls-cert", Usage: "this node's certificate (PEM), signed by --tls-ca, valid for its raft and admin addresses"},
			&cli.StringFlag{Name: "tls-key", Usage: "key of --tls-cert"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		},
		Action: func(c *cli.Context) error {
			var cfg node.Config
			if f := c.String("config"); f != "" {
				b, err := os.ReadFile(f)
				if err != nil {
					return fmt.Errorf("--config: %w", err)
				}
				if err := yaml.Unmarshal(b, &cfg); err != nil {
					return fmt.Errorf("--config %s: %w", f, err)
				}
			}
			if c.IsSet("node-id") {
				cfg.NodeID = c.Uint64("node-id")
			}
			for flag, dst := range map[string]*string{"data": &cfg.DataDir, "mysql-addr": &cfg.MySQLAddr, "admin-addr": &cfg.AdminAddr, "raft-addr": &cfg.RaftAddr, "allow-ips": &cfg.AllowIPs,
				"mysql-tls-cert": &cfg.MySQLTLSCert, "mysql-tls-key": &cfg.MySQLTLSKey, "tls-ca": &cfg.TLS.CA, "tls-cert": &cfg.TLS.Cert, "tls-key": &cfg.TLS.Key} {
				if c.IsSet(flag) {
					*dst = c.String(flag)
				}
			}
			if c.IsSet("retention-age") || cfg.RetentionAge == 0 {
				cfg.RetentionAge = c.Duration("retention-age")
			}
			if c.IsSet("segment-size") {
				cfg.SegmentSize = c.Uint64("segment-size")
			}
			for flag, dst := range map[string]*int{"max-connections": &cfg.MaxConnections, "max-user-connections": &cfg.MaxUserConnections} {
				if c.IsSet(flag) {
					*dst = c.Int(flag)
				}
			}
			for flag, dst := range map[string]*time.Duration{"idle-timeout": &cfg.IdleTimeout, "node-down-after": &cfg.NodeDownAfter} {
				if c.IsSet(flag) {
					*dst = c.Duration(flag)
				}
			}
			if c.IsSet("max-allowed-packet") {
				cfg.MaxAllowedPacket = c.Int64("max-allowed-packet")
			}
			if c.IsSet("retention-bytes") {
				cfg.RetentionBytes = c.Uint64("retention-bytes")
			}
			if j := c.String("join"); j != "" {
				cfg.Join = strings.Split(j, ",")
			}
			for _, l := range c.StringSlice("label") {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("--label %q is not k=v", l)
				}
				if cfg.Labels == nil {
					cfg.Labels = map[string]string{}
				}
				cfg.Labels[k] = v
			}
			if cfg.AdminToken == "" {
				cfg.AdminToken = os.Getenv("FLOTILLA_TOKEN")
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			// Everything the node writes (data, raft logs, keys) is for its own user.
			syscall.Umask(0o077)
			n, err := node.Start(c.Context, cfg, log)
			if err != nil {
				return err
			}
			return n.Wait(c.Context)
		},
	}
}
