package server

import (
	"fmt"
	"net"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/flotilla-relay/flotilla/mysqlfront"
)

// AddrList is a setting that takes one address or several: a YAML string or list,
// or a repeated flag.
type AddrList []string

// UnmarshalYAML takes a string or a list of strings.
func (a *AddrList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*a = AddrList{n.Value}
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		*a = l
		return nil
	}
	return fmt.Errorf("expected an address or a list of addresses")
}

// String is the list as the cluster records it (a node's MySQL ports).
func (a AddrList) String() string { return strings.Join(a, " ") }

// listeners parses the MySQL ports: no two on one address.
func (c Config) listeners() ([]mysqlfront.Listener, error) {
	var out []mysqlfront.Listener
	seen := map[string]bool{}
	for _, spec := range c.MySQLAddr {
		l, err := mysqlfront.ParseListener(spec)
		if err != nil {
			return nil, err
		}
		if seen[l.Addr] {
			return nil, fmt.Errorf("--mysql-addr: %s is given twice", l.Addr)
		}
		seen[l.Addr] = true
		out = append(out, l)
	}
	return out, nil
}

// listenMySQL binds every MySQL port, or none.
func listenMySQL(faces []mysqlfront.Listener) ([]net.Listener, error) {
	var out []net.Listener
	for _, f := range faces {
		lis, err := net.Listen("tcp", f.Addr)
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, fmt.Errorf("MySQL port %s: %w (is another Flotilla or MySQL running? use --mysql-addr)", f.Addr, err)
		}
		out = append(out, lis)
	}
	return out, nil
}
