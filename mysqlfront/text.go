package mysqlfront

import "strings"

// Query text from a client is arbitrary bytes: any UTF-8, invalid UTF-8, letters whose
// upper case has another byte length. Every keyword match here therefore compares
// ASCII case-insensitively on the original text, so an offset found is an offset into
// the string it is used on; nothing slices one string at an offset found in a
// case-converted copy. Every function runs in time linear in its input (times the
// length of a short ASCII keyword).

// normalizeQuery prepares a statement for keyword matching: comments (/* ... */, an
// unterminated one runs to the end; "-- " and "#" to the end of the line) are removed,
// runs of whitespace outside quotes become one space, and surrounding whitespace and
// trailing semicolons are trimmed. Quoted text is kept byte for byte.
func normalizeQuery(q string) string {
	var b strings.Builder
	b.Grow(len(q))
	space := false // a space is owed before the next kept byte
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		if quote != 0 {
			b.WriteByte(c)
			switch {
			case c == '\\' && quote != '`' && i+1 < len(q):
				i++
				b.WriteByte(q[i])
			case c == quote:
				quote = 0
			}
			continue
		}
		switch {
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				i = len(q)
			} else {
				i += 2 + end + 1
			}
			space = true
			continue
		case c == '#' || c == '-' && strings.HasPrefix(q[i:], "-- "):
			end := strings.IndexByte(q[i:], '\n')
			if end < 0 {
				i = len(q)
			} else {
				i += end
			}
			space = true
			continue
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			space = true
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		if c == '\'' || c == '"' || c == '`' {
			quote = c
		}
		b.WriteByte(c)
	}
	return strings.TrimRight(strings.TrimRight(b.String(), "; "), " ")
}

// hasPrefixFold reports whether s begins with the ASCII keyword prefix, ignoring case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && equalFoldASCII(s[:len(prefix)], prefix)
}

// hasSuffixFold reports whether s ends with the ASCII keyword suffix, ignoring case.
func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && equalFoldASCII(s[len(s)-len(suffix):], suffix)
}

// indexFold returns the byte offset in s of the first ASCII case-insensitive match of
// the keyword sub, or -1.
func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if equalFoldASCII(s[i:i+len(sub)], sub) {
			return i
		}
	}
	return -1
}

// equalFoldASCII compares two strings of equal length, folding only ASCII letters: a
// non-ASCII byte matches only itself, so no keyword matches a look-alike letter.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
