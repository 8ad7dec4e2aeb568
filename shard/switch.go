package shard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flotilla-relay/flotilla/placement"
)

// SourceSwitcher records a change of an upstream's master in the metadata (compare
// and set on the current source): placement.Service.
type SourceSwitcher interface {
	SwitchSource(ctx context.Context, name string, sw placement.SourceSwitch, note string) error
}

// SetSwitcher lets the group leaders record source switches (repoint and automatic
// selection); without it neither can switch.
func (m *Manager) SetSwitcher(sw SourceSwitcher) { m.switcher = sw }

// ErrNotContinuation marks a master refused as the group's new source: it lacks
// transactions the group holds or has errant ones (see Continuity).
var ErrNotContinuation = errors.New("not a continuation of the upstream's history")

// errSourceDown marks a syncer attempt that could not reach the master at all.
var errSourceDown = errors.New("master unreachable")

// CheckSource connects to addr with the upstream's credentials and checks it as the
// continuation of the group's history. Only the group's leader checks: it holds the
// group's latest state.
func (s *Shard) CheckSource(ctx context.Context, addr string) (Continuity, error) {
	u := s.Upstream()
	if !s.IsLeader() {
		return Continuity{}, fmt.Errorf("node %d does not lead upstream %s's group", s.m.nodeID, u.Name)
	}
	g, ok := s.Group()
	if !ok {
		return Continuity{}, fmt.Errorf("upstream %s: group %d is not open on this node", u.Name, s.gid)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	password, err := s.m.sourcePassword(&u)
	if err != nil {
		return Continuity{}, err
	}
	tlsCfg, err := sourceTLSConfig(addr, u.SourceTLS)
	if err != nil {
		return Continuity{}, fmt.Errorf("upstream %s: %w", u.Name, err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := connectMaster(cctx, addr, u.User, password, tlsCfg, 5*time.Second)
	ccancel()
	if err != nil {
		return Continuity{}, fmt.Errorf("cannot connect to %s as user %q: %w", addr, u.User, err)
	}
	defer c.Close()
	version, err := queryString(c, addr, "SELECT @@version")
	if err != nil {
		return Continuity{}, err
	}
	if isMaria := strings.Contains(strings.ToLower(version), "mariadb"); isMaria != (u.Flavor != "mysql") {
		return Continuity{}, fmt.Errorf("%s runs %s, but upstream %s is a %s master", addr, version, u.Name, u.Flavor)
	}
	if lb, err := queryString(c, addr, "SELECT @@log_bin"); err != nil {
		return Continuity{}, err
	} else if lb != "1" {
		return Continuity{}, fmt.Errorf("%s has binary logging off: it cannot be a master", addr)
	}
	if u.SemiSync == "on" && !semiSyncOffered(c) {
		return Continuity{}, fmt.Errorf("%s has semi-sync off but upstream %s requires it (--semi-sync on): turn rpl_semi_sync_master_enabled on there first", addr, u.Name)
	}
	v, err := readSourceView(c, addr, u.Flavor)
	if err != nil {
		return Continuity{}, err
	}
	if v.serverID == syncerServerID(u, s.gid) {
		return Continuity{}, fmt.Errorf("%s has server_id %d, the one Flotilla uses toward the upstream's master", addr, v.serverID)
	}
	return checkContinuity(ctx, c, addr, v, g)
}

// Repoint makes addr the upstream's master after a failover, once CheckSource finds
// it a valid continuation; with force it proceeds anyway, recording what was wrong.
// Replicas are never reconfigured: the syncer reconnects to addr and the group's
// history continues (a new served file starts with the new master's events).
func (s *Shard) Repoint(ctx context.Context, addr string, force bool) (Continuity, error) {
	u := s.Upstream()
	if addr == u.Source {
		return Continuity{}, fmt.Errorf("upstream %s already has source %s", u.Name, addr)
	}
	cont, err := s.CheckSource(ctx, addr)
	if err != nil {
		return cont, err
	}
	problem := cont.Problem()
	if problem != "" && !force {
		return cont, fmt.Errorf("%w: %s; repoint with --force to switch anyway", ErrNotContinuation, problem)
	}
	how := "repoint"
	if problem != "" {
		how = "forced"
	}
	return cont, s.switchSource(ctx, u, addr, "upstream repoint", how, cont)
}

// switchSource records the switch to addr in the metadata and restarts the syncer
// on it.
func (s *Shard) switchSource(ctx context.Context, u placement.Upstream, addr, reason, how string, cont Continuity) error {
	if s.m.switcher == nil {
		return errors.New("this node cannot record source switches")
	}
	sw := placement.SourceSwitch{At: time.Now().UTC(), From: u.Source, To: addr, Reason: reason, Forced: how == "forced", Warning: cont.Problem()}
	note := placement.Note("upstream %s: source %s -> %s (%s)", u.Name, u.Source, addr, reason)
	if sw.Forced {
		note += " FORCED despite: " + sw.Warning
	}
	if err := s.m.switcher.SwitchSource(ctx, u.Name, sw, note); err != nil {
		return fmt.Errorf("record the switch of upstream %s to %s: %w", u.Name, addr, err)
	}
	if sw.Forced {
		s.log.Warn("source switched despite failed continuity checks (--force)", "from", u.Source, "to", addr, "problem", sw.Warning)
	} else {
		s.log.Info("source switched", "from", u.Source, "to", addr, "reason", reason, "own_transactions", cont.Own)
	}
	s.m.metrics.SourceSwitched(u.Name, how)
	s.mu.Lock()
	s.upstream.Source = addr
	s.upstream.Switches = append(s.upstream.Switches, sw)
	s.mu.Unlock()
	s.updateStatus(func(st *SyncStatus) { st.Selection = "" })
	s.poke()
	return nil
}

// selectSource, after the source has been unreachable for down, switches to the
// first candidate that is writable and a valid continuation; with none it says why
// in status and the syncer tries again after its next failed attempt.
func (s *Shard) selectSource(ctx context.Context, u placement.Upstream, down time.Duration) bool {
	var why []string
	for _, cand := range u.Candidates {
		if cand == u.Source {
			continue
		}
		cont, err := s.CheckSource(ctx, cand)
		switch {
		case err != nil:
			why = append(why, err.Error())
		case cont.ReadOnly:
			why = append(why, cand+" has read_only=ON (not promoted)")
		case cont.Problem() != "":
			why = append(why, cont.Problem())
		default:
			reason := fmt.Sprintf("automatic: source %s unreachable for %s", u.Source, down.Round(time.Second))
			if err := s.switchSource(ctx, u, cand, reason, "automatic", cont); err != nil {
				why = append(why, err.Error())
				continue
			}
			return true
		}
	}
	msg := fmt.Sprintf("source %s unreachable for %s; no candidate can take over", u.Source, down.Round(time.Second))
	if len(why) > 0 {
		msg += ": " + strings.Join(why, "; ")
	}
	s.log.Warn("automatic source selection found no valid candidate", "detail", msg)
	s.updateStatus(func(st *SyncStatus) { st.Selection = msg })
	return false
}
