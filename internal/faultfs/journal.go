package faultfs

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Journal records, for every file of the segment store, what a power cut would
// leave of it: one line per event, tab-separated (paths hold no tab or newline):
//
//	C path        created (or truncated): nothing of it is durable
//	O size path   opened for writing: at most its size at open is durable (a file
//	              it has no record of counts as durable up to that size)
//	S size path   a sync returned: size bytes are durable (the largest wins)
//	T size path   truncated: at most size bytes are durable
//	R old new     renamed: new has old's record, old none
//	L old new     linked: new has old's record too
//	D path        removed
//
// The node appends without fsync: the harness reads the journal while the node is
// frozen (SIGSTOP) or dead, from the same page cache.
type Journal struct {
	mu sync.Mutex
	f  *os.File
}

// OpenJournal starts a journal at path (an old one is replaced: the files it
// speaks of were already cut back, or were whole).
func OpenJournal(path string) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fault journal %s: %w", path, err)
	}
	return &Journal{f: f}, nil
}

// add appends a line; an error fails the operation that journals it (a lost
// line would make PowerCut cut more than a power cut could).
func (j *Journal) add(fields ...string) error {
	if j == nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, err := j.f.WriteString(strings.Join(fields, "\t") + "\n"); err != nil {
		return fmt.Errorf("fault journal: %w", err)
	}
	return nil
}

func (j *Journal) created(path string) error { return j.add("C", path) }
func (j *Journal) opened(path string, size int64) error {
	return j.add("O", strconv.FormatInt(size, 10), path)
}
func (j *Journal) synced(path string, size int64) error {
	return j.add("S", strconv.FormatInt(size, 10), path)
}
func (j *Journal) truncated(path string, size int64) error {
	return j.add("T", strconv.FormatInt(size, 10), path)
}
func (j *Journal) renamed(old, new string) error { return j.add("R", old, new) }
func (j *Journal) linked(old, new string) error  { return j.add("L", old, new) }
func (j *Journal) removed(path string) error     { return j.add("D", path) }

// through does op (a rename or link of old to new, through a filesystem) and then
// journals it with record, which fails the operation if it cannot be written.
func (j *Journal) through(op func(old, new string) error, record func(old, new string) error, old, new string) error {
	if err := op(old, new); err != nil {
		return err
	}
	return record(old, new)
}

// removal removes name through remove and journals it.
func (j *Journal) removal(remove func(string) error, name string) error {
	if err := remove(name); err != nil {
		return err
	}
	return j.removed(name)
}

// Close ends the journal.
func (j *Journal) Close() error { return j.f.Close() }

// Durable replays a journal: the durable size of every file it covers.
func Durable(journal string) (map[string]int64, error) {
	f, err := os.Open(journal)
	if err != nil {
		return nil, fmt.Errorf("fault journal: %w", err)
	}
	defer f.Close()
	sizes := map[string]int64{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		p := strings.Split(sc.Text(), "\t")
		bad := func() error { return fmt.Errorf("fault journal %s line %d: %q", journal, line, sc.Text()) }
		if len(p) < 2 {
			return nil, bad() // a torn last line cannot happen: the node is stopped between lines
		}
		switch p[0] {
		case "C", "D":
			if p[0] == "C" {
				sizes[p[1]] = 0
			} else {
				delete(sizes, p[1])
			}
		case "O", "S", "T":
			if len(p) != 3 {
				return nil, bad()
			}
			n, err := strconv.ParseInt(p[1], 10, 64)
			if err != nil {
				return nil, bad()
			}
			cur, ok := sizes[p[2]]
			switch {
			case !ok, p[0] == "S" && n > cur, p[0] != "S" && n < cur:
				sizes[p[2]] = n
			}
		case "R", "L":
			if len(p) != 3 {
				return nil, bad()
			}
			n, ok := sizes[p[1]]
			if p[0] == "R" {
				delete(sizes, p[1])
			}
			if ok {
				sizes[p[2]] = n
			} else {
				delete(sizes, p[2])
			}
		default:
			return nil, bad()
		}
	}
	return sizes, sc.Err()
}

// PowerCut cuts every file the journal covers back to its durable size, as a
// power cut would leave it; the node must be dead. It returns how many bytes were
// lost.
func PowerCut(journal string) (lost int64, err error) {
	sizes, err := Durable(journal)
	if err != nil {
		return 0, err
	}
	for path, n := range sizes {
		fi, err := os.Stat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return lost, err
		}
		if fi.IsDir() || fi.Size() <= n {
			continue
		}
		if err := os.Truncate(path, n); err != nil {
			return lost, fmt.Errorf("power cut: %w", err)
		}
		lost += fi.Size() - n
	}
	return lost, nil
}
