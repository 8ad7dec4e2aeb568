package mysqlfront

import (
	"fmt"
	"strings"
	"unicode"
)

// assignment is one `@name = value` of a SET statement. Flotilla only needs user
// variables (replicas configure the dump with them); everything else a replica or
// client sets is acknowledged and ignored.
type assignment struct {
	Name  string // lower case, without '@'
	Value string
	Null  bool
}

// parseSet parses the assignments of a SET statement (without the SET keyword).
// Values may be quoted strings, numbers, NULL, or @@[global.|session.]variables, which
// resolve through sysvar. It fails on anything else, so a replica's unexpected
// statement is answered with an error naming it rather than silently misread.
func parseSet(stmt string, sysvar func(string) (string, error)) ([]assignment, error) {
	var out []assignment
	s := strings.TrimSpace(stmt)
	for s != "" {
		// target
		i := strings.IndexAny(s, "=")
		if i < 0 {
			return nil, fmt.Errorf("expected '=' in %q", stmt)
		}
		target := strings.TrimSpace(s[:i])
		s = strings.TrimSpace(s[i+1:])
		if strings.HasPrefix(s, "=") { // ":=" written as "= =" never happens; tolerate "=="
			s = strings.TrimSpace(s[1:])
		}
		target = strings.TrimSuffix(target, ":")
		val, rest, null, err := parseValue(s, sysvar)
		if err != nil {
			return nil, fmt.Errorf("%v in %q", err, stmt)
		}
		s = strings.TrimSpace(rest)
		if strings.HasPrefix(s, ",") {
			s = strings.TrimSpace(s[1:])
		} else if s != "" {
			return nil, fmt.Errorf("unexpected %q in %q", s, stmt)
		}
		if strings.HasPrefix(target, "@") && !strings.HasPrefix(target, "@@") {
			out = append(out, assignment{Name: strings.ToLower(strings.Trim(target[1:], "`")), Value: val, Null: null})
		}
	}
	return out, nil
}

// parseValue reads one value and returns it with the rest of the input.
func parseValue(s string, sysvar func(string) (string, error)) (val, rest string, null bool, err error) {
	if s == "" {
		return "", "", false, fmt.Errorf("missing value")
	}
	switch c := s[0]; {
	case c == '\'' || c == '"':
		var sb strings.Builder
		for i := 1; i < len(s); i++ {
			switch {
			case s[i] == '\\' && i+1 < len(s):
				i++
				sb.WriteByte(s[i])
			case s[i] == c && i+1 < len(s) && s[i+1] == c:
				i++
				sb.WriteByte(c)
			case s[i] == c:
				return sb.String(), s[i+1:], false, nil
			default:
				sb.WriteByte(s[i])
			}
		}
		return "", "", false, fmt.Errorf("unterminated string")
	case strings.HasPrefix(s, "@@"):
		end := 2
		for end < len(s) && (isIdent(rune(s[end])) || s[end] == '.') {
			end++
		}
		name := strings.ToLower(s[2:end])
		name = strings.TrimPrefix(strings.TrimPrefix(name, "global."), "session.")
		v, err := sysvar(name)
		if err != nil {
			return "", "", false, err
		}
		return v, s[end:], false, nil
	default:
		end := 0
		for end < len(s) && (isIdent(rune(s[end])) || s[end] == '-' || s[end] == '+' || s[end] == '.') {
			end++
		}
		if end == 0 {
			return "", "", false, fmt.Errorf("cannot read value %q", s)
		}
		word := s[:end]
		if strings.EqualFold(word, "NULL") {
			return "", s[end:], true, nil
		}
		return word, s[end:], false, nil
	}
}

func isIdent(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }
