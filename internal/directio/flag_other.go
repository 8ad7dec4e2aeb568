//go:build !linux

package directio

// Flag is the open flag for direct I/O: none here, so writes go through the page
// cache.
const Flag = 0
