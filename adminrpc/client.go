package adminrpc

import (
	"context"
	"crypto/tls"
	"fmt"

	"google.golang.org/grpc"

	"github.com/flotilla-relay/flotilla/internal/secure"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
)

// Client is an admin API connection.
type Client struct {
	adminv1.AdminClient
	conn *grpc.ClientConn
}

// Dial connects to a node's admin address, over TLS when tlsCfg is set. token, when
// not empty, is sent as a bearer token with every call.
func Dial(addr, token string, tlsCfg *tls.Config) (*Client, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(secure.GRPCCredentials(tlsCfg))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("admin address %s: %w", addr, err)
	}
	return &Client{AdminClient: adminv1.NewAdminClient(conn), conn: conn}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false: without TLS the token guards a loopback or
// private admin port; TLS with client certificates is the stronger option.
func (b bearer) RequireTransportSecurity() bool { return false }
