package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gvfs "github.com/lni/goutils/vfs"
)

// Spare files: payload files written once and overwritten after. On the VM disk
// this was measured on, blocks written for the first time went slower than blocks
// written again (256 MiB of direct writes: 1.4-1.5 GB/s against 1.7-1.9;
// BenchmarkPayloadSave: saves faster into spares, see the README), and every ingested byte
// goes to a payload file first. So the files a log cut frees are kept, up to a
// reserve (Factory.Reserve; zero turns recycling off), and a group's new file is one
// of them renamed: a salted file, whose earlier life's records read as its end (see
// payfile.go). This is pebble's WAL recycling: nothing is written ahead (a filler that
// wrote spares of zeros while the node was quiet was measured and dropped, see the
// README's release 0.48).
//
// Invariants:
//   - A spare is never referred to: a file enters only once its group's log was cut
//     past everything it holds (removeTo), and leaves by a rename to a new salted
//     name, under which only new records are read.
//   - Both directories of a move are synced before anything refers to the moved
//     file: a given file is taken only after settle synced its old directory and
//     then, under its spare name, the spare directory (once per cut), and a start
//     keeps only spare names; a taken one's are in its group's next sync, which
//     precedes the save that first refers to it.
//   - Spares give way to a filling disk: a cut file is kept only while the disk has
//     room to spare (Factory.Room), and the keeper removes spares when it has none.
const (
	spareDir    = "spare"
	spareSuffix = ".spare"
	movedSuffix = ".moved" // given, not yet settled
	// keepCheck is how often the keeper looks at the disk's room.
	keepCheck = 5 * time.Second
)

// movedSpare is a file given to the spares, from the group directory from.
type movedSpare struct{ path, from string }

// spares is a node's reserve of payload files. Its methods are safe for concurrent
// use.
type spares struct {
	fs      gvfs.FS
	dir     string
	minSize int64 // smallest file taken in: a full payload file
	most    int   // spares held at most
	on      *atomic.Bool
	room    func(int64) bool
	log     *slog.Logger
	count   *atomic.Int64 // reported: spares ready

	recycled *atomic.Int64 // reported: new payload files that were spares

	mu    sync.Mutex
	ready []string
	// moved are files given but not yet takeable: their directories are synced by
	// settle first.
	moved []movedSpare
	next  uint64

	stop    chan struct{}
	done    chan struct{}
	started bool
}

// openSpares lists (and cleans) root's spare directory; the keeper starts with
// start.
func openSpares(fs gvfs.FS, root string, fileSize, reserve int64, on *atomic.Bool, room func(int64) bool, log *slog.Logger, count, recycled *atomic.Int64) (*spares, error) {
	// A full file holds fileSize bytes and the record that passed it.
	each := fileSize + min(int64(stageSize), fileSize/16)
	p := &spares{fs: fs, dir: fs.PathJoin(root, spareDir), minSize: fileSize, most: int(reserve / each),
		on: on, room: room, log: log, count: count, recycled: recycled, next: 1, stop: make(chan struct{}), done: make(chan struct{})}
	if p.count == nil {
		p.count = new(atomic.Int64)
	}
	if p.recycled == nil {
		p.recycled = new(atomic.Int64)
	}
	if err := fs.MkdirAll(p.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create spare payload directory %s: %w", p.dir, err)
	}
	if err := syncDir(fs, root); err != nil {
		return nil, err
	}
	names, err := fs.List(p.dir)
	if err != nil {
		return nil, fmt.Errorf("list spare payload directory %s: %w", p.dir, err)
	}
	removed := false
	for _, name := range names {
		path := fs.PathJoin(p.dir, name)
		base, ok := strings.CutSuffix(name, spareSuffix)
		n, err := strconv.ParseUint(base, 16, 64)
		if ok && err == nil {
			p.next = max(p.next, n+1)
			if st, err := fs.Stat(path); err == nil && st.Size() >= fileSize && len(p.ready) < p.most {
				p.ready = append(p.ready, path)
				continue
			}
		}
		// Not a spare (a moved file never settled among them), too small, or more
		// than the reserve now holds.
		if err := fs.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove spare payload file %s: %w", path, err)
		}
		removed = true
	}
	if removed {
		if err := syncDir(fs, p.dir); err != nil {
			return nil, err
		}
	}
	p.count.Store(int64(len(p.ready)))
	return p, nil
}

