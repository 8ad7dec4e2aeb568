package mysqlfront

import (
	"log/slog"
	"strings"
	"sync"
	"time"
)

// refusalLogsPerSecond bounds the WARN lines refused clients cause: a crowd of them
// must not fill the disk through the log, nor drown what else it says.
const refusalLogsPerSecond = 10

// maxLoggedName bounds a client-chosen name written to the log or echoed back.
const maxLoggedName = 64

// rateWindow lets at most limit events through each second and counts the rest.
// Its zero value lets nothing through; set limit.
type rateWindow struct {
	limit      int
	mu         sync.Mutex
	second     time.Time
	n          int
	suppressed int
}

// allow reports whether one more event fits this second, and how many were refused
// since the last one that fitted.
func (w *rateWindow) allow() (bool, int) {
	now := time.Now().Truncate(time.Second)
	w.mu.Lock()
	defer w.mu.Unlock()
	if !now.Equal(w.second) {
		w.second, w.n = now, 0
	}
	if w.n >= w.limit {
		w.suppressed++
		return false, 0
	}
	w.n++
	dropped := w.suppressed
	w.suppressed = 0
	return true, dropped
}

// logLimiter lets through at most refusalLogsPerSecond WARN lines a second; the
// first line after a suppressed stretch says how many were dropped.
type logLimiter struct{ w rateWindow }

func newLogLimiter() *logLimiter { return &logLimiter{w: rateWindow{limit: refusalLogsPerSecond}} }

// warn logs msg at WARN unless this second's budget is spent.
func (l *logLimiter) warn(log *slog.Logger, msg string, args ...any) {
	ok, dropped := l.w.allow()
	if !ok {
		return
	}
	if dropped > 0 {
		args = append(args, "suppressed_before", dropped)
	}
	log.Warn(msg, args...)
}

// clip shortens a client-chosen string for a log line or a reply.
func clip(s string) string {
	if len(s) <= maxLoggedName {
		return strings.ToValidUTF8(s, "?")
	}
	return strings.ToValidUTF8(s[:maxLoggedName], "?") + "…"
}
