package main

import (
	"slices"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/node"
)

// Every serve flag has a configuration key and every key a flag (the admin token
// only comes from the file or $FLOTILLA_TOKEN: a flag would show it in ps).
func TestEveryFlagHasAConfigKey(t *testing.T) {
	keys := node.ConfigKeys()
	var flagKeys []string
	for _, sf := range serveFlags() {
		if !slices.Contains(keys, sf.key) {
			t.Errorf("flag --%s sets key %q, which the configuration does not have", sf.flag.Names()[0], sf.key)
		}
		flagKeys = append(flagKeys, sf.key)
	}
	for _, k := range keys {
		if !slices.Contains(flagKeys, k) && k != "admin_token" {
			t.Errorf("configuration key %q has no flag", k)
		}
	}
}
