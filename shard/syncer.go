package shard

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/placement"
)

// Proposal bounds: a batch is proposed when it reaches maxBatchBytes or when the
// master has nothing more to send for batchLinger. Transactions larger than
// maxPieceBytes are proposed in pieces, and an event larger than that in parts (see
// addLargeEvent). A piece holds less than maxPieceBytes of events and at most one
// more part (so under 2*maxPieceBytes), and a batch is proposed once it reaches
// maxBatchBytes: no raft entry exceeds maxBatchBytes+2*maxPieceBytes (12 MiB).
const (
	maxBatchBytes = 4 << 20
	maxPieceBytes = 4 << 20
	batchLinger   = 2 * time.Millisecond
	// eventReadAhead is how many events the stream may read ahead of the syncer.
	eventReadAhead = 4
	// servedFileLimit: a served file is closed at the first transaction boundary
	// past it, even inside one master file. Masters roll files at max_binlog_size
	// (at most 1 GiB), but one large transaction can take a file far past that, and
	// binlog coordinates are 32-bit: so a served file passes 4 GiB only if a single
	// transaction is larger than 3 GiB (its log_pos values then wrap, as the master's).
	servedFileLimit = 1 << 30
	// proposeTimeout bounds one proposal's commit.
	proposeTimeout = 20 * time.Second
	// maxInflight and maxInflightBytes bound the proposals of a syncer in raft at
	// once (from cluster version 3; one before): enough for raft to write the next
	// batches while the group applies one, little enough to bound what a leader
	// change throws away. Proposals are at most 4 MiB but for pieces holding an
	// event's part (see maxBatchBytes), so about 16-28 MiB are in flight at most.
	// Batches that a large item ended may exceed maxInflight: see loneInflightBytes.
	maxInflight      = 4
	maxInflightBytes = 16 << 20
	// loneInflightBytes: a batch that a large item ended (see loneItemBytes) may
	// join more than maxInflight proposals in flight while they hold fewer bytes
	// than this (so sixteen proposals fly at most, and the bytes stay under the
	// bound maxInflight's comment gives). Such batches are as small as 1 MiB, and with
	// maxInflight alone a stream of 1 MiB transactions ingested slower (three
	// replicas: 153-178 MB/s against 194-221 with this bound, alternated). A stream
	// of batches of 3 MiB and more stays at maxInflight (four hold 12 MiB), as do
	// batches of small transactions (they grow while the proposals before them
	// commit: group commit). Up to sixteen lone batches of any size in flight did
	// as well on 1 MiB transactions (not alternated with this bound) but not better
	// on the bench's own workload, whose large transactions are 3 MiB and more
	// (three replicas -4% and -3% in two alternations, one replica's fastest ingest
	// -6% in one: within its noise); this bound holds less memory and fewer
	// proposals a leader change throws away.
	loneInflightBytes = 12 << 20
)

// SyncerServerIDBase is added to the group id to form the server_id Flotilla uses
// toward a master for upstreams added before the id was stored with the upstream.
// One id per group means the master itself drops a former leader's stream when the
// new leader connects.
const SyncerServerIDBase = 2_000_000_000

func syncerServerID(u placement.Upstream, gid uint64) uint32 {
	if u.SyncerServerID != 0 {
		return u.SyncerServerID
	}
	return uint32(SyncerServerIDBase + gid)
}

