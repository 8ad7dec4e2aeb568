//go:build !linux

package statemachine

import "os"

// startWriteback is a no-op where sync_file_range does not exist.
func startWriteback(*os.File) {}
