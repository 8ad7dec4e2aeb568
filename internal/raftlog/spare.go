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
	"syscall"
	"time"

	"github.com/flotilla-relay/flotilla/internal/directio"
	gvfs "github.com/lni/goutils/vfs"
)

// Spare files: payload files written once and overwritten after. On the VM disk
// this was measured on, blocks written for the first time went slower than blocks
// written again (256 MiB of direct writes: 1.4-1.5 GB/s against 1.7-1.9;
// BenchmarkPayloadSave: saves 10-15% faster into spares), and every ingested byte
// goes to a payload file first; so a node keeps a reserve of files it wrote ahead
// (zeros, paced, once its raft log has written no payload for a second) and the
// files its log cuts free, and a group's new file is one of them renamed (a salted
// file: its old records read as its end, see files.go). The reserve is the most
// disk the spares hold (Factory.Reserve); zero turns recycling off.
//
// Invariants:
//   - A spare is never referred to: a file enters only once its group's log was cut
//     past everything it holds (removeTo), or as the filler wrote it; it leaves by
//     a rename to a new salted name, under which only new records are read.
//   - Both directories of a move are synced before anything refers to the moved
//     file: a give syncs them itself; a take's are in its group's next sync, which
//     precedes the save that first refers to the file.
//   - The filler writes a file under a temporary name and renames it in only once
//     it is synced: a spare is whole (a start removes temporary files).
const (
	spareDir    = "spare"
	spareSuffix = ".spare"
	spareTemp   = ".tmp"
	// fillRetry is how long the filler waits after a failed write (a full disk)
	// before it tries again, unless a take wakes it first.
	fillRetry = time.Minute
	// fillCheck is how often the filler looks for work without being woken: the
	// cluster version that turns recycling on is learned without telling it.
	fillCheck = 5 * time.Second
	// fillQuiet is how long after the last payload the filler waits: it writes
	// while the node's raft log writes no payloads, not against an ingest (whose
	// log cuts give files back meanwhile).
	fillQuiet = time.Second
	// fillChunk and fillRate pace the filler's writes: at most fillRate bytes a
	// second in fillChunk writes, so that a commit's sync waits behind little of
	// it (a 1 MiB direct write takes well under a millisecond on a disk where
	// this was measured) and the disk keeps most of its time for the groups.
	fillChunk = 1 << 20
	fillRate  = 128 << 20
)

// spares is a node's reserve of payload files. Its methods are safe for concurrent
// use.
type spares struct {
	fs      gvfs.FS
	dir     string
	minSize int64 // smallest file taken in: a full payload file
	size    int64 // of a file the filler writes: a full file and the largest record's overflow
	most    int   // spares held at most
	direct  bool
	on      *atomic.Bool
	room    func(int64) bool
	log     *slog.Logger
	count   *atomic.Int64 // reported: spares ready

	lastBusy atomic.Int64 // unix nanoseconds of the last payload written or file taken

	mu      sync.Mutex
	ready   []string
	pending int // moves and fills under way, counted against most
	next    uint64

	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	started bool
}

