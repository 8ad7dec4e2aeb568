package shard

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
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

// silenceProbe is how long a stream may carry nothing before the master is asked.
// With heartbeats (every second) it is never reached.
const silenceProbe = 15 * time.Second

// connectStall bounds each read while connecting and starting the dump, before
// the link is watched by probes.
const connectStall = 15 * time.Second

// linkWatch follows the reads of a master connection: when bytes last arrived, and
// the read deadline (a backstop while connecting, none while streaming).
type linkWatch struct {
	last  atomic.Int64 // unix nanoseconds of the last byte read
	stall atomic.Int64 // per-read deadline in nanoseconds; 0: none

	mu    sync.Mutex
	conns []net.Conn
}

func newLinkWatch() *linkWatch {
	w := &linkWatch{}
	w.last.Store(time.Now().UnixNano())
	w.stall.Store(int64(connectStall))
	return w
}

// wrap makes c report its reads to w.
func (w *linkWatch) wrap(c net.Conn) net.Conn {
	w.mu.Lock()
	w.conns = append(w.conns, c)
	w.mu.Unlock()
	return &watchedConn{Conn: c, w: w}
}

// streaming ends the per-read deadline, also of a read under way: from now on the
// probes judge the link.
func (w *linkWatch) streaming() {
	w.stall.Store(0)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.conns {
		_ = c.SetReadDeadline(time.Time{})
	}
}

// idle is how long no byte has arrived.
func (w *linkWatch) idle() time.Duration { return time.Since(time.Unix(0, w.last.Load())) }

type watchedConn struct {
	net.Conn
	w *linkWatch
}

func (c *watchedConn) Read(p []byte) (int, error) {
	if s := c.w.stall.Load(); s > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(time.Duration(s)))
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.w.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// silence is the state of the probes of one stream.
type silence struct {
	behind  bool // the last probe found the master holding what the stream did not deliver
	probeAt time.Time
	logged  bool
}

// checkSilence probes the master after silenceProbe without a byte: nil to go on
// waiting, or the reason to end the stream (wrapping errSourceDown when the master
// cannot be reached). The probe compares GTIDs, not binlog positions: a dump by GTID
// skips what the group holds without a word, so the stream's position may trail
// the master's end although nothing is missing.
func (s *Shard) checkSilence(ctx context.Context, st *silence, w *linkWatch, fl upstreamFlavor, addr, user, password string, tlsCfg *tls.Config) error {
	if w.idle() < silenceProbe {
		return nil
	}
	if st.behind && w.last.Load() > st.probeAt.UnixNano() {
		st.behind = false // bytes came since the last probe: the stream moves
	}
	st.probeAt = time.Now()
	executed, err := s.masterExecuted(ctx, fl, addr, user, password, tlsCfg)
	if err != nil {
		return err
	}
	held, err := fl.covers(executed)
	if err != nil {
		return fmt.Errorf("the stream is silent and the master's GTIDs %q cannot be read: %w", executed, err)
	}
	if held {
		st.behind = false
		if !st.logged {
			st.logged = true
			s.log.Info("the master's stream is silent and the group holds all the master's transactions: waiting (the master sends no heartbeats, or sends them slower than the probes)",
				"silent_for", w.idle().Round(time.Second), "master_gtids", executed)
		}
		return nil
	}
	if st.behind {
		return fmt.Errorf("the stream has delivered nothing for %s, yet the master has written transactions the group lacks (master: %s): the link is stalled",
			w.idle().Round(time.Second), executed)
	}
	st.behind = true // possibly in flight: judged at the next probe
	return nil
}

// masterExecuted asks the master, on a connection of its own, for the GTIDs it has
// written (see upstreamFlavor.executedQuery).
func (s *Shard) masterExecuted(ctx context.Context, fl upstreamFlavor, addr, user, password string, tlsCfg *tls.Config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := connectMaster(ctx, addr, user, password, tlsCfg, 10*time.Second, func(c *client.Conn) error {
		c.ReadTimeout, c.WriteTimeout = 10*time.Second, 10*time.Second
		return nil
	})
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
	v, _ := r.GetString(0, 0)
	return v, nil
}
