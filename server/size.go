package server

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Size is a byte count written as MySQL's own options take it: a number, or a
// number with K, M, G or T (optionally followed by B or iB), each a power of 1024
// (64M = 64 MiB), as in a YAML file or on the command line.
type Size uint64

// ParseSize reads a Size.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%q is not a size: write bytes, or a number with K, M, G or T (64M, 256MiB, 1G)", s)
	}
	n, err := strconv.ParseUint(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: %w", s, err)
	}
	unit := strings.ToUpper(strings.TrimSpace(t[i:]))
	if u, ok := strings.CutSuffix(unit, "IB"); ok {
		unit = u
	} else {
		unit = strings.TrimSuffix(unit, "B")
	}
	sh, ok := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]
	if !ok {
		return 0, fmt.Errorf("%q is not a size: the unit must be K, M, G or T (64M, 256MiB, 1G)", s)
	}
	if sh > 0 && n > (^uint64(0))>>sh {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return Size(n << sh), nil
}

// String writes a Size in the largest unit that divides it.
func (z Size) String() string {
	for _, u := range []struct {
		sh   uint
		name string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if z != 0 && uint64(z)%(1<<u.sh) == 0 {
			return fmt.Sprintf("%d %s", uint64(z)>>u.sh, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", uint64(z))
}

// UnmarshalYAML takes a number of bytes or a size with a unit.
func (z *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a size such as 64M or 1073741824")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return err
	}
	*z = v
	return nil
}
