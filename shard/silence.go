package shard

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
)

// A stream from the master may fall silent for two reasons: the master has nothing
// to send (and, unlike MySQL and MariaDB, sends no heartbeats: some MySQL-compatible
// servers ignore @master_heartbeat_period), or the link is dead. A read timeout
// cannot tell them apart, and treating silence as failure makes the syncer reconnect
// every few seconds while the master idles, then back off, so the next write waits
// for the backoff. Instead the connection has no read deadline once the dump runs;
// after silenceProbe without a byte, the syncer asks the master on a second
// connection which GTIDs it has written. A master that cannot be reached, or that
// holds transactions the group lacks at two probes in a row with nothing received
// between them, ends the stream; otherwise it is healthy and merely silent, and the
// syncer waits on.
//
// Invariant: a stream is never given up on while bytes arrive (a 1 GiB event over a
// slow link is progress, however long it takes), and never kept while the master
// is unreachable or has written what the stream does not deliver for two probes.
// The probe's query needs no privilege beyond a login.

// DefaultSilenceProbe is how long a stream may carry nothing before the master is
// asked (master_silence_probe).
// With heartbeats (every masterHeartbeat) it is never reached.
const DefaultSilenceProbe = 15 * time.Second

// masterHeartbeat is the heartbeat period a syncer asks its master for: a third of
// the silence probe, so a dead link is found after three missed heartbeats no later
// than a probe would find it (the syncer's rule: max(probe, 3 x the longest gap)),
// between 1 and 5 s. An idle master's heartbeats are most of an idle group's reads:
// at 1 s, 1,000 idle groups read 1,000 heartbeats a second, a tenth of the node's
// idle CPU; MySQL's and MariaDB's own replicas ask for one every 30 s by default.
func masterHeartbeat(probe time.Duration) time.Duration {
	return min(max(probe/3, time.Second), 5*time.Second)
}

// connectStall bounds each read while connecting and starting the dump, before
// the link is watched by probes.
const connectStall = 15 * time.Second

// linkWatch follows the reads of the connections of one stream: when bytes last
// arrived, and which connections are past their login. A connection reads with a
// deadline (bound) until streaming marks it live: a master that accepts TCP but never
// answers (a frozen process) cannot hold a login forever, also not one opened after
// the dump started (go-mysql's KILL connection when it closes a stream).
//
// Times are monotonic (offsets from base): a step of the wall clock (NTP, an
// operator's date -s) must neither hide a dead link (a step back) nor end a live
// one (a step forward).
type linkWatch struct {
	base  time.Time
	last  atomic.Int64 // when the last byte was read: nanoseconds since base
	bound time.Duration

	mu    sync.Mutex
	conns []*watchedConn
}

func newLinkWatch() *linkWatch {
	w := &linkWatch{base: time.Now(), bound: connectStall}
	w.last.Store(0)
	return w
}

// wrap makes c report its reads to w.
func (w *linkWatch) wrap(c net.Conn) net.Conn {
	wc := &watchedConn{Conn: c, w: w}
	w.mu.Lock()
	w.conns = append(w.conns, wc)
	w.mu.Unlock()
	return wc
}

// streaming ends the read deadline of the connections opened so far, also of a read
// under way: from now on the probes judge the link.
func (w *linkWatch) streaming() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		c.live.Store(true)
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
}

// idle is how long no byte has arrived.
func (w *linkWatch) idle() time.Duration { return time.Duration(w.at(time.Now()) - w.last.Load()) }

// at is t (read from this process's clock: it carries a monotonic reading) as an
// offset from base.
func (w *linkWatch) at(t time.Time) int64 { return int64(t.Sub(w.base)) }

type watchedConn struct {
	net.Conn
	w    *linkWatch
	live atomic.Bool
}

func (c *watchedConn) Read(p []byte) (int, error) {
	if !c.live.Load() {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.w.bound))
		if c.live.Load() {
			// streaming ran between the check and the deadline: its clearing may
			// have come first, so clear again (both orders end without a deadline).
			_ = c.Conn.SetReadDeadline(time.Time{})
		}
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.w.last.Store(c.w.at(time.Now()))
	}
	return n, err
}

