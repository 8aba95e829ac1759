package main

import (
	"regexp"
	"strings"

	"github.com/paylock/paylock/lock"
)

// keyIDCall finds a call of the SQL function paylock_key_id, which non-Go
// clients use to take paylock's locks (docs/INTEROP.md), its name in any
// case or quoted, schema-qualified or not.
var keyIDCall = regexp.MustCompile(`(?i)(\bpaylock_key_id|"paylock_key_id")\s*\(`)

// keysInCall returns the keys of the paylock_key_id calls in a statement
// that has no paylock comment, and whether it calls the function at all. A
// call is read only when every argument is a string literal or digits cast
// to text ('payments', 7::text, 'li_1'); with bind parameters the key can't
// be known from the statement, but the lock is still paylock's. The caller
// checks every key against the lock's id.
func keysInCall(query string) (keys []lock.Key, tagged bool) {
	locs := keyIDCall.FindAllStringIndex(query, -1)
	for _, loc := range locs {
		if args, ok := literalArgs(query[loc[1]:]); ok && len(args) > 0 {
			keys = append(keys, lock.NewKey(args[0], args[1:]...))
		}
	}
	return keys, len(locs) > 0
}

// literalArgs reads a call's arguments up to its closing parenthesis when
// each is 'text' (quotes doubled inside, standard_conforming_strings) or
// digits, optionally cast with ::text.
func literalArgs(s string) ([]string, bool) {
	var args []string
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		var arg string
		switch {
		case strings.HasPrefix(s, "'"):
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				if s[i] == '\'' {
					if i+1 < len(s) && s[i+1] == '\'' {
						b.WriteByte('\'')
						i++
						continue
					}
					break
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, false
			}
			arg, s = b.String(), s[i+1:]
		case s != "" && s[0] >= '0' && s[0] <= '9':
			n := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
			if n < 0 {
				return nil, false
			}
			// an integer's text has no leading zeros: 007::text is '7'
			arg, s = strings.TrimLeft(s[:n-1], "0")+s[n-1:n], s[n:]
			if !strings.HasPrefix(s, "::") {
				return nil, false // an integer, which the function doesn't take
			}
		default:
			return nil, false
		}
		args = append(args, arg)
		s = strings.TrimLeft(s, " \t\r\n")
		if rest, ok := strings.CutPrefix(s, "::text"); ok {
			s = strings.TrimLeft(rest, " \t\r\n")
		}
		switch {
		case strings.HasPrefix(s, ","):
			s = s[1:]
		case strings.HasPrefix(s, ")"):
			return args, true
		default:
			return nil, false
		}
	}
}