// syncerUUID is the replica UUID a group's syncer gives a MySQL master: the same for
// every leader of the group, so a new leader's dump ends an old leader's lingering one
// (as the same server id does on MariaDB), and unlike another group's or tool's.
func syncerUUID(u placement.Upstream, gid uint64) string {
	h := sha256.Sum256(fmt.Appendf(nil, "flotilla syncer %s %d %d", u.Name, gid, syncerServerID(u, gid)))
	h[6] = h[6]&0x0f | 0x50 // a name-based UUID's version and variant bits
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// syncOnce runs one connection to the master: claim an epoch, read where the group
// stands, ask the master for everything after it, and propose whole transactions.
// delivered reports whether a transaction of this connection committed before it
// ended: the connection worked, so the next one is tried at once (a failure that
// recurs before any progress backs off instead).
func (s *Shard) syncOnce(ctx context.Context) (delivered bool, err error) {
	epoch, err := s.claimEpoch(ctx)
	if err != nil {
		return false, err
	}
	view, err := s.readState(ctx)
	if err != nil {
		return false, err
	}
	u := s.Upstream()
	fl, err := newUpstreamFlavor(u, view)
	if err != nil {
		return false, err
	}
	host, portStr, err := net.SplitHostPort(u.Source)
	if err != nil {
		return false, fmt.Errorf("upstream %s: source %q is not HOST:PORT: %w", u.Name, u.Source, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return false, fmt.Errorf("upstream %s: bad port in %q: %w", u.Name, u.Source, err)
	}
	password, err := s.m.sourcePassword(&u)
	if err != nil {
		return false, err
	}
	tlsCfg, err := sourceTLSConfig(u.Source, u.SourceTLS)
	if err != nil {
		return false, fmt.Errorf("upstream %s: %w", u.Name, err)
	}
	gset, start, err := fl.dumpSet()
	if err != nil {
		return false, fmt.Errorf("upstream %s: GTID position %q: %w", u.Name, start, err)
	}
	if s.silenceSource != u.Source {
		// What the probes learnt is about one master.
		s.stalledOn, s.unserved, s.silenceSource = "", "", u.Source
	}
	w := newLinkWatch()
	src, semi, err := s.openSource(ctx, u, tlsCfg, host, uint16(port), password, gset, w)
	if err != nil {
		var me *mysql.MyError
		if errors.As(err, &me) && !slices.Contains(masterDownCodes, me.Code) || errors.Is(err, errSemiSyncOff) || errors.Is(err, errUnsafeAuth) {
			// The master answered (a wrong password, too many connections): it is
			// up, and no reason to switch to a candidate (see masterDownCodes).
			return false, fmt.Errorf("connect to master %s: %w", u.Source, err)
		}
		return false, fmt.Errorf("%w: connect to master %s: %w", errSourceDown, u.Source, err)
	}
	defer src.close()
	streamedAt := w.at(time.Now())
	w.streaming()
	zctx, stopZombies := context.WithCancel(ctx)
	defer stopZombies()
	go s.endZombieDumps(zctx, w, streamedAt, func(ctx context.Context) (*client.Conn, error) {
		return dialProbe(ctx, net.JoinHostPort(host, portStr), u.User, password, tlsCfg)
	})
	s.log.Info("pulling binlog from master", "source", u.Source, "flavor", u.Flavor, "from_gtid", start, "epoch", epoch, "semi_sync", semi != nil)
	s.updateStatus(func(st *SyncStatus) {
		st.Connected, st.MasterFile, st.SemiSync, st.Selection = true, view.Upstream, semi != nil, ""
		st.Busy, st.PendingBytes = false, 0 // whatever a previous connection left in flight is abandoned
	})

	p := &pipeline{s: s, raft: s.m.nh, epoch: epoch, maxBatch: maxBatchBytes, maxPiece: maxPieceBytes, maxFile: s.m.servedFileSize,
		fileBytes: view.FileSize, proposed: view.Ordinal, fl: fl,
		upstreamFile: view.Upstream, fileServerID: view.ServerID, hasFile: view.HasFile, semi: semi}
	defer func() {
		delivered = p.delivered
		s.log.Info("binlog stream from master closed", "epoch", epoch, "proposals", p.seq+p.unsequenced, "overlapped", p.overlapped)
	}()
	var quiet silence
	probe := func(ctx context.Context) (string, error) {
		return s.masterExecuted(ctx, fl, net.JoinHostPort(host, portStr), u.User, password, tlsCfg)
	}
	for {
		if ctx.Err() == nil && (len(p.pending) == 0 || !p.pending[0].committed()) {
			// Events already read need no wait, so no timer: a context with a
			// deadline for each event (a timer, a channel, three allocations) was
			// most of the syncer's own CPU in a burst of small transactions. (With a
			// commit to collect, or the syncer stopped, the wait below returns at
			// once and deals with it.)
			n, err := p.drain(ctx, src)
			if err != nil {
				return false, err
			}
			if n > 0 {
				if n < drainBatch && p.cur == nil && len(p.items) > 0 {
					// Group commit, as below: a transaction ended and nothing
					// more is here yet.
					if err := p.flush(ctx, false); err != nil {
						return false, err
					}
				}
				continue
			}
		}
		idle := len(p.items) == 0 && len(p.pending) == 0
		wait, base := batchLinger, ctx
		if idle {
			wait = s.silenceProbe()
		}
		if len(p.pending) > 0 {
			// Read on while the proposal commits; its commit ends the wait.
			wait, base = s.silenceProbe(), p.pending[0].wake
		}
		evctx, cancel := context.WithTimeout(base, wait)
		raw, err := src.next(evctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.Canceled) && len(p.pending) > 0 && p.pending[0].committed() {
				// Collect the commit and propose what arrived meanwhile.
				if err := p.complete(ctx); err != nil {
					return false, err
				}
				if err := p.flush(ctx, false); err != nil {
					return false, err
				}
				continue
			}
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				if idle && p.heartbeatGap > 0 && w.idle() >= max(s.silenceProbe(), 3*p.heartbeatGap) {
					// A master that sent heartbeats and stopped: the link is dead.
					return false, fmt.Errorf("read from master %s: no heartbeat or event for %s", u.Source, w.idle().Round(time.Second))
				}
				if idle {
					if err := s.checkSilence(ctx, &quiet, w, fl, probe); err != nil {
						return false, fmt.Errorf("master %s: %w", u.Source, err)
					}
					continue
				}
				if err := p.flush(ctx, false); err != nil {
					return false, err
				}
				continue
			}
			err = fmt.Errorf("read from master %s: %w", u.Source, err)
			// The proposals in flight are decided within proposeTimeout: collect
			// them, so what committed counts as delivered (the next attempt is then
			// not held back) and a semi-sync master hears of it if it still listens.
			for ctx.Err() == nil && len(p.pending) > 0 {
				if cerr := p.complete(ctx); cerr != nil {
					err = errors.Join(err, cerr)
					break
				}
			}
			return false, err
		}
		if err := p.handle(ctx, raw); err != nil {
			return false, err
		}
		p.release(src, raw)
		if p.batchBytes >= p.maxBatch || p.lone {
			if err := p.flush(ctx, true); err != nil {
				return false, err
			}
		}
		// Group commit: a transaction just completed and nothing more has arrived
		// from the master: propose now instead of lingering (a lone commit reaches
		// replicas one linger sooner). While a proposal commits, the batch grows
		// instead, and is proposed when that commit arrives.
		if p.cur == nil && len(p.items) > 0 {
			n, err := p.drain(ctx, src)
			if err != nil {
				return false, err
			}
			if n == 0 {
				if err := p.flush(ctx, false); err != nil {
					return false, err
				}
			}
		}
	}
}

