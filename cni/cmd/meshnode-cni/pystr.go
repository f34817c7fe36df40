package main

// Python's text forms, for messages that must read exactly as the agent-side and the old
// plugin's did: float repr (also JSON output), repr() of str and bytes, str() of a decoded
// JSON value, "%g", and clipping by characters.

import (
	"math"
	"strconv"
	"strings"
	"unicode"
)

// pyFloatRepr is repr(float): the shortest digits that round-trip, in fixed notation when
// the decimal point falls within -4 < decpt <= 16, else in exponent notation.
func pyFloatRepr(f float64) string {
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // "-1.2345e+06"
	sign := ""
	if s[0] == '-' {
		sign, s = "-", s[1:]
	}
	e := strings.IndexByte(s, 'e')
	digits := strings.Replace(s[:e], ".", "", 1)
	exp, _ := strconv.Atoi(s[e+1:])
	decpt := exp + 1
	switch {
	case decpt > -4 && decpt <= 0:
		return sign + "0." + strings.Repeat("0", -decpt) + digits
	case decpt > 0 && decpt <= 16:
		if decpt >= len(digits) {
			return sign + digits + strings.Repeat("0", decpt-len(digits)) + ".0"
		}
		return sign + digits[:decpt] + "." + digits[decpt:]
	}
	out := sign + digits[:1]
	if len(digits) > 1 {
		out += "." + digits[1:]
	}
	x := decpt - 1
	esign := "+"
	if x < 0 {
		esign, x = "-", -x
	}
	xs := strconv.Itoa(x)
	if len(xs) < 2 {
		xs = "0" + xs
	}
	return out + "e" + esign + xs
}

// pyG is "%g" % f (6 significant digits, trailing zeros dropped).
func pyG(f float64) string { return strconv.FormatFloat(f, 'g', 6, 64) }

// clip is the old plugin's _clip: at most limit characters, then "...".
func clip(s string, limit int) string {
	n := 0
	for i := 0; i < len(s); {
		if n == limit {
			return s[:i] + "..."
		}
		_, size := nextCP(s, i)
		i += size
		n++
	}
	return s
}

// clipBytes clips ASCII text (number literals).
func clipBytes(s string, limit int) string {
	if len(s) > limit {
		return s[:limit]
	}
	return s
}

// pyRepr is repr(str). Printability is Go's unicode.IsPrint, which has Python's definition
// (letters, marks, numbers, punctuation, symbols and the ASCII space); the two may differ
// only for characters one Unicode version assigns and the other does not.
func pyRepr(s string) string {
	quote := byte('\'')
	if strings.IndexByte(s, '\'') >= 0 && strings.IndexByte(s, '"') < 0 {
		quote = '"'
	}
	var b strings.Builder
	b.WriteByte(quote)
	for i := 0; i < len(s); {
		cp, n := nextCP(s, i)
		switch {
		case cp == rune(quote) || cp == '\\':
			b.WriteByte('\\')
			b.WriteByte(byte(cp))
		case cp == '\t':
			b.WriteString(`\t`)
		case cp == '\n':
			b.WriteString(`\n`)
		case cp == '\r':
			b.WriteString(`\r`)
		case cp < ' ' || cp == 0x7f:
			b.WriteString(`\x` + hex2(byte(cp)))
		case cp < 0x7f:
			b.WriteByte(byte(cp))
		case (cp < 0xd800 || cp > 0xdfff) && unicode.IsPrint(cp):
			b.WriteString(s[i : i+n])
		case cp <= 0xff:
			b.WriteString(`\x` + hex2(byte(cp)))
		case cp <= 0xffff:
			b.WriteString(`\u` + hex2(byte(cp>>8)) + hex2(byte(cp)))
		default:
			b.WriteString(`\U`)
			for shift := 28; shift >= 0; shift -= 4 {
				b.WriteByte(hexDigits[(cp>>uint(shift))&0xf])
			}
		}
		i += n
	}
	b.WriteByte(quote)
	return b.String()
}

// pyBytesRepr is repr(bytes).
func pyBytesRepr(raw []byte) string {
	quote := byte('\'')
	hasSingle, hasDouble := false, false
	for _, c := range raw {
		hasSingle = hasSingle || c == '\''
		hasDouble = hasDouble || c == '"'
	}
	if hasSingle && !hasDouble {
		quote = '"'
	}
	var b strings.Builder
	b.WriteString("b")
	b.WriteByte(quote)
	for _, c := range raw {
		switch {
		case c == quote || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c < ' ' || c >= 0x7f:
			b.WriteString(`\x` + hex2(c))
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// pyStr is str() of a decoded JSON value (a str is itself, containers print reprs).
func pyStr(v *value) string {
	if v.kind == jString {
		return v.text
	}
	var b strings.Builder
	writePyRepr(&b, v)
	return b.String()
}

func writePyRepr(b *strings.Builder, v *value) {
	switch v.kind {
	case jNull:
		b.WriteString("None")
	case jBool:
		if v.b {
			b.WriteString("True")
		} else {
			b.WriteString("False")
		}
	case jInt, jFloat:
		b.WriteString(v.text)
	case jString:
		b.WriteString(pyRepr(v.text))
	case jArray:
		b.WriteByte('[')
		for i, item := range v.items {
			if i > 0 {
				b.WriteString(", ")
			}
			writePyRepr(b, item)
		}
		b.WriteByte(']')
	case jObject:
		b.WriteByte('{')
		for i, m := range v.obj.members {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(pyRepr(m.key))
			b.WriteString(": ")
			writePyRepr(b, m.val)
		}
		b.WriteByte('}')
	}
}
