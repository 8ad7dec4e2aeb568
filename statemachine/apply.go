package statemachine

import (
	"encoding/binary"
	"fmt"

	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Applying a command. apply validates the whole command first (the fence: epoch,
// sequence and ordinal; then that every item follows the group's tail), so a
// rejection leaves no trace and is the same on every replica; then newFile,
// appendTxn and dropPending change the served files through segwrite.go.

func rejected(format string, args ...any) sm.Result {
	return sm.Result{Value: ResultRejected, Data: []byte(fmt.Sprintf(format, args...))}
}

func (g *Group) apply(bt *batch, index uint64, cmd []byte) (sm.Result, error) {
	kind, a, err := DecodeCommand(cmd)
	if err != nil {
		// A malformed entry can only come from a buggy proposer; reject it on every
		// replica alike rather than stop the group.
		g.log.Error("rejecting malformed command", "group", g.id, "index", index, "err", err)
		return rejected("malformed command: %v", err), nil
	}
	if kind == KindPurge {
		before, _ := DecodePurge(cmd)
		// Purge reads file entries from the index: earlier entries of this batch
		// (a new file) must be committed first.
		if err := g.commit(bt); err != nil {
			return sm.Result{}, err
		}
		bt.durable = true // segments are deleted: redo must never cross a purge
		return g.purge(bt, before)
	}
	if kind == KindClaimEpoch {
		if err := g.dropPending(bt, index); err != nil {
			return sm.Result{}, err
		}
		// Redo must not cross the truncation of dropped pieces, and the epoch is
		// not in any record.
		bt.durable = true
		g.m.Epoch++
		g.m.Seq = 0
		return sm.Result{Value: ResultOK, Data: binary.BigEndian.AppendUint64(nil, g.m.Epoch)}, nil
	}
	if a.Epoch != g.m.Epoch && !skipFence {
		return rejected("stale epoch %d (current %d)", a.Epoch, g.m.Epoch), nil
	}
	if a.Sequenced && a.Seq != g.m.Seq && !skipFence {
		return rejected("proposal %d of epoch %d, but the group applied %d of it: one before it was dropped or rejected", a.Seq, a.Epoch, g.m.Seq), nil
	}
	if a.PrevOrdinal != g.m.Ordinal && !skipFence {
		return rejected("proposal follows transaction %d but the group holds %d", a.PrevOrdinal, g.m.Ordinal), nil
	}
	// Validate the whole command before changing anything, so a rejection leaves no trace.
	pending := g.m.Pending != nil
	hasFile := g.m.File > 0
	checksummed := g.m.Checksummed
	mysqlGroup := g.m.MySQL
	seen := map[binlog.MySQLGTID]bool{} // MySQL transactions earlier in this command
	var cut binlog.Stream               // an event cut across pieces, as place will see it
	if pending {
		cut.Left = g.m.Pending.EventLeft
	}
	for _, it := range a.Items {
		switch {
		case it.NewFile != nil:
			if pending {
				return rejected("new file while a transaction is incomplete"), nil
			}
			fde, err := binlog.ParseFDE(it.NewFile.FDE)
			if err != nil {
				return rejected("bad Format_description: %v", err), nil
			}
			if hasFile && it.NewFile.MySQL != mysqlGroup {
				return rejected("new file of another flavor than the group's"), nil
			}
			mysqlGroup = mysqlGroup || it.NewFile.MySQL
			hasFile, checksummed = true, fde.Checksummed()
		case it.Txn != nil:
			if !hasFile {
				return rejected("transaction before any file was started"), nil
			}
			if pending == it.Txn.First {
				// A first piece while one is open, or a continuation with none open
				// (e.g. after a ClaimEpoch dropped the open pieces): start over.
				return rejected("piece of %v does not continue the open transaction", it.Txn.GTID), nil
			}
			// Redo reads a transaction's GTID from its first event.
			if it.Txn.First {
				if g, ok := TxnGTID(it.Txn.Events); !ok || g != it.Txn.GTID || mysqlGroup == (it.Txn.Events[4] == binlog.MariaGTIDEvent) {
					return rejected("transaction %v does not begin with its GTID event", it.Txn.GTID), nil
				}
				if mysqlGroup {
					mg, _ := TxnMySQLGTID(it.Txn.Events)
					if g.m.Executed.Contains(mg) || seen[mg] {
						return rejected("transaction %s is already held", mg), nil
					}
					seen[mg] = true
				}
			}
			if err := checkCuts(&cut, it.Txn, checksummed); err != nil {
				return rejected("piece of %v: %v", it.Txn.GTID, err), nil
			}
			pending = !it.Txn.Last
		}
	}
	for _, it := range a.Items {
		if it.NewFile != nil {
			if err := g.newFile(bt, index, it.NewFile); err != nil {
				return sm.Result{}, err
			}
			continue
		}
		if err := g.appendTxn(bt, index, it.Txn); err != nil {
			return sm.Result{}, err
		}
	}
	if a.Sequenced {
		g.m.Seq++
	}
	return sm.Result{Value: ResultOK}, nil
}

// checkCuts checks that place can place a transaction's piece: its events, and the
// parts of an event cut across pieces, follow on from the pieces before it (cut), and a
// transaction's last piece ends at an event boundary.
func checkCuts(cut *binlog.Stream, t *Txn, checksummed bool) error {
	err := cut.Feed(t.Events, func(part []byte, _, last bool) error {
		if last && checksummed && len(part) < binlog.ChecksumLen {
			return fmt.Errorf("an event's last part holds %d bytes, fewer than its checksum", len(part))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if t.Last && cut.Left > 0 {
		return fmt.Errorf("the transaction ends %d bytes before the end of its last event", cut.Left)
	}
	return nil
}

func (g *Group) newFile(bt *batch, index uint64, nf *NewFile) error {
	fde, _ := binlog.ParseFDE(nf.FDE) // validated in apply
	state := g.m.State
	if g.m.File == 0 {
		state = nf.BaseState.Clone()
		g.m.FirstFile, g.m.FileRecords = 1, true
		if nf.MySQL {
			g.m.MySQL, g.m.Executed = true, nf.BaseSet.Clone()
			state = binlog.Position{}
			for src, ivs := range nf.BaseSet {
				last := binlog.MySQLGTID{Source: src, GNO: ivs[len(ivs)-1].End - 1}.Indexed()
				state[last.Domain] = last
			}
		}
		g.m.State = state.Clone()
	} else {
		// Close the current file with a Rotate to the next one.
		rot := binlog.NewRotate(g.m.ServerID, 0, 0, 0, FileName(g.m.File+1), 4, g.m.Checksummed)
		binlog.SetLogPos(rot, uint32(g.m.PartServed+uint64(len(rot))), 0, g.m.Checksummed)
		if err := g.addRecord(bt, recRotate, index, rot); err != nil {
			return err
		}
		if err := g.flushSegment(bt); err != nil {
			return err
		}
		if err := g.seg.Flush(); err != nil { // the file is closed: its stage can go
			return fmt.Errorf("group %d: %w", g.id, err)
		}
		fi := fileInfo{No: g.m.File, UpstreamFile: g.m.UpstreamFile, StartState: g.fileStart(g.m.File),
			Size: g.m.PartServed, SegSize: g.m.PartSeg, Closed: true, LastTS: g.m.LastTS, ClosedAt: g.store.now().Unix(), PartStarts: g.m.PartStarts}
		if g.m.MySQL {
			set, err := g.fileStartSet(g.m.File)
			if err != nil {
				return err
			}
			fi.StartSet = set
		}
		if err := g.putFile(bt, fi); err != nil {
			return err
		}
		g.dirty[g.seg.Name()] = g.seg
		g.seg = nil
		g.unsyncedCloses++
		if prev := g.m.File - 1; prev >= g.m.FirstFile && prev > 0 {
			// Compressed only once the segments closing it are durable: redo may have
			// to read this file's plain form until then.
			g.toCompress = append(g.toCompress, prev)
		}
	}
	g.m.File++
	if g.m.RedoFrom == 0 {
		g.m.RedoFrom = g.m.File
	}
	g.m.FileSize, g.m.SegSize, g.m.PartServed, g.m.PartSeg = 4, 0, 4, 0
	g.m.PartStarts = nil
	g.m.Checksummed = fde.Checksummed()
	g.m.ServerID = nf.ServerID
	g.m.UpstreamFile = nf.UpstreamFile
	f, err := g.store.createSeg(g.segPath(g.m.File))
	if err != nil {
		return fmt.Errorf("group %d: create segment: %w", g.id, err)
	}
	g.seg = f
	g.newFiles = true
	g.startStates[g.m.File] = state.Clone()
	fi := fileInfo{No: g.m.File, UpstreamFile: nf.UpstreamFile, StartState: state}
	if g.m.MySQL {
		fi.StartSet = g.m.Executed.Clone()
		g.startSets[g.m.File] = fi.StartSet
	}
	if err := g.putFile(bt, fi); err != nil {
		return err
	}
	hdr := make([]byte, 0, len(nf.FDE)+64)
	fdeEv := append([]byte(nil), nf.FDE...)
	binlog.SetLogPos(fdeEv, uint32(4+len(fdeEv)), binlog.FlagBinlogInUse, fde.Checksummed())
	hdr = append(hdr, fdeEv...)
	gl := binlog.NewGTIDList(nf.ServerID, 0, 0, state, fde.Checksummed())
	if g.m.MySQL {
		// A MySQL file opens with PREVIOUS_GTIDS.
		gl, err = binlog.NewPreviousGTIDs(nf.ServerID, 0, 0, fi.StartSet, fde.Checksummed())
		if err != nil {
			return fmt.Errorf("group %d: PREVIOUS_GTIDS: %w", g.id, err)
		}
	}
	binlog.SetLogPos(gl, uint32(4+len(fdeEv)+len(gl)), 0, fde.Checksummed())
	hdr = append(hdr, gl...)
	if err := g.addRecord(bt, recHeader, index, hdr); err != nil {
		return err
	}
	g.m.SegSize, g.m.FileSize = g.m.PartSeg, g.m.PartServed
	return nil
}

func (g *Group) appendTxn(bt *batch, index uint64, t *Txn) error {
	if g.m.Pending == nil {
		g.m.Pending = &pendingTxn{GTID: t.GTID, Start: g.m.PartServed, SegStart: g.m.PartSeg}
		if g.m.MySQL {
			mg, _ := TxnMySQLGTID(t.Events) // checked in apply
			g.m.Pending.MySQLGTID = mg.String()
		}
	}
	typ := recPart
	if t.Last {
		typ = recTxn
	}
	if err := g.addRecordPlaced(bt, typ, index, t.Events, true); err != nil {
		return fmt.Errorf("group %d: place %v: %w", g.id, t.GTID, err)
	}
	g.m.Bytes += uint64(len(t.Events))
	if !t.Last {
		return nil
	}
	p := g.m.Pending
	loc := txnLoc{File: g.m.File, Start: p.Start, End: g.m.PartServed, SegStart: p.SegStart, SegEnd: g.m.PartSeg}
	if err := bt.b.Set(txnKey(g.id, t.GTID.Domain, t.GTID.Seq, t.GTID.Server), loc.encode(), nil); err != nil {
		return fmt.Errorf("group %d: index %v: %w", g.id, t.GTID, err)
	}
	if g.m.MySQL {
		if err := g.m.addMySQL(p.MySQLGTID); err != nil {
			return fmt.Errorf("group %d: %w", g.id, err)
		}
	}
	g.m.Pending = nil
	g.m.State[t.GTID.Domain] = t.GTID
	if len(t.Events) >= binlog.HeaderLen {
		g.m.LastTS = binary.LittleEndian.Uint32(t.Events)
	}
	g.m.Ordinal++
	g.m.SegSize, g.m.FileSize = g.m.PartSeg, g.m.PartServed
	return nil
}

// dropPending discards the pieces of an incomplete transaction (a new syncer epoch
// starts the transaction over from the master), as entry index.
//
// The cut is at the dropped transaction's first piece, not at the end of the last
// complete transaction: the recIndex records between the two stay. One of them may
// be the only record of file entries (those of the Update that opened the current
// file and closed the one before, when the transaction began right after the
// file's header): a rebuild from the segments reads file entries nowhere else.
// Records after the cut may carry some too (see the record written below, which
// carries every file's). The cut must never leave the segments without a recIndex record
// describing the last complete transaction (the one after it may have been
// removed with the pieces), or a rebuild could go back before a Sync. So a
// recIndex record for the state after the drop, as of entry index-1, is written
// over the first dropped byte and fsynced before anything is removed: replaying
// entry index from that state gives the same result.
func (g *Group) dropPending(bt *batch, index uint64) error {
	p := g.m.Pending
	if p == nil {
		return nil
	}
	if err := g.flushSegment(bt); err != nil {
		return err
	}
	cut := p.SegStart
	if p.Start != g.m.FileSize || p.SegStart < g.m.SegSize {
		// Only recIndex records (no served byte) lie between the last complete
		// transaction and the next one's first piece. Were that ever not so, cutting
		// at the transaction's end keeps the index right (what a release before 0.50
		// did); failing here instead would stop every replica at this entry.
		g.log.Error("an incomplete transaction does not start right after the last complete one: dropping from the end of that one",
			"group", g.id, "gtid", p.GTID, "start", p.Start, "seg_start", p.SegStart, "file_size", g.m.FileSize, "seg_size", g.m.SegSize)
		cut = g.m.SegSize
	}
	if g.m.SyncedFile == g.m.File && g.m.SyncedSeg > cut {
		// The bytes from cut on are rewritten: a place past it known fsynced could
		// fall inside the new redo record, where Open's check would start mid-record.
		g.m.SyncedSeg = cut
	}
	keepParts := 0 // parts beginning before the cut; later ones hold only pieces
	for _, st := range g.m.PartStarts {
		if st < cut {
			keepParts++
		}
	}
	after := g.m
	after.Applied, after.Pending = index-1, nil
	after.PartSeg, after.PartServed = cut, g.m.FileSize
	after.PartStarts = append([]uint64(nil), g.m.PartStarts[:keepParts]...)
	// The records cut away may be the only carriers of file entries: the one of an
	// Update that opened the current file along with the transaction's first piece,
	// or Open's record with every file's entry (restoreRedo). This record carries
	// them all, as of this entry: the index's, and this Update's newer ones after.
	files, err := g.fileEntries(max(g.m.FirstFile, 1), false)
	if err != nil {
		return err
	}
	_, rec, err := g.encodeRedo(&after, append(files, bt.files...))
	if err != nil {
		return err
	}
	path := g.partPath(g.m.File, keepParts)
	f := g.seg
	if f.Name() != path {
		if h, ok := g.dirty[path]; ok {
			f = h
		} else if f, err = g.store.openSeg(path, 0); err != nil {
			return fmt.Errorf("group %d: reopen segment part: %w", g.id, err)
		}
	}
	off := int64(cut - partStart(after.PartStarts, keepParts))
	_, err = f.WriteAt(rec, off)
	end := off + int64(len(rec))
	if err == nil {
		// truncate syncs: the record is durable before any later part goes.
		err = g.store.truncate(f, end)
	}
	if err != nil {
		if f != g.seg {
			if _, dirty := g.dirty[path]; !dirty {
				f.Close()
			}
		}
		return fmt.Errorf("group %d: drop incomplete transaction in %s: %w", g.id, path, err)
	}
	for k := len(g.m.PartStarts); k > keepParts; k-- {
		p := g.partPath(g.m.File, k)
		if h, ok := g.dirty[p]; ok {
			h.Close()
			delete(g.dirty, p)
		} else if g.seg.Name() == p {
			g.seg.Close()
		}
		if err := g.store.fs.Remove(p); err != nil {
			return fmt.Errorf("group %d: drop segment part: %w", g.id, err)
		}
	}
	g.seg = f
	delete(g.dirty, path)
	g.newFiles = true // part removals: the commit that follows fsyncs the directory
	if err := bt.b.DeleteRange(posKey(g.id, g.m.File, g.m.FileSize), posKey(g.id, g.m.File+1, 0), nil); err != nil {
		return fmt.Errorf("group %d: unindex incomplete transaction: %w", g.id, err)
	}
	g.m.PartStarts = after.PartStarts
	g.m.PartSeg, g.m.PartServed, g.m.Pending = uint64(end)+partStart(after.PartStarts, keepParts), g.m.FileSize, nil
	return nil
}

// fileStart returns the GTID state at the start of a file, cached from the index.
func (g *Group) fileStart(no uint64) binlog.Position {
	if p, ok := g.startStates[no]; ok {
		return p
	}
	fi, err := g.store.fileInfo(g.id, no)
	if err != nil {
		return binlog.Position{}
	}
	g.startStates[no] = fi.StartState
	return fi.StartState
}

// fileStartSet returns the MySQL GTID set at the start of a file, cached from the index.
func (g *Group) fileStartSet(no uint64) (binlog.MySQLSet, error) {
	if s, ok := g.startSets[no]; ok {
		return s, nil
	}
	fi, err := g.store.fileInfo(g.id, no)
	if err != nil {
		return nil, fmt.Errorf("group %d: start GTID set of %s: %w", g.id, FileName(no), err)
	}
	g.startSets[no] = fi.StartSet
	return fi.StartSet, nil
}

// addMySQL records a complete MySQL transaction in the executed set. The GTID was
// printed from a parsed GTID event (gno 1 to 2^63-2), so it parses back.
func (m *meta) addMySQL(gtid string) error {
	set, err := binlog.ParseMySQLSet(gtid)
	if err != nil {
		return fmt.Errorf("pending transaction's MySQL GTID %q: %w", gtid, err)
	}
	if len(set) != 1 {
		return fmt.Errorf("pending transaction's MySQL GTID %q is not one GTID", gtid)
	}
	if m.Executed == nil {
		m.Executed = binlog.MySQLSet{}
	}
	m.Executed.Union(set)
	return nil
}