// silence is the state of the probes of one stream.
type silence struct {
	behind  bool // the last probe found the master holding what the stream did not deliver
	probeAt time.Time
	logged  bool
	blind   bool // a probe could not judge (logged once)
}

// silenceGiveUp ends a silent stream that the probes cannot judge (the master
// refuses the probe's login, or does not answer its query) after this long.
const silenceGiveUp = 5 * time.Minute

// errCannotJudge: the probe reached a master that is up but could not tell whether
// the stream misses anything.
var errCannotJudge = errors.New("the probe cannot judge the stream")

// checkSilence probes the master after silenceProbe without a byte: nil to go on
// waiting, or the reason to end the stream (wrapping errSourceDown when the master
// cannot be reached). The probe compares GTIDs, not binlog positions: a dump by GTID
// skips what the group holds without a word, so the stream's position may trail
// the master's end although nothing is missing.
func (s *Shard) checkSilence(ctx context.Context, st *silence, w *linkWatch, fl upstreamFlavor, probe func(context.Context) (string, error)) error {
	if w.idle() < s.silenceProbe() {
		return nil
	}
	if st.behind && w.last.Load() > w.at(st.probeAt) {
		st.behind = false // bytes came since the last probe: the stream moves
	}
	st.probeAt = time.Now()
	executed, err := probe(ctx)
	var missing string
	if err == nil {
		missing, err = fl.missing(executed)
	}
	if err != nil {
		if errors.Is(err, errSourceDown) {
			return err
		}
		if w.idle() >= silenceGiveUp {
			return fmt.Errorf("the stream has been silent for %s and the probes cannot tell why (%v): reconnecting", w.idle().Round(time.Second), err)
		}
		if !st.blind {
			st.blind = true
			s.log.Warn("the master's stream is silent and the probe cannot tell whether it misses anything: waiting, and reconnecting after 5 minutes of silence",
				"err", err)
		}
		return nil
	}
	if missing != "" && missing == s.unserved && w.idle() >= silenceGiveUp {
		// Judged not in the binlog, yet a stall could look the same: a long
		// silence still earns a fresh connection.
		return fmt.Errorf("the stream has been silent for %s while the master holds %s, which the group lacks: reconnecting", w.idle().Round(time.Second), missing)
	}
	if missing == "" || missing == s.unserved {
		st.behind = false
		if !st.logged {
			st.logged = true
			s.log.Info("the master's stream is silent and the group holds all the master's transactions: waiting (the master sends no heartbeats)",
				"silent_for", w.idle().Round(time.Second), "master_gtids", executed)
		}
		return nil
	}
	if !st.behind {
		st.behind = true // possibly in flight: judged at the next probe
		return nil
	}
	if missing == s.stalledOn {
		// The previous connection ended on these same GTIDs and this one, dumping
		// from the group's position, did not bring them either: the master's
		// binlog does not hold them.
		s.unserved, st.behind = missing, false
		s.log.Warn("the master's executed GTIDs hold transactions its binary log does not send (a channel with log_replica_updates=OFF, SET GTID_PURGED, sql_log_bin=0?): no longer waiting for them",
			"gtids", missing)
		return nil
	}
	s.stalledOn = missing
	return fmt.Errorf("the stream has delivered nothing for %s, yet the master has written %s, which the group lacks: the link is stalled",
		w.idle().Round(time.Second), missing)
}

// masterExecuted asks the master, on a connection of its own, for the GTIDs it has
// written (see upstreamFlavor.executedQuery).
func (s *Shard) masterExecuted(ctx context.Context, fl upstreamFlavor, addr, user, password string, tlsCfg *tls.Config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := dialProbe(ctx, addr, user, password, tlsCfg)
	var me *mysql.MyError
	if errors.As(err, &me) && !slices.Contains(masterDownCodes, me.Code) {
		// Too many connections, a blocked host, a changed password: the master is
		// up; it refuses only the probe.
		return "", fmt.Errorf("%w: the master refuses the probe's login: %w", errCannotJudge, err)
	}
	if err != nil {
		return "", fmt.Errorf("%w: the stream is silent and the master does not answer a probe: %w", errSourceDown, err)
	}
	defer c.Close()
	q := fl.executedQuery()
	r, err := c.Execute(q)
	if err != nil {
		return "", fmt.Errorf("the stream is silent and the probe %q failed: %w", q, err)
	}
	if r.RowNumber() == 0 {
		return "", fmt.Errorf("the stream is silent and the probe %q returned no row", q)
	}
	v, err := r.GetString(0, 0)
	if err != nil {
		return "", fmt.Errorf("the probe %q: %w", q, err)
	}
	return v, nil
}

