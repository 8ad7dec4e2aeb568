package main

import (
	"slices"
	"strings"
	"testing"
)

// TestLazyFreeEnv: the environment serve executes itself with holds exactly one
// GODEBUG, the first given with madvdontneed=0 added, and the guard; an operator's
// madvdontneed, and the guard, leave the process as it is.
func TestLazyFreeEnv(t *testing.T) {
	for _, c := range []struct {
		name string
		env  []string
		want string // GODEBUG's value; "" for no exec
	}{
		{"none", []string{"PATH=/bin"}, "madvdontneed=0"},
		{"empty", []string{"GODEBUG=", "PATH=/bin"}, "madvdontneed=0"},
		{"another setting", []string{"GODEBUG=x509sha1=1"}, "x509sha1=1,madvdontneed=0"},
		{"twice: the runtime reads the first", []string{"GODEBUG=gctrace=1", "GODEBUG=x509sha1=1"}, "gctrace=1,madvdontneed=0"},
		{"operator's choice", []string{"GODEBUG=gctrace=1,madvdontneed=1"}, ""},
		{"executed already", []string{"GODEBUG=x", lazyFreeGuard + "=1"}, ""},
	} {
		out, ok := lazyFreeEnv(c.env)
		if c.want == "" {
			if ok {
				t.Errorf("%s: executes again with %q", c.name, out)
			}
			continue
		}
		var godebug []string
		for _, kv := range out {
			if v, found := strings.CutPrefix(kv, "GODEBUG="); found {
				godebug = append(godebug, v)
			}
		}
		if !ok || !slices.Equal(godebug, []string{c.want}) || !slices.Contains(out, lazyFreeGuard+"=1") {
			t.Errorf("%s: %v, GODEBUG %q; want one GODEBUG %q and the guard", c.name, ok, godebug, c.want)
		}
		if c.name == "none" && !slices.Contains(out, "PATH=/bin") {
			t.Errorf("the rest of the environment was lost: %q", out)
		}
	}
}
