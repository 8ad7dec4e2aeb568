package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla-relay/flotilla/internal/secure"
	clusterv1 "github.com/flotilla-relay/flotilla/proto/clusterv1"
)

// call runs f against the Cluster service at addr with the admin token, if any.
func call(ctx context.Context, addr, token string, tlsCfg *tls.Config, f func(context.Context, clusterv1.ClusterClient) error) error {
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(secure.GRPCCredentials(tlsCfg)))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer c.Close()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return f(ctx, clusterv1.NewClusterClient(c))
}

// Join asks the members at addrs, in turn and until ctx ends, to admit this node, and
// returns the identity of the cluster it joined.
func Join(ctx context.Context, addrs []string, token string, tlsCfg *tls.Config, req *clusterv1.JoinRequest) (Identity, error) {
	var last error
	for {
		for _, addr := range addrs {
			actx, cancel := context.WithTimeout(ctx, 40*time.Second)
			var resp *clusterv1.JoinResponse
			err := call(actx, addr, token, tlsCfg, func(ctx context.Context, c clusterv1.ClusterClient) error {
				var err error
				resp, err = c.Join(ctx, req)
				return err
			})
			cancel()
			if err == nil {
				id := Identity{ClusterID: resp.ClusterId, Secret: resp.Secret, DeploymentID: resp.DeploymentId,
					Joined: true, MetaObserver: !resp.Voter}
				for _, k := range resp.NodeKeys {
					id.NodeKeys = append(id.NodeKeys, NodeKey{Gen: k.Gen, Key: k.Key})
				}
				id.ActiveNodeKey = resp.ActiveNodeKey
				return id, nil
			}
			last = fmt.Errorf("%s: %w", addr, err)
			if c := status.Code(err); c == codes.AlreadyExists || c == codes.Unauthenticated || c == codes.InvalidArgument || c == codes.FailedPrecondition {
				return Identity{}, fmt.Errorf("join refused by %w", last)
			}
		}
		select {
		case <-ctx.Done():
			return Identity{}, fmt.Errorf("no member at %s admitted this node: %w", strings.Join(addrs, ","), last)
		case <-time.After(time.Second):
		}
	}
}

// AskIdentity returns the cluster id of the node at addr.
func AskIdentity(ctx context.Context, addr string, tlsCfg *tls.Config) (string, error) {
	var id string
	err := call(ctx, addr, "", tlsCfg, func(ctx context.Context, c clusterv1.ClusterClient) error {
		resp, err := c.Identity(ctx, &clusterv1.IdentityRequest{})
		if err != nil {
			return err
		}
		id = resp.ClusterId
		return nil
	})
	return id, err
}
