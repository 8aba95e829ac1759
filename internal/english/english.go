// Package english words counts in messages: "1 key", "2 keys".
package english

import "strconv"

// Count returns n and the noun that agrees with it: one for 1, many
// otherwise ("1 key", "0 keys", "2 keys").
func Count(n int, one, many string) string { return strconv.Itoa(n) + " " + Noun(n, one, many) }

// Noun returns one for 1 and many otherwise.
func Noun(n int, one, many string) string {
	if n == 1 || n == -1 {
		return one
	}
	return many
}

// Has returns "has" for 1 and "have" otherwise, to agree with Count(n, ...).
func Has(n int) string {
	if n == 1 || n == -1 {
		return "has"
	}
	return "have"
}
