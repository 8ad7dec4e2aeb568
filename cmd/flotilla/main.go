// Command flotilla is the single Flotilla binary (serve, upstream, node, status).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "flotilla: command line not built yet")
	os.Exit(2)
}