// start runs the keeper until close.
func (p *spares) start() {
	p.started = true
	go p.keep()
}

// close stops the keeper.
func (p *spares) close() {
	close(p.stop)
	if p.started {
		<-p.done
	}
}

// take returns a spare's path, which the caller renames at once, or "" when there
// is none.
func (p *spares) take() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ready) == 0 {
		return ""
	}
	path := p.ready[len(p.ready)-1]
	p.ready = p.ready[:len(p.ready)-1]
	p.count.Store(int64(len(p.ready)))
	return path
}

// give moves path, a payload file of group directory from that nothing refers to
// any more, into the spares if recycling is on, it is large enough and there is
// room (in the reserve and on the disk); false means the caller removes it. The
// file is taken only after settle(from).
func (p *spares) give(path, from string, size int64) bool {
	// Keeping a file takes no new space: the disk need only have room to spare.
	if !p.on.Load() || size < p.minSize || (p.room != nil && !p.room(0)) {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ready)+len(p.moved) >= p.most {
		return false
	}
	to := p.fs.PathJoin(p.dir, fmt.Sprintf("%016x%s", p.next, movedSuffix))
	if err := p.fs.Rename(path, to); err != nil {
		p.log.Warn("a cut payload file could not become a spare; removing it", "file", path, "err", err)
		return false
	}
	p.next++
	p.moved = append(p.moved, movedSpare{path: to, from: from})
	return true
}

// settle makes the files given from group directory from takeable, once per cut
// however many it gave: it syncs from (the old names gone), then renames each file
// from its moved name to its spare name and syncs the spare directory. A start
// takes only spare names, and removes moved ones: on a filesystem whose directories
// are synced independently a crash may keep a moved file's old name too, but never
// a spare's.
func (p *spares) settle(from string) {
	err := syncDir(p.fs, from)
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.moved[:0]
	var settled []string
	for _, m := range p.moved {
		if m.from != from {
			kept = append(kept, m)
			continue
		}
		to := strings.TrimSuffix(m.path, movedSuffix) + spareSuffix
		if err == nil {
			err = p.fs.Rename(m.path, to)
		}
		if err != nil {
			// Never taken: it goes (at the next start if this removal fails too).
			p.log.Warn("a cut payload file could not become a spare; removing it", "file", m.path, "err", err)
			p.fs.Remove(m.path)
			continue
		}
		settled = append(settled, to)
	}
	p.moved = kept
	if len(settled) > 0 {
		if err := syncDir(p.fs, p.dir); err != nil {
			p.log.Warn("spare payload files could not be synced in; removing them", "dir", p.dir, "err", err)
			for _, path := range settled {
				p.fs.Remove(path)
			}
			settled = nil
		}
	}
	p.ready = append(p.ready, settled...)
	p.count.Store(int64(len(p.ready)))
}

// keep trims the spares whenever the disk has no room to spare, until close.
func (p *spares) keep() {
	defer close(p.done)
	t := time.NewTicker(keepCheck)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.trim()
		}
	}
}

// trim removes spares while the disk has no room to spare (Factory.Room): the
// reserve gives way to a filling disk before the node has to stop its replicas.
func (p *spares) trim() {
	if p.room == nil {
		return
	}
	removed := 0
	for !p.room(0) {
		p.mu.Lock()
		if len(p.ready) == 0 {
			p.mu.Unlock()
			break
		}
		path := p.ready[len(p.ready)-1]
		p.ready = p.ready[:len(p.ready)-1]
		p.count.Store(int64(len(p.ready)))
		p.mu.Unlock()
		if err := p.fs.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			p.log.Warn("could not remove a spare payload file to free disk space", "file", path, "err", err)
			break
		}
		removed++
	}
	if removed > 0 {
		p.log.Warn("the disk is filling: spare payload files removed to free space (new payload files are written for the first time until it has room again)", "dir", p.dir, "removed", removed)
	}
}
