package placement

import (
	"context"
	"fmt"
	"net"
	"slices"
	"time"

	sm "github.com/lni/dragonboat/v3/statemachine"
)

// DefaultSourceDownAfter is how long an upstream's source may be unreachable before
// Flotilla switches to a candidate source (Upstream.SourceDownAfter 0).
const DefaultSourceDownAfter = 10 * time.Second

// maxSwitches bounds Upstream.Switches: the latest are what an operator reads.
const maxSwitches = 20

// SourceSwitch records one change of an upstream's master, by `upstream repoint` or
// by automatic selection among its candidates.
type SourceSwitch struct {
	// At is the proposer's clock (applying a command must not read the clock).
	At   time.Time `json:"at"`
	From string    `json:"from"`
	To   string    `json:"to"`
	// Reason says who switched and why (repoint, or the automatic selection with how
	// long the old source was down).
	Reason string `json:"reason"`
	// Forced: the continuity checks failed and the operator proceeded with --force;
	// Warning is what they found.
	Forced  bool   `json:"forced,omitempty"`
	Warning string `json:"warning,omitempty"`
	// ServerID, Version and BinlogChecksum describe the new master (0 and empty:
	// unknown, the upstream keeps what it has): replicas are shown its identity.
	ServerID       uint32  `json:"server_id,omitempty"`
	DomainID       *uint32 `json:"domain_id,omitempty"`
	Version        string  `json:"version,omitempty"`
	BinlogChecksum string  `json:"binlog_checksum,omitempty"`
	// FromServerID is the server_id the upstream presented before the switch.
	FromServerID uint32 `json:"from_server_id,omitempty"`
}

// HadServerID reports whether id is the server_id of a master the upstream had
// before one of its recorded switches: a replica's GTID position naming it may
// belong to this upstream.
func (u *Upstream) HadServerID(id uint32) bool {
	if id == 0 {
		return false
	}
	for _, sw := range u.Switches {
		if sw.FromServerID == id || sw.ServerID == id {
			return true
		}
	}
	return false
}

// Apply makes the switch's new master u's source and records the switch.
func (sw SourceSwitch) Apply(u *Upstream) {
	u.Source = sw.To
	sw.FromServerID = u.ServerID
	if sw.DomainID != nil {
		u.DomainID = *sw.DomainID
	}
	if sw.ServerID != 0 {
		u.ServerID = sw.ServerID
	}
	if sw.Version != "" {
		u.Version = sw.Version
	}
	if sw.BinlogChecksum != "" {
		u.BinlogChecksum = sw.BinlogChecksum
	}
	u.Switches = append(u.Switches, sw)
	if len(u.Switches) > maxSwitches {
		u.Switches = slices.Clone(u.Switches[len(u.Switches)-maxSwitches:])
	}
}

// DownAfter is how long the upstream's source may be unreachable before a candidate
// takes over.
func (u *Upstream) DownAfter() time.Duration {
	if u.SourceDownAfter > 0 {
		return u.SourceDownAfter
	}
	return DefaultSourceDownAfter
}

// validateAddr checks a HOST:PORT source or candidate address.
func validateAddr(what, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("%s %q is not HOST:PORT", what, addr)
	}
	return nil
}

// validateCandidates checks an upstream's candidate sources.
func validateCandidates(cands []string) error {
	for i, c := range cands {
		if err := validateAddr("candidate source", c); err != nil {
			return err
		}
		if slices.Contains(cands[:i], c) {
			return fmt.Errorf("candidate source %s is listed twice", c)
		}
	}
	return nil
}

// switchSource applies opSwitchSource: compare and set on the current source, so a
// switch decided on a stale view (two nodes, or an operator racing the automatic
// selection) is refused.
func (s *State) switchSource(c command) sm.Result {
	u, ok := s.Upstreams[c.Name]
	if !ok {
		return notFound("unknown upstream %q (see `flotilla upstream list`)", c.Name)
	}
	sw := c.Switch
	if sw == nil {
		return refuse("no source switch given")
	}
	if err := validateAddr("source", sw.To); err != nil {
		return refuse("%v", err)
	}
	if u.Source != sw.From {
		return refuse("upstream %q's source changed meanwhile (now %s, the switch was decided for %s): check it again", c.Name, u.Source, sw.From)
	}
	sw.Apply(u)
	s.note(c.Note)
	return sm.Result{Value: resultOK}
}

// setCandidates applies opSetCandidates.
func (s *State) setCandidates(c command) sm.Result {
	u, ok := s.Upstreams[c.Name]
	if !ok {
		return notFound("unknown upstream %q (see `flotilla upstream list`)", c.Name)
	}
	if err := validateCandidates(c.Candidates); err != nil {
		return refuse("upstream %q: %v", c.Name, err)
	}
	if c.DownAfter < 0 {
		return refuse("upstream %q: source-down-after must not be negative", c.Name)
	}
	u.Candidates = slices.Clone(c.Candidates)
	if c.DownAfter > 0 {
		u.SourceDownAfter = c.DownAfter
	}
	s.note(c.Note)
	return sm.Result{Value: resultOK}
}

// SwitchSource makes sw.To the upstream's source if its source is still sw.From,
// recording the switch with the upstream and note in the decisions.
func (s *Service) SwitchSource(ctx context.Context, name string, sw SourceSwitch, note string) error {
	_, err := s.propose(ctx, command{Op: opSwitchSource, Name: name, Switch: &sw, Note: note})
	return err
}

// SetCandidates replaces the upstream's candidate sources; a positive downAfter
// replaces its source-down-after too.
func (s *Service) SetCandidates(ctx context.Context, name string, cands []string, downAfter time.Duration, note string) error {
	_, err := s.propose(ctx, command{Op: opSetCandidates, Name: name, Candidates: cands, DownAfter: downAfter, Note: note})
	return err
}