// openSource starts the dump with Flotilla's own stream (dumpStream), a semi-sync
// replica's when the upstream allows it (--semi-sync on, or auto) and the master has
// semi-sync on, in which case it is returned as semi too. (go-mysql's BinlogSyncer
// did the plain dumps once: its 64 KiB read buffer, fixed, was a sixth of an idle
// group's memory.)
func (s *Shard) openSource(ctx context.Context, u placement.Upstream, tlsCfg *tls.Config, host string, port uint16,
	password string, gset mysql.GTIDSet, w *linkWatch) (eventSource, *dumpStream, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
	st, err := openDumpStream(ctx, dumpConfig{addr: addr, user: u.User, password: password, tls: tlsCfg, serverID: syncerServerID(u, s.gid),
		mysqlFlavor: u.Flavor == "mysql", gset: gset, heartbeat: masterHeartbeat(s.silenceProbe()), watch: w, semiSync: u.SemiSync == "on" || u.SemiSync == "auto",
		uuid: syncerUUID(u, s.gid), large: &s.m.pieceBufs, readers: &s.m.streamReaders})
	if err != nil {
		return nil, nil, err
	}
	if !st.semi {
		if u.SemiSync == "on" {
			st.close()
			return nil, nil, fmt.Errorf("%w: upstream %s asks for semi-sync (--semi-sync on): turn rpl_semi_sync_master_enabled on, or set the upstream's semi-sync to auto", errSemiSyncOff, u.Name)
		}
		return st, nil, nil // a plain replica
	}
	return st, st, nil
}

// masterDownCodes are the MySQL errors of a master that answers but is going away
// (shutting down): for automatic source selection it is down. Other answers (too
// many connections, a blocked host, a wrong password) come from a master that still
// takes writes: switching away from it would fork the history.
var masterDownCodes = []uint16{mysql.ER_SERVER_SHUTDOWN}

// errSemiSyncOff: the upstream wants semi-sync and the master has it off.
var errSemiSyncOff = errors.New("the master has semi-sync off")
