package shard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

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

// ErrUnavailable marks a switch that could not be decided now (the master could not
// be reached, this node does not lead the group): retrying may succeed.
var ErrUnavailable = errors.New("unavailable")

// errSourceDown marks a syncer attempt that could not reach the master at all.
var errSourceDown = errors.New("master unreachable")

// checkQueryTimeout bounds each query of a switch's checks (a stalled master must
// not hold the group's leader).
const checkQueryTimeout = 30 * time.Second

// CheckSource connects to addr with the upstream's credentials and checks it as the
// continuation of the group's history. Only the group's leader checks: it holds the
// group's latest state. With writable, a master that is read-only or still
// replicating (not promoted) is reported as such without reading its binary log.
func (s *Shard) CheckSource(ctx context.Context, addr string, writable bool) (Continuity, error) {
	u := s.Upstream()
	if !s.IsLeader() {
		return Continuity{}, fmt.Errorf("%w: node %d does not lead upstream %s's group (a leader change?): retry", ErrUnavailable, s.m.nodeID, u.Name)
	}
	g, ok := s.Group()
	if !ok {
		return Continuity{}, fmt.Errorf("%w: upstream %s: group %d is not open on this node", ErrUnavailable, u.Name, s.gid)
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
	c, err := connectMaster(cctx, addr, u.User, password, tlsCfg, 5*time.Second, func(c *client.Conn) error {
		c.ReadTimeout, c.WriteTimeout = checkQueryTimeout, checkQueryTimeout
		return nil
	})
	ccancel()
	if err != nil {
		return Continuity{}, fmt.Errorf("%w: cannot connect to %s as user %q: %w", ErrUnavailable, addr, u.User, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() }) // a cancelled check ends its query
	defer stop()
	v, err := readSourceView(c, addr, u.Flavor)
	if isMaria := strings.Contains(strings.ToLower(v.version), "mariadb"); v.version != "" && isMaria != (u.Flavor != "mysql") {
		return Continuity{}, fmt.Errorf("%s runs %s, but upstream %s is a %s master", addr, v.version, u.Name, u.Flavor)
	}
	if err != nil {
		return Continuity{}, err
	}
	if lb, err := queryString(c, addr, "SELECT @@log_bin"); err != nil {
		return Continuity{}, err
	} else if lb != "1" {
		return Continuity{}, fmt.Errorf("%s has binary logging off: it cannot be a master", addr)
	}
	if v.checksum != "CRC32" && v.checksum != "NONE" {
		return Continuity{}, fmt.Errorf("%s has binlog_checksum=%s: Flotilla supports CRC32 and NONE", addr, v.checksum)
	}
	if v.serverID == syncerServerID(u, s.gid) {
		return Continuity{}, fmt.Errorf("%s has server_id %d, the one Flotilla uses toward the upstream's master", addr, v.serverID)
	}
	if u.SemiSync == "on" && !semiSyncOffered(c) {
		return Continuity{}, fmt.Errorf("%s has semi-sync off but upstream %s requires it (--semi-sync on): turn rpl_semi_sync_master_enabled on there first", addr, u.Name)
	}
	if writable && (v.readOnly || v.replicating || v.replicationUnknown) {
		return Continuity{Source: addr, ReadOnly: v.readOnly, Replicating: v.replicating, ReplicationUnknown: v.replicationUnknown}, nil
	}
	cont, err := checkContinuity(ctx, c, addr, v, g)
	cont.Replicating, cont.ReplicationUnknown, cont.view = v.replicating, v.replicationUnknown, v
	return cont, err
}

// Repoint makes addr the upstream's master after a failover, once CheckSource finds
// it a valid continuation; with force it proceeds despite errant GTIDs, recording
// them (never despite missing ones: the new master could not serve the group's
// position) and despite a master that still replicates. The check runs twice: first
// with the syncer running (a mistaken repoint costs the master nothing), then with
// the syncer stopped and fenced, so the group's state cannot move between the check
// and the switch. Replicas are never reconfigured: the syncer
// reconnects to addr and the group's history continues in a new served file.
func (s *Shard) Repoint(ctx context.Context, addr string, force bool) (Continuity, error) {
	u := s.Upstream()
	if addr == u.Source {
		return Continuity{}, fmt.Errorf("upstream %s already has source %s", u.Name, addr)
	}
	if !s.IsLeader() {
		return Continuity{}, fmt.Errorf("%w: node %d does not lead upstream %s's group (a leader change?): retry", ErrUnavailable, s.m.nodeID, u.Name)
	}
	// Check once while the syncer still runs (a mistaken repoint must not stall a
	// live semi-sync master), then again with the syncer held and fenced.
	cont, err := s.CheckSource(ctx, addr, false)
	if err == nil {
		err = refuseSwitch(cont, force)
	}
	if err != nil {
		return cont, err
	}
	resume, epoch, err := s.holdSyncer(ctx)
	if err != nil {
		return Continuity{}, err
	}
	defer resume()
	if cont, err = s.CheckSource(ctx, addr, false); err == nil {
		err = refuseSwitch(cont, force)
	}
	if err != nil {
		return cont, err
	}
	problem := cont.Problem()
	if cont.Replicating {
		problem = strings.TrimPrefix(problem+"; "+addr+" still replicates", "; ")
	}
	if cont.ReplicationUnknown {
		problem = strings.TrimPrefix(problem+"; "+addr+" would not say whether it still replicates", "; ")
	}
	how := "repoint"
	if problem != "" {
		how = "forced"
	}
	if err := s.stillFenced(ctx, epoch); err != nil {
		return cont, err
	}
	return cont, s.switchSource(ctx, u, addr, "upstream repoint", how, problem, cont)
}

// refuseSwitch says why a repoint to a master checked as cont may not go ahead.
func refuseSwitch(cont Continuity, force bool) error {
	problem := cont.Problem()
	switch {
	case len(cont.Missing) > 0:
		return fmt.Errorf("%w: %s; not even --force switches: the new master could not serve the group's position", ErrNotContinuation, problem)
	case problem != "" && !force:
		return fmt.Errorf("%w: %s; repoint with --force to switch anyway", ErrNotContinuation, problem)
	case cont.Replicating && !force:
		return fmt.Errorf("%w: %s still replicates (it was not promoted, or it follows Flotilla): stop and reset its replication first, or repoint with --force", ErrNotContinuation, cont.Source)
	case cont.ReplicationUnknown && !force:
		return fmt.Errorf("%w: %s would not say whether it still replicates (SHOW SLAVE STATUS refused): grant the upstream's user SLAVE MONITOR (REPLICATION CLIENT on MySQL), or repoint with --force", ErrNotContinuation, cont.Source)
	}
	return nil
}

// holdSyncer stops this leader's syncer and fences it (a new epoch, returned: a
// proposal of the stopped syncer still in flight is rejected if it was not applied
// yet), until the returned function lets it run again.
func (s *Shard) holdSyncer(ctx context.Context) (func(), uint64, error) {
	s.mu.Lock()
	s.held++
	s.mu.Unlock()
	resume := func() {
		s.mu.Lock()
		s.held--
		s.mu.Unlock()
		s.poke()
	}
	s.poke()
	active := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.active
	}
	for deadline := time.Now().Add(30 * time.Second); active(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			resume()
			return nil, 0, fmt.Errorf("%w: the syncer of upstream %s did not stop", ErrUnavailable, s.Upstream().Name)
		}
	}
	epoch, err := s.claimEpoch(ctx)
	if err != nil {
		resume()
		return nil, 0, fmt.Errorf("%w: fence the syncer of upstream %s: %w", ErrUnavailable, s.Upstream().Name, err)
	}
	return resume, epoch, nil
}

