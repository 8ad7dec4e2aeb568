package adminrpc

import (
	"context"
	"errors"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla-relay/flotilla/placement"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	"github.com/flotilla-relay/flotilla/shard"
)

// RepointUpstream switches an upstream to a new master after a failover, on the node
// leading its group, once the new master is found to continue the group's history
// (or with force).
func (s *Server) RepointUpstream(ctx context.Context, r *adminv1.RepointUpstreamRequest) (*adminv1.Upstream, error) {
	if _, _, err := net.SplitHostPort(r.Source); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "--source %q is not HOST:PORT", r.Source)
	}
	_, u, err := s.upstream(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	sh, ok := s.Shards.Shard(u.GroupID)
	if !ok || !sh.IsLeader() {
		return forwardToLeader(ctx, s, u, "repoint", func(ctx context.Context, c *Client) (*adminv1.Upstream, error) { return c.RepointUpstream(ctx, r) })
	}
	cont, err := sh.Repoint(ctx, r.Source, r.Force)
	if err != nil {
		var re *placement.RefusedError
		switch {
		case errors.Is(err, shard.ErrUnavailable):
			return nil, status.Error(codes.Unavailable, err.Error())
		case errors.As(err, &re):
			return nil, status.Error(codes.Aborted, err.Error())
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	s.Log.Info("upstream repointed", "upstream", r.Name, "source", r.Source, "forced", cont.Problem() != "", "transactions_ahead", cont.Ahead)
	_, nu, err := s.upstream(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	return toProto(nu), nil
}

// SetCandidates replaces an upstream's candidate sources.
func (s *Server) SetCandidates(ctx context.Context, r *adminv1.SetCandidatesRequest) (*adminv1.Upstream, error) {
	for _, c := range r.Candidates {
		if _, _, err := net.SplitHostPort(c); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "candidate %q is not HOST:PORT", c)
		}
	}
	d, err := parseDownAfter(r.SourceDownAfter)
	if err != nil {
		return nil, err
	}
	if err := s.Meta.SetCandidates(ctx, r.Name, r.Candidates, d, placement.Note("upstream %s: candidates set to %v", r.Name, r.Candidates)); err != nil {
		return nil, metaErr(err)
	}
	_, u, err := s.upstream(ctx, r.Name)
	if err != nil {
		return nil, err
	}
	return toProto(u), nil
}

// parseDownAfter parses --source-down-after ("" is the default).
func parseDownAfter(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second {
		return 0, status.Errorf(codes.InvalidArgument, "--source-down-after %q: give a duration of at least 1s, e.g. 10s", v)
	}
	return d, nil
}