// openSpares lists (and cleans) root's spare directory; the filler starts with
// start.
func openSpares(fs gvfs.FS, root string, fileSize, reserve int64, direct bool, on *atomic.Bool, room func(int64) bool, log *slog.Logger, count *atomic.Int64) (*spares, error) {
	size := fileSize + min(int64(stageSize), fileSize/16)
	size = (size + blockSize - 1) &^ (blockSize - 1)
	p := &spares{fs: fs, dir: fs.PathJoin(root, spareDir), minSize: fileSize, size: size, most: int(reserve / size), direct: direct,
		on: on, room: room, log: log, count: count, next: 1, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if p.count == nil {
		p.count = new(atomic.Int64)
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
		// A temporary file of a fill a stop cut short, a spare too small, or more
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

// start runs the filler until close; it looks for work at once.
func (p *spares) start() {
	p.started = true
	p.wake()
	go p.fill()
}

// close stops the filler (a fill under way stops between two writes).
func (p *spares) close() {
	close(p.stop)
	if p.started {
		<-p.done
	}
}

// wake tells the filler to look for work.
func (p *spares) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
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
	p.busy()
	p.wake()
	return path
}

// give moves path, a payload file nothing refers to any more, into the spares if
// recycling is on, it is large enough and there is room; false means the caller
// removes it.
func (p *spares) give(path string, size int64) bool {
	if !p.on.Load() || size < p.minSize {
		return false
	}
	p.mu.Lock()
	if len(p.ready)+p.pending >= p.most {
		p.mu.Unlock()
		return false
	}
	p.pending++
	to := p.fs.PathJoin(p.dir, fmt.Sprintf("%016x%s", p.next, spareSuffix))
	p.next++
	p.mu.Unlock()
	err := p.fs.Rename(path, to)
	if err == nil {
		err = syncDir(p.fs, p.dir)
	}
	if err == nil {
		err = syncDir(p.fs, p.fs.PathDir(path))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending--
	if err != nil {
		p.log.Warn("a cut payload file could not become a spare; removing it", "file", path, "err", err)
		p.fs.Remove(to)
		return false
	}
	p.ready = append(p.ready, to)
	p.count.Store(int64(len(p.ready)))
	return true
}

// want reserves the name of the next file to fill, if the reserve is short of one
// and the disk has room for it.
func (p *spares) want() (string, bool) {
	if !p.on.Load() || (p.room != nil && !p.room(p.size)) {
		return "", false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ready)+p.pending >= p.most {
		return "", false
	}
	p.pending++
	name := fmt.Sprintf("%016x", p.next)
	p.next++
	return name, true
}

// fill keeps the reserve full, one file at a time.
func (p *spares) fill() {
	defer close(p.done)
	check := time.NewTicker(fillCheck)
	defer check.Stop()
	var retry, quiet <-chan time.Time
	for {
		select {
		case <-p.stop:
			return
		case <-p.kick:
		case <-check.C:
		case <-retry:
			retry = nil
		case <-quiet:
			quiet = nil
		}
		p.trim()
		if retry != nil {
			continue
		}
		wrote := 0
		for {
			if wait := p.quietIn(); wait > 0 {
				if quiet == nil {
					quiet = time.After(wait)
				}
				break
			}
			name, ok := p.want()
			if !ok {
				if wrote > 0 {
					p.mu.Lock()
					n := len(p.ready)
					p.mu.Unlock()
					p.log.Info(spareReadyMsg, "dir", p.dir, "spares", n, "written", wrote, "bytes_each", p.size)
				}
				break
			}
			path, err := p.write(name)
			p.mu.Lock()
			p.pending--
			if err == nil {
				p.ready = append(p.ready, path)
				p.count.Store(int64(len(p.ready)))
				wrote++
			}
			p.mu.Unlock()
			if errors.Is(err, errStopped) {
				return
			}
			if err != nil {
				p.log.Warn("the raft log's spare payload files could not be written ahead; new payload files are written for the first time until this clears (check the disk)",
					"dir", p.dir, "err", err, "retry_in", fillRetry)
				retry = time.After(fillRetry)
				break
			}
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

// busy notes that the raft log wrote payloads now: the filler waits for quiet. It
// is not woken (a save makes no work for it; a take does).
func (p *spares) busy() {
	p.lastBusy.Store(time.Now().UnixNano())
}

// quietIn is how long the filler still waits after the last payload.
func (p *spares) quietIn() time.Duration {
	return time.Duration(p.lastBusy.Load() + int64(fillQuiet) - time.Now().UnixNano())
}

var errStopped = errors.New("stopped")

// spareReadyMsg is logged when the filler has filled the reserve.
const spareReadyMsg = "the raft log's spare payload files are ready"

// write writes a spare of zeros under name (temporary until synced, then renamed
// in and its directory synced) and returns its path.
func (p *spares) write(name string) (string, error) {
	tmp := p.fs.PathJoin(p.dir, name+spareTemp)
	path := p.fs.PathJoin(p.dir, name+spareSuffix)
	err := p.writeZeros(tmp)
	if err == nil {
		err = p.fs.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(p.fs, p.dir)
	}
	if err != nil {
		p.fs.Remove(tmp)
		if !errors.Is(err, errStopped) {
			err = fmt.Errorf("write spare payload file %s: %w", path, err)
		}
		return "", err
	}
	return path, nil
}

// writeZeros writes p.size zero bytes to a new file and syncs it, with direct I/O
// where the payload files use it.
func (p *spares) writeZeros(path string) error {
	var w gvfs.File
	var err error
	direct := p.direct
	if direct {
		if w, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|directio.Flag, 0o644); errors.Is(err, syscall.EINVAL) {
			direct = false
		} else if err != nil {
			return err
		}
	}
	if !direct {
		if w, err = p.fs.Create(path); err != nil {
			return err
		}
	}
	defer w.Close()
	buf := directio.Aligned(int(min(p.size, fillChunk)))
	start := time.Now()
	for off := int64(0); off < p.size; {
		// Paced: chunk k starts no earlier than k chunks at fillRate.
		pace := time.NewTimer(time.Until(start.Add(time.Duration(off * int64(time.Second) / fillRate))))
		select {
		case <-p.stop:
			pace.Stop()
			return errStopped
		case <-pace.C:
		}
		n := int(min(int64(len(buf)), p.size-off))
		if _, err := w.WriteAt(buf[:n], off); err != nil {
			if direct && errors.Is(err, syscall.EINVAL) {
				// Taken at open, refused at the write (some FUSE filesystems).
				w.Close()
				p.direct = false
				return p.writeZeros(path)
			}
			return err
		}
		off += int64(n)
	}
	return w.Sync()
}