// stillFenced checks, right before a switch, that this node still leads the group
// and no syncer claimed the group since the fence at epoch (a new leader's would
// have): the group's state is still the one checked.
func (s *Shard) stillFenced(ctx context.Context, epoch uint64) error {
	view, err := s.readState(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if !s.IsLeader() || view.Epoch != epoch {
		return fmt.Errorf("%w: the group's leadership changed during the checks (epoch %d, fenced at %d): retry", ErrUnavailable, view.Epoch, epoch)
	}
	return nil
}

// switchSource records the switch to addr in the metadata, with the new master's
// identity (replicas are shown its server_id from then on), and restarts the syncer
// on it.
func (s *Shard) switchSource(ctx context.Context, u placement.Upstream, addr, reason, how, warning string, cont Continuity) error {
	if s.m.switcher == nil {
		return errors.New("this node cannot record source switches")
	}
	sw := placement.SourceSwitch{At: time.Now().UTC(), From: u.Source, To: addr, Reason: reason, Forced: how == "forced", Warning: warning,
		ServerID: cont.view.serverID, Version: cont.view.version, BinlogChecksum: cont.view.checksum}
	if u.Flavor != "mysql" {
		d := cont.view.domainID
		sw.DomainID = &d
	}
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
		s.log.Info("source switched", "from", u.Source, "to", addr, "reason", reason, "transactions_ahead", cont.Ahead)
	}
	s.m.metrics.SourceSwitched(u.Name, how)
	s.mu.Lock()
	sw.Apply(&s.upstream)
	s.mu.Unlock()
	s.updateStatus(func(st *SyncStatus) { st.Selection = "" })
	s.poke()
	return nil
}

