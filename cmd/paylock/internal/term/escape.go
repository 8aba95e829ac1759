package term

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Visible returns s with every character a terminal could act on, or that
// could hide or reorder the text around it, replaced by its Go escape:
// C0 controls including ESC and \r (\x1b, \r), DEL, C1 controls (\u009b),
// bidi embeddings, overrides and isolates (\u202e, \u2067) and every other
// character [strconv.IsPrint] rejects, and each byte of invalid UTF-8
// (\xff). Printable text, backslashes and quotes are left as they are, so a
// query reads as it was sent. %q applies the same rules to a quoted string.
func Visible(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !strconv.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case strconv.IsPrint(r):
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRune(r) // '\x1b', '\r', '\u202e'
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}

// EscapeJSON rewrites, in a document from encoding/json, the
// characters it leaves raw that a terminal acts on or that reorder text:
// DEL, C1 controls, bidi controls and the rest of what [strconv.IsPrint]
// rejects above ASCII, each as a \uXXXX escape (a surrogate pair above
// U+FFFF). Such characters only occur inside JSON strings, where the escape
// means the same character, so the document decodes to the same values.
func EscapeJSON(doc []byte) []byte {
	var out []byte
	for i := 0; i < len(doc); {
		r, size := utf8.DecodeRune(doc[i:])
		if r == 0x7f || (r >= 0x80 && r != utf8.RuneError && !strconv.IsPrint(r)) {
			if out == nil {
				out = append(make([]byte, 0, len(doc)+32), doc[:i]...)
			}
			if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
				out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
			} else {
				out = fmt.Appendf(out, `\u%04x`, r)
			}
		} else if out != nil {
			out = append(out, doc[i:i+size]...)
		}
		i += size
	}
	if out == nil {
		return doc
	}
	return out
}
