package shard

import (
	"bytes"
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
	"github.com/lni/dragonboat/v3"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
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
	maxInflight      = 4
	maxInflightBytes = 16 << 20
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

	p := &pipeline{s: s, epoch: epoch, maxBatch: maxBatchBytes, maxPiece: maxPieceBytes, maxFile: s.m.servedFileSize,
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
		if p.batchBytes >= p.maxBatch {
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

// drain handles the events the master has already sent (the stream buffers them), at
// most drainBatch, proposing whenever a batch fills, and returns how many it took.
func (p *pipeline) drain(ctx context.Context, src eventSource) (int, error) {
	if p.ready == nil {
		p.ready = make([][]byte, 0, drainBatch)
	}
	more := src.buffered(p.ready[:0])
	defer clear(more) // the events go back to the source: hold no reference
	for _, raw := range more {
		if err := p.handle(ctx, raw); err != nil {
			return len(more), err
		}
		p.release(src, raw)
		if p.batchBytes >= p.maxBatch {
			if err := p.flush(ctx, true); err != nil {
				return len(more), err
			}
		}
	}
	return len(more), nil
}

// drainBatch is how many events already read drain takes at once: the stream reads
// at most eventReadAhead ahead, so more would rarely be used (each connection of
// each group, idle ones included, keeps the slice).
const drainBatch = 16

// pipeline turns the master's event stream into Append proposals.
type pipeline struct {
	s            *Shard
	epoch        uint64
	fl           upstreamFlavor
	upstreamFile string
	// fileServerID is the server_id of the master that opened the current file: a
	// Format_description of another (the source was switched) starts a new file.
	fileServerID uint32
	hasFile      bool
	pendingName  string
	checksummed  bool

	// maxBatch, maxPiece and maxFile are maxBatchBytes, maxPieceBytes and
	// servedFileLimit (tests lower them).
	maxBatch, maxPiece int
	maxFile            uint64
	// fileBytes is the size of the served file being written, as proposed; fde is
	// the master's current Format_description, which opens a file rolled early.
	fileBytes uint64
	fde       []byte

	items []statemachine.Item
	// ready holds the events drain takes from the source (reused; see drain).
	ready [][]byte
	// chunk: small transactions' buffers are carved from it (see carve), and
	// chunkSize is its size.
	chunk     []byte
	chunkSize int
	// lent: the pipeline's own large buffers the items hold, back to the pool once
	// the items are proposed.
	lent        [][]byte
	batchBytes  int
	batchTxns   uint64
	batchEvents int
	// proposed is the ordinal after every proposal made (committed or in flight).
	proposed uint64
	pending  []inflight
	// sequenced: the proposals carry seq, their place in the epoch, and several
	// may be in flight (inflightBytes of them); otherwise one at a time.
	sequenced     bool
	seq           uint64
	inflightBytes int
	// unsequenced and overlapped count proposals: made before the pipeline was
	// sequenced, and made with another in flight.
	unsequenced, overlapped uint64
	lastTS                  uint32

	cur *openTxn

	// semi is the stream when the syncer is the master's semi-sync replica;
	// batchAck is the master position after the last complete transaction added
	// since the last proposal, acknowledged once that proposal commits.
	semi     *dumpStream
	batchAck *ackPoint
	acked    ackPoint // the last position acknowledged

	// delivered: a transaction of this stream committed (see syncOnce).
	delivered bool
	// heartbeatGap is the longest time seen between two heartbeats with nothing
	// between them (heartbeatAt: the last one, zero after any other event): a
	// master that sends them and falls silent for three such gaps (at least
	// master_silence_probe) is behind a dead link. Until it is known, the probes judge.
	heartbeatAt  time.Time
	heartbeatGap time.Duration
}

// ackPoint is a place in the master's binlog to acknowledge, and when the transaction
// ending there was received (zero for a heartbeat's). Past 4 GiB in one master file
// log_pos wraps and such ACKs no longer release waiting commits (the master then
// times out); they never acknowledge too much.
type ackPoint struct {
	file string
	pos  uint64
	rcv  time.Time
}

// openTxn is the transaction group being received.
type openTxn struct {
	gtid   binlog.GTID
	name   string // the GTID as the master prints it
	events []byte
	first  bool // no piece of it proposed yet
	skip   bool // the group already holds it
}

// ErrCorruptEvent marks an event whose CRC32 does not match its bytes: it was damaged
// between the master's disk and Flotilla. The syncer reconnects and fetches it again;
// nothing of it is stored (Flotilla re-signs the events it stores, so a damaged one
// would otherwise become a valid-looking one).
var ErrCorruptEvent = errors.New("corrupt event from master")

func (p *pipeline) handle(ctx context.Context, raw []byte) error {
	p.batchEvents++
	h, err := binlog.ParseHeader(raw)
	if err != nil {
		return fmt.Errorf("malformed event from master: %w", err)
	}
	if h.Type != binlog.HeartbeatEvent {
		p.heartbeatAt = time.Time{} // the next heartbeat's gap is not a silence
	}
	// Every checksummed event is verified before anything reads it; only the fake
	// Rotates a master makes up for the dump are exempt (they may lack a checksum).
	switch {
	case h.Type == binlog.RotateEvent && (h.Flags&binlog.FlagArtificial != 0 || !p.checksummed):
		// A fake Rotate may or may not carry a checksum; ParseRotate checks its shape.
	case h.Type == binlog.FormatDescription:
		if fde, err := binlog.ParseFDE(raw); err == nil && fde.Checksummed() {
			if err := binlog.VerifyChecksum(raw); err != nil {
				return fmt.Errorf("%w: %v", ErrCorruptEvent, err)
			}
		}
	case p.checksummed:
		if err := binlog.VerifyChecksum(raw); err != nil {
			return fmt.Errorf("%w (master file %s, event at log_pos %d): %v", ErrCorruptEvent, p.upstreamFile, h.LogPos, err)
		}
	}
	switch h.Type {
	case binlog.RotateEvent:
		// Rotates read from the master's file carry a checksum; fake ones may or may
		// not, depending on the server and on when it sends them. The trailer tells.
		ck := binlog.VerifyChecksum(raw) == nil
		name, _, err := binlog.ParseRotate(raw, ck)
		if err != nil {
			return fmt.Errorf("malformed Rotate from master: %w", err)
		}
		p.pendingName = name
		return nil
	case binlog.FormatDescription:
		fde, err := binlog.ParseFDE(raw)
		if err != nil {
			return fmt.Errorf("master's Format_description: %w", err)
		}
		p.checksummed = fde.Checksummed()
		p.fde = append(p.fde[:0], raw...)
		if p.pendingName != "" && (!p.hasFile || p.pendingName != p.upstreamFile || h.ServerID != p.fileServerID) {
			if p.cur != nil {
				p.s.log.Warn("master started a new file inside a transaction; dropping the partial transaction", "gtid", p.cur.name)
				p.cur = nil
			}
			nf := &statemachine.NewFile{ServerID: h.ServerID, UpstreamFile: p.pendingName, FDE: append([]byte(nil), raw...)}
			p.fl.base(nf)
			p.add(statemachine.Item{NewFile: nf}, len(raw), 0)
			p.upstreamFile, p.fileServerID, p.hasFile = p.pendingName, h.ServerID, true
			p.s.updateStatus(func(st *SyncStatus) { st.MasterFile = p.pendingName })
		}
		return nil
	case binlog.HeartbeatEvent, binlog.MariaGTIDListEvent:
		if h.Type == binlog.HeartbeatEvent {
			now := time.Now()
			if !p.heartbeatAt.IsZero() {
				p.heartbeatGap = max(p.heartbeatGap, now.Sub(p.heartbeatAt))
			}
			p.heartbeatAt = now
			if p.cur == nil {
				p.dropChunk() // the master is idle
			}
		}
		// Where the master stands, with nothing of ours in flight: what the group
		// holds goes up to here. A semi-sync master that was waiting for a
		// transaction the group committed after the previous connection broke
		// (the new dump starts after it) hears so now.
		if p.semi != nil && p.cur == nil && len(p.items) == 0 && len(p.pending) == 0 && h.LogPos > 4 &&
			(h.Type != binlog.HeartbeatEvent || bytes.HasPrefix(raw[binlog.HeaderLen:], []byte(p.upstreamFile))) {
			return p.sendAck(&ackPoint{file: p.upstreamFile, pos: uint64(h.LogPos)})
		}
		return nil
	case binlog.BinlogCheckpoint, binlog.StartEncryptionEvnt, binlog.StopEvent, binlog.MySQLPreviousGTIDsEvent:
		return nil
	}
	if gtid, name, ok, err := p.fl.open(raw); ok || err != nil {
		if err != nil {
			return err
		}
		if p.cur != nil {
			return fmt.Errorf("master sent GTID %s before transaction %s ended", name, p.cur.name)
		}
		if !p.hasFile {
			return fmt.Errorf("master sent GTID %s before any Format_description", name)
		}
		held := p.fl.held()
		if !held {
			p.rollIfFull() // a file left full by a previous connection
		}
		p.cur = &openTxn{gtid: gtid, name: name, events: append(p.carve(), raw...), first: true, skip: held}
		return nil
	}
	if p.cur == nil {
		p.s.log.Debug("ignoring event outside a transaction group", "type", h.Type)
		return nil
	}
	if len(raw) > p.maxPiece {
		if err := p.addLargeEvent(ctx, raw); err != nil {
			return err
		}
	} else {
		p.cur.events = append(p.growEvents(p.cur.events, len(raw)), raw...)
	}
	p.lastTS = h.Timestamp
	if p.fl.ends(raw, p.checksummed) {
		t := p.cur
		p.cur = nil
		if p.semi != nil {
			p.batchAck = &ackPoint{file: p.upstreamFile, pos: uint64(h.LogPos), rcv: time.Now()}
		}
		if t.skip {
			p.s.m.pieceBufs.put(t.events) // nothing refers to a skipped transaction's events
			// Held already (committed before this connection): acknowledge at once
			// unless later transactions are waiting for a commit.
			if p.semi != nil && len(p.items) == 0 && len(p.pending) == 0 {
				a := p.batchAck
				p.batchAck = nil
				return p.sendAck(a)
			}
			return nil
		}
		events := p.seal(t.events)
		if dropCommit(t.gtid.Seq) && len(events) > len(raw) {
			events = events[:len(events)-len(raw)] // planted bug (tag chaosbug_partial)
		}
		p.add(statemachine.Item{Txn: &statemachine.Txn{GTID: t.gtid, First: t.first, Last: true, Events: events}}, len(events), 1)
		p.lend(t.events)
		p.fl.done()
		p.rollIfFull()
		return nil
	}
	if len(p.cur.events) >= p.maxPiece {
		t := p.cur
		if t.skip {
			t.events = t.events[:0] // held already: nothing refers to the piece
			return nil
		}
		p.add(statemachine.Item{Txn: &statemachine.Txn{GTID: t.gtid, First: t.first, Events: p.seal(t.events)}}, len(t.events), 0)
		p.lend(t.events)
		// A large transaction: its next piece gets its full size at once rather
		// than growing to it by doubling.
		t.first, t.events = false, p.s.m.pieceBufs.get(p.maxPiece+64<<10)
	}
	return nil
}

// rollIfFull closes the served file early once it passed maxFile (see
// servedFileLimit): at a transaction boundary, right after the transaction that took
// it there, so replicas leave the file at once.
func (p *pipeline) rollIfFull() {
	if p.fileBytes < p.maxFile || p.fde == nil || p.cur != nil {
		return
	}
	p.s.log.Info("served file passed its size limit: starting a new one inside the master's file", "bytes", p.fileBytes, "master_file", p.upstreamFile)
	fh, _ := binlog.ParseHeader(p.fde)
	fde := append([]byte(nil), p.fde...)
	binlog.ClearFDECreated(fde) // the master did not just start: replicas keep their temporary tables
	binlog.SetLogPos(fde, fh.LogPos, 0, p.checksummed)
	nf := &statemachine.NewFile{ServerID: fh.ServerID, UpstreamFile: p.upstreamFile, FDE: fde}
	p.fl.base(nf)
	p.add(statemachine.Item{NewFile: nf}, len(fde), 0)
}

// addLargeEvent adds an event larger than a piece to the open transaction in parts,
// cut where binlog.CutEvent says (the state machine places each part and carries the
// checksum across), proposing as batches fill: no piece, batch or raft entry holds
// the event whole (the stream's read buffer does, once). Parts after the first refer
// to raw rather than copy it; the event's last part is copied to the transaction's
// buffer, for the events after it.
func (p *pipeline) addLargeEvent(ctx context.Context, raw []byte) error {
	t := p.cur
	prev := 0
	for _, c := range binlog.CutEvent(len(raw), p.maxPiece) {
		var events []byte
		if prev == 0 {
			events = append(p.growEvents(t.events, c), raw[:c]...) // after the events before it (the GTID event at least)
			if t.skip {
				p.s.m.pieceBufs.put(events) // nothing refers to it
			} else {
				p.lend(events)
				events = p.seal(events)
			}
		} else {
			events = raw[prev:c:c] // raw is the pipeline's until lent back (see eventSource)
		}
		prev = c
		if !t.skip {
			p.add(statemachine.Item{Txn: &statemachine.Txn{GTID: t.gtid, First: t.first, Events: events}}, len(events), 0)
			t.first = false
		}
		t.events = nil
		if p.batchBytes >= p.maxBatch {
			if err := p.flush(ctx, true); err != nil {
				return err
			}
		}
	}
	t.events = append(p.s.m.pieceBufs.get(len(raw)-prev+4096), raw[prev:]...)
	// Every part is an item now (or none is, skipping): free once they are
	// proposed. Not before: handle still reads raw after this.
	p.lend(raw)
	return nil
}

// Small transactions' buffers are carved from chunks: the first of minTxnChunk
// bytes, each next one twice the size of the last, up to maxTxnChunk.
const (
	minTxnChunk = 4 << 10
	maxTxnChunk = 64 << 10
)

// carve returns an empty buffer for a new transaction: the free room of the current
// chunk, which the transaction keeps if it stays within it (see keep). A small
// transaction took a 4 KiB buffer of its own before: at a hundred thousand
// transactions a second, allocating and clearing those was most of the syncer's CPU.
// A chunk is garbage once the items in it are proposed; the pipeline lets its chunk
// go whenever it has nothing left to commit (see dropChunk), so that an idle group
// keeps none, and a lone transaction costs one small chunk, as before.
func (p *pipeline) carve() []byte {
	if cap(p.chunk)-len(p.chunk) < minTxnChunk/4 {
		p.chunkSize = min(max(2*p.chunkSize, minTxnChunk), maxTxnChunk)
		p.chunk = make([]byte, 0, p.chunkSize)
	}
	return p.chunk[len(p.chunk):len(p.chunk):cap(p.chunk)]
}

// dropChunk lets the chunk go; the next one starts small again.
func (p *pipeline) dropChunk() { p.chunk, p.chunkSize = nil, 0 }

// seal ends the open transaction's claim on its buffer's free room: events go into an
// item as they are (an append to them cannot reach past them), and what follows them
// in the chunk serves the next transaction (see keep). Every item made of the open
// transaction's buffer is sealed: a piece too, should one fit in a chunk.
func (p *pipeline) seal(events []byte) []byte {
	p.keep(events)
	return events[:len(events):len(events)]
}

// keep takes a transaction's bytes out of the chunk's free room when they are still
// in it (an append past the chunk's end moved them out).
func (p *pipeline) keep(events []byte) {
	room := p.chunk[len(p.chunk):cap(p.chunk)]
	if len(events) > 0 && len(room) >= len(events) && &room[0] == &events[0] {
		p.chunk = p.chunk[:len(p.chunk)+len(events)]
	}
}

// growEvents makes room for n more bytes in a transaction's buffer. Past pooledMin
// the transaction is a large one: its buffer becomes a pooled piece's, of a piece's
// full size, rather than doubling on (each doubling a fresh allocation, most of the
// syncer's garbage in a bulk load, and memory touched anew). The buffer is lent with
// the transaction, and goes back to the pool once proposed.
func (p *pipeline) growEvents(events []byte, n int) []byte {
	need := len(events) + n
	if need <= cap(events) || need < pooledMin {
		return events
	}
	grown := append(p.s.m.pieceBufs.get(max(need, p.maxPiece+64<<10)), events...)
	p.s.m.pieceBufs.put(events) // the open transaction's alone: nothing else refers to it
	return grown
}

// release gives a handled event's bytes back to src unless the open transaction
// refers to them: handle copies every event but one larger than a piece, whose parts
// are proposed by reference (see addLargeEvent).
func (p *pipeline) release(src eventSource, raw []byte) {
	if len(raw) <= p.maxPiece {
		src.release(raw)
	}
}

// lend records that buf, a buffer of the pipeline's own, is an item's until the
// next proposal is made, and may go back to the pool then.
func (p *pipeline) lend(buf []byte) {
	if cap(buf) >= pooledMin {
		p.lent = append(p.lent, buf)
	}
}

func (p *pipeline) add(it statemachine.Item, bytes int, txns uint64) {
	if it.NewFile != nil {
		p.fileBytes = 4 + uint64(bytes)
	} else {
		p.fileBytes += uint64(bytes)
	}
	if len(p.items) == 0 {
		// Something to commit: until it is, the group trails the master (lag).
		p.s.updateStatus(func(st *SyncStatus) { st.Busy = true })
	}
	p.items = append(p.items, it)
	p.batchBytes += bytes
	p.batchTxns += txns
}

// inflight is a proposed batch waiting for its commit. Ordinals move only with
// complete transactions, so with the ordinal alone in the fence a proposal behind a
// piece of a large transaction could commit even if that piece were dropped: a syncer
// has several proposals in flight only when they are sequenced (each names its place
// in the epoch, and the group rejects every one after a gap), and one otherwise. The
// syncer reads on while they commit: the next batch grows meanwhile (group commit).
type inflight struct {
	began         time.Time
	txns          uint64
	events, bytes int
	lastTS        uint32
	// ack is acknowledged to a semi-sync master once this proposal commits.
	ack *ackPoint
	// wake ends once the result is in result (it also ends with the connection's
	// context: committed tells which); the syncer's read of the master's next event
	// waits on it.
	wake   context.Context
	result chan dragonboat.RequestResult
}

// committed reports whether the proposal's result has arrived.
func (f *inflight) committed() bool { return len(f.result) > 0 }

// flush proposes the batch when raft has room for it (see roomInRaft). Without room,
// full (the batch reached maxBatch) waits for the oldest proposal's commit first;
// otherwise the batch is left to grow, and syncOnce proposes it when that commit
// arrives. A proposal names the ordinal the previous one ends at (and, sequenced, its
// place in the epoch), so if raft drops one, the group rejects those after it (the
// fence): nothing is ever applied out of order or twice. Any failure ends the
// connection: the next attempt claims a new epoch and resumes from what the group
// committed.
func (p *pipeline) flush(ctx context.Context, full bool) error {
	if !p.sequenced && len(p.pending) == 0 && p.s.m.clusterVersion.Load() >= statemachine.SequencedAppendVersion {
		// Every replica checks the sequence now (the cluster version says so). The
		// group's sequence counts sequenced proposals only, so it is at 0 for this
		// epoch; and nothing unsequenced is in flight whose loss the first sequenced
		// proposal could hide.
		p.sequenced = true
	}
	for len(p.items) > 0 && !p.roomInRaft() {
		if !full {
			return nil
		}
		if err := p.complete(ctx); err != nil {
			return err
		}
	}
	if len(p.items) > 0 {
		cmd := (&statemachine.Append{Epoch: p.epoch, PrevOrdinal: p.proposed, Sequenced: p.sequenced, Seq: p.seq, Items: p.items}).AppendEncoded(p.s.m.encBufs.get(p.batchBytes))
		p.s.updateStatus(func(st *SyncStatus) { st.PendingBytes += uint64(p.batchBytes) })
		rs, err := p.propose(ctx, cmd)
		if err != nil {
			return err
		}
		// raft holds a copy of cmd now, and cmd holds the items' bytes.
		p.s.m.encBufs.put(cmd)
		for _, b := range p.lent {
			p.s.m.pieceBufs.put(b)
		}
		clear(p.lent)
		p.lent = p.lent[:0]
		wake, woken := context.WithCancel(ctx)
		f := inflight{began: time.Now(), txns: p.batchTxns, events: p.batchEvents, bytes: p.batchBytes, lastTS: p.lastTS, ack: p.batchAck,
			wake: wake, result: make(chan dragonboat.RequestResult, 1)}
		go func() {
			// dragonboat always delivers a result (at the latest at proposeTimeout);
			// only then may the request state go back to its pool.
			r := <-rs.ResultC()
			rs.Release()
			f.result <- r
			woken()
		}()
		if len(p.pending) > 0 {
			p.overlapped++
			p.s.m.metrics.Overlapped(p.s.Upstream().Name)
		}
		if p.sequenced {
			p.seq++
		} else {
			p.unsequenced++
		}
		p.pending = append(p.pending, f)
		p.batchAck = nil
		p.proposed += p.batchTxns
		p.inflightBytes += p.batchBytes
		p.items, p.batchBytes, p.batchTxns, p.batchEvents = nil, 0, 0, 0
		return nil
	}
	if p.cur == nil {
		p.batchEvents = 0 // heartbeats and the like: nothing to count as ingested
	}
	if len(p.pending) == 0 && p.batchAck != nil {
		// Only transactions the group held already: they are committed.
		a := p.batchAck
		p.batchAck = nil
		if err := p.sendAck(a); err != nil {
			return err
		}
	}
	return nil
}

// propose hands cmd to raft. While its LogDB stalls writes, dragonboat refuses
// proposals (ErrSystemBusy) until the LogDB catches up: that is backpressure, not a
// failure worth a reconnection (which would also start a large transaction over). The
// syncer waits for its oldest proposal in flight, or a moment with none, and tries
// again, for up to proposeTimeout.
func (p *pipeline) propose(ctx context.Context, cmd []byte) (*dragonboat.RequestState, error) {
	deadline := time.Now().Add(proposeTimeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		rs, err := p.s.m.nh.Propose(p.s.m.nh.GetNoOPSession(p.s.gid), cmd, proposeTimeout)
		if err == nil {
			return rs, nil
		}
		if !errors.Is(err, dragonboat.ErrSystemBusy) || time.Now().After(deadline) {
			p.s.m.metrics.Proposed(p.s.Upstream().Name, 0, err)
			return nil, fmt.Errorf("propose to group %d: %w", p.s.gid, err)
		}
		if len(p.pending) > 0 {
			// complete records its own outcome, failure included.
			if err := p.complete(ctx); err != nil {
				return nil, err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// roomInRaft reports whether a proposal may go to raft now: always when none is in
// flight; sequenced, while fewer than maxInflight (and maxInflightBytes) are. The
// pieces of a transaction larger than a batch pipeline too (a bulk load is mostly
// such pieces): in flight, a batch is held a few times over (the syncer's encoding,
// raft's entry), so the byte bound is what keeps a transaction of any size ingesting
// in bounded memory (with dragonboat's in-memory log sized in cmd/flotilla so that
// applied entries do not linger).
func (p *pipeline) roomInRaft() bool {
	if len(p.pending) == 0 {
		return true
	}
	return p.sequenced && len(p.pending) < maxInflight && p.inflightBytes < maxInflightBytes
}

// sendAck acknowledges a to the semi-sync master.
func (p *pipeline) sendAck(a *ackPoint) error {
	if a == nil || p.semi == nil || a.file == p.acked.file && a.pos <= p.acked.pos {
		return nil
	}
	p.acked = *a
	if err := p.semi.ack(a.file, a.pos); err != nil {
		return fmt.Errorf("semi-sync ACK to master: %w", err)
	}
	p.s.updateStatus(func(st *SyncStatus) {
		st.Acks++
		if !a.rcv.IsZero() { // a transaction's, not a heartbeat's
			st.LastAckLatency = time.Since(a.rcv)
		}
	})
	return nil
}

// complete waits for the oldest proposal in flight.
func (p *pipeline) complete(ctx context.Context) error {
	f := p.pending[0]
	p.pending = p.pending[1:]
	p.inflightBytes -= f.bytes
	name := p.s.Upstream().Name
	var r dragonboat.RequestResult
	select {
	case r = <-f.result:
	case <-ctx.Done():
		return ctx.Err()
	}
	if !r.Completed() {
		err := fmt.Errorf("proposal to group %d did not commit (timeout %v, dropped %v, terminated %v, aborted %v)", p.s.gid, r.Timeout(), r.Dropped(), r.Terminated(), r.Aborted())
		p.s.m.metrics.Proposed(name, time.Since(f.began), err)
		return err
	}
	if res := r.GetResult(); res.Value != statemachine.ResultOK {
		err := fmt.Errorf("group %d rejected a proposal: %s", p.s.gid, res.Data)
		p.s.m.metrics.Proposed(name, time.Since(f.began), err)
		return err
	}
	// Only now, with the batch committed by the group's quorum, may a semi-sync
	// master hear that its transactions are safe.
	if f.ack != nil {
		if err := p.sendAck(f.ack); err != nil {
			return err
		}
	}
	// The time until the result was collected: with proposals in flight, at most one
	// batch's reading later than the commit itself.
	p.s.m.metrics.Proposed(name, time.Since(f.began), nil)
	p.s.m.metrics.Ingested(name, f.events, f.bytes, int(f.txns))
	p.delivered = p.delivered || f.txns > 0
	idle := p.cur == nil && len(p.items) == 0 && len(p.pending) == 0
	if idle {
		p.dropChunk() // nothing left to commit: an idle group keeps no chunk
	}
	p.s.updateStatus(func(st *SyncStatus) {
		st.LastEventAt, st.LastEventRcv = time.Unix(int64(f.lastTS), 0), time.Now()
		st.PendingBytes -= min(st.PendingBytes, uint64(f.bytes))
		st.Busy = !idle
	})
	return nil
}