// dialProbe opens a connection of its own to the master for a probe's queries, each
// bounded to 10 s.
func dialProbe(ctx context.Context, addr, user, password string, tlsCfg *tls.Config) (*client.Conn, error) {
	return connectMaster(ctx, addr, user, password, tlsCfg, 10*time.Second, func(c *client.Conn) error {
		c.ReadTimeout, c.WriteTimeout = 10*time.Second, 10*time.Second
		return nil
	})
}

// silenceProbe is the node's master_silence_probe.
func (s *Shard) silenceProbe() time.Duration {
	if s.m == nil || s.m.silenceProbe <= 0 {
		return DefaultSilenceProbe
	}
	return s.m.silenceProbe
}

// zombieGrace is how long a syncer waits for the master to start its dump before it
// looks for the dump that holds it up. A MariaDB master ends a former leader's dump
// when the new leader's (same server_id) arrives, but only by flagging it: if that
// dump is blocked writing to a leader that froze (a stopped process, a hung VM), it
// stays until net_write_timeout (60 s by default), and the new dump waits behind it:
// the group ingested nothing for a minute though a new leader was elected in two
// seconds.
const zombieGrace = 2 * time.Second

// endZombieDumps waits for the dump to start (a byte read after since, an offset of
// w's clock); while it has not, it asks the master every zombieGrace to end, for
// good, its threads of this syncer's user that were already killed (see
// killZombieDumps), a few times at most.
func (s *Shard) endZombieDumps(ctx context.Context, w *linkWatch, since int64, connect func(context.Context) (*client.Conn, error)) {
	t := time.NewTicker(zombieGrace)
	defer t.Stop()
	for tries := 0; tries < 5; tries++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if w.last.Load() > since {
			return // the dump started
		}
		ended, err := killZombieDumps(ctx, connect)
		if err != nil {
			s.log.Warn("the master has not started the binlog dump, and the threads that may hold it up could not be listed or ended", "waited", time.Duration(tries+1)*zombieGrace, "err", err)
			continue
		}
		if len(ended) > 0 {
			s.log.Warn("the master's binlog dump was waiting behind a former dump of this syncer's user, killed but stuck writing to a dead link (a frozen former leader): ended it",
				"threads", ended)
		}
	}
}

// killZombieDumps ends, with KILL CONNECTION, the master's threads of the connecting
// user that are already killed (COMMAND Killed), run no statement and wait writing to
// their client, other than its own: a user may kill its own threads, and such a
// thread is a dump the master is ending anyway. KILL CONNECTION shuts the thread's socket, which a dump
// thread's pending write waits on; the kill a new dump's arrival makes does not.
func killZombieDumps(ctx context.Context, connect func(context.Context) (*client.Conn, error)) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// COMMAND is Killed for any kill, KILL QUERY and max_statement_time included; a
	// dump thread runs no statement (INFO is NULL), and one held by a dead link waits
	// in its write.
	const q = "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = SUBSTRING_INDEX(USER(), '@', 1) AND COMMAND = 'Killed' AND INFO IS NULL AND STATE = 'Writing to net' AND ID <> CONNECTION_ID()"
	r, err := c.Execute(q)
	if err != nil {
		return nil, fmt.Errorf("list killed threads: %w", err)
	}
	var ended []string
	for i := 0; i < r.RowNumber(); i++ {
		id, err := r.GetUint(i, 0)
		if err != nil {
			return ended, fmt.Errorf("list killed threads: %w", err)
		}
		if _, err := c.Execute(fmt.Sprintf("KILL CONNECTION %d", id)); err != nil {
			var me *mysql.MyError
			if errors.As(err, &me) && me.Code == mysql.ER_NO_SUCH_THREAD {
				continue // it ended meanwhile
			}
			return ended, fmt.Errorf("KILL CONNECTION %d: %w", id, err)
		}
		ended = append(ended, strconv.FormatUint(id, 10))
	}
	return ended, nil
}