// selectSource, after the source has been unreachable for down, switches to the
// first candidate that is writable, not replicating, and a valid continuation; with
// none it says why in status and the syncer tries again after its next failed
// attempt.
func (s *Shard) selectSource(ctx context.Context, u placement.Upstream, down time.Duration) bool {
	// Fence what the failed connection may have left in flight, so the group's
	// state cannot move after the checks.
	epoch, err := s.claimEpoch(ctx)
	if err != nil {
		s.updateStatus(func(st *SyncStatus) {
			st.Selection = "cannot fence the group's syncer to check candidates: " + err.Error()
		})
		return false
	}
	var why []string
candidates:
	for _, cand := range u.Candidates {
		if cand == u.Source {
			continue
		}
		cont, err := s.CheckSource(ctx, cand, true)
		switch {
		case err != nil:
			why = append(why, err.Error())
		case cont.ReadOnly:
			why = append(why, cand+" has read_only=ON (not promoted)")
		case cont.Replicating:
			why = append(why, cand+" still replicates (not promoted: stop and reset its replication)")
		case cont.ReplicationUnknown:
			why = append(why, cand+": cannot tell whether it still replicates (SHOW SLAVE STATUS refused: grant the upstream's user SLAVE MONITOR, or REPLICATION CLIENT on MySQL)")
		case cont.Problem() != "":
			why = append(why, cont.Problem())
		default:
			reason := fmt.Sprintf("automatic: source %s unreachable for %s", u.Source, down.Round(time.Second))
			if err := s.stillFenced(ctx, epoch); err != nil {
				why = append(why, err.Error())
				break candidates
			}
			if err := s.switchSource(ctx, u, cand, reason, "automatic", "", cont); err != nil {
				why = append(why, err.Error())
				continue
			}
			return true
		}
	}
	if ctx.Err() != nil {
		return false // stopped meanwhile (a hold, lost leadership): nothing to report
	}
	msg := fmt.Sprintf("source %s unreachable for %s; no candidate can take over", u.Source, down.Round(time.Second))
	if len(why) > 0 {
		msg += ": " + strings.Join(why, "; ")
	}
	s.log.Warn("automatic source selection found no valid candidate", "detail", msg)
	s.updateStatus(func(st *SyncStatus) { st.Selection = msg })
	return false
}
