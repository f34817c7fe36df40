package main

// JSON as the agent reads and writes it. The agent is Python, so "valid JSON" here means what
// Python's json.loads accepts, with the plugin's two extra refusals (NaN/Infinity, and
// numbers that overflow a float), and output is byte for byte what json.dumps would print
// (ASCII only). encoding/json differs in ways the contract can see: it reorders object keys,
// accepts lone surrogates only by replacing them, and rejects nothing for depth. This
// parser keeps keys in document order (a repeated key keeps its first position and its last
// value, as a Python dict does), keeps numbers exact, and reports errors with json's own
// messages and positions, so a runtime's log says the same thing whichever plugin ran.
//
// Strings are held as WTF-8: UTF-8 that may also encode lone surrogates (from "\ud800"
// escapes, or from environment bytes that are not UTF-8, which Python decodes as
// surrogates U+DC80..U+DCFF). That keeps every string comparable and printable exactly as
// the Python plugin saw it.

import (
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

type kind uint8

const (
	jNull kind = iota
	jBool
	jInt
	jFloat
	jString
	jArray
	jObject
)

// value is one decoded JSON value. Numbers keep Python's printed form in text (an int's
// digits, a float's repr) so that they are re-encoded exactly; f is the float value.
type value struct {
	kind  kind
	b     bool
	text  string
	f     float64
	items []*value
	obj   *object
}

type member struct {
	key string
	val *value
}

// object keeps members in insertion order, like a Python dict.
type object struct {
	members []member
	index   map[string]int
}

func newObject() *object { return &object{index: map[string]int{}} }

func (o *object) get(key string) *value {
	if i, ok := o.index[key]; ok {
		return o.members[i].val
	}
	return nil
}

func (o *object) has(key string) bool {
	_, ok := o.index[key]
	return ok
}

// set replaces the value of an existing key in place, or appends the key.
func (o *object) set(key string, v *value) {
	if i, ok := o.index[key]; ok {
		o.members[i].val = v
		return
	}
	o.index[key] = len(o.members)
	o.members = append(o.members, member{key, v})
}

func (o *object) del(key string) {
	i, ok := o.index[key]
	if !ok {
		return
	}
	delete(o.index, key)
	o.members = append(o.members[:i], o.members[i+1:]...)
	for j := i; j < len(o.members); j++ {
		o.index[o.members[j].key] = j
	}
}

// clone is a shallow copy (dict(obj)).
func (o *object) clone() *object {
	c := &object{members: make([]member, len(o.members)), index: make(map[string]int, len(o.members))}
	copy(c.members, o.members)
	for k, i := range o.index {
		c.index[k] = i
	}
	return c
}

func strValue(s string) *value  { return &value{kind: jString, text: s} }
func objValue(o *object) *value { return &value{kind: jObject, obj: o} }
func intValue(n int64) *value {
	return &value{kind: jInt, text: strconv.FormatInt(n, 10), f: float64(n)}
}
func listValue(vs []*value) *value { return &value{kind: jArray, items: vs} }
func strList(ss []string) *value {
	vs := make([]*value, len(ss))
	for i, s := range ss {
		vs[i] = strValue(s)
	}
	return listValue(vs)
}

// ----------------------------------------------------------------------------- decoding

// The nesting limit. Python's was its recursion limit (about 990 levels in the old plugin);
// this one is lower so that whatever the plugin forwards (the `capture` object) is also
// within what the agent's json.loads can nest.
const maxDepth = 512

// Python's int() refuses more digits than this (sys.int_info.default_max_str_digits).
const maxIntDigits = 4300

type jsonError struct{ msg string }

func (e *jsonError) Error() string { return e.msg }

type parser struct {
	s     string
	depth int
}

// decodeJSON decodes raw as the old plugin did: strict UTF-8, then one JSON value with
// only whitespace around it.
func decodeJSON(raw []byte) (*value, error) {
	if err := checkUTF8(raw); err != nil {
		return nil, err
	}
	p := &parser{s: string(raw)}
	if strings.HasPrefix(p.s, "\ufeff") {
		return nil, p.errAt("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0)
	}
	v, end, err := p.scan(p.skipWS(0))
	if err != nil {
		return nil, err
	}
	if end = p.skipWS(end); end != len(p.s) {
		return nil, p.errAt("Extra data", end)
	}
	return v, nil
}

func (p *parser) skipWS(i int) int {
	for i < len(p.s) {
		switch p.s[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// errAt formats like json.JSONDecodeError: positions count characters, not bytes.
func (p *parser) errAt(msg string, pos int) error {
	before := p.s[:pos]
	char := utf8.RuneCountInString(before)
	line := strings.Count(before, "\n") + 1
	col := char + 1
	if nl := strings.LastIndexByte(before, '\n'); nl >= 0 {
		col = char - utf8.RuneCountInString(before[:nl])
	}
	return &jsonError{msg + ": line " + strconv.Itoa(line) + " column " + strconv.Itoa(col) +
		" (char " + strconv.Itoa(char) + ")"}
}

// scan is json's scan_once: the value at idx and the index after it.
func (p *parser) scan(idx int) (*value, int, error) {
	s := p.s
	if idx >= len(s) {
		return nil, 0, p.errAt("Expecting value", idx)
	}
	switch s[idx] {
	case '"':
		str, next, err := p.scanString(idx + 1)
		return strValue(str), next, err
	case '{', '[':
		if p.depth >= maxDepth {
			what := "object"
			if s[idx] == '[' {
				what = "array"
			}
			return nil, 0, &jsonError{"maximum recursion depth exceeded while decoding a JSON " +
				what + " from a unicode string"}
		}
		p.depth++
		defer func() { p.depth-- }()
		if s[idx] == '{' {
			return p.scanObject(idx + 1)
		}
		return p.scanArray(idx + 1)
	case 'n':
		if strings.HasPrefix(s[idx+1:], "ull") {
			return &value{kind: jNull}, idx + 4, nil
		}
	case 't':
		if strings.HasPrefix(s[idx+1:], "rue") {
			return &value{kind: jBool, b: true}, idx + 4, nil
		}
	case 'f':
		if strings.HasPrefix(s[idx+1:], "alse") {
			return &value{kind: jBool}, idx + 5, nil
		}
	case 'N':
		if strings.HasPrefix(s[idx+1:], "aN") {
			return nil, 0, &jsonError{"NaN is not valid JSON"}
		}
	case 'I':
		if strings.HasPrefix(s[idx+1:], "nfinity") {
			return nil, 0, &jsonError{"Infinity is not valid JSON"}
		}
	case '-':
		if strings.HasPrefix(s[idx+1:], "Infinity") {
			return nil, 0, &jsonError{"-Infinity is not valid JSON"}
		}
	}
	return p.scanNumber(idx)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber is json's _match_number, backtracking included ("1." is 1 then ".").
func (p *parser) scanNumber(start int) (*value, int, error) {
	s, idx := p.s, start
	if s[idx] == '-' {
		idx++
		if idx >= len(s) {
			return nil, 0, p.errAt("Expecting value", start)
		}
	}
	switch {
	case s[idx] >= '1' && s[idx] <= '9':
		idx++
		for idx < len(s) && isDigit(s[idx]) {
			idx++
		}
	case s[idx] == '0':
		idx++
	default:
		return nil, 0, p.errAt("Expecting value", start)
	}
	isFloat := false
	if idx+1 < len(s) && s[idx] == '.' && isDigit(s[idx+1]) {
		isFloat = true
		idx += 2
		for idx < len(s) && isDigit(s[idx]) {
			idx++
		}
	}
	if idx+1 < len(s) && (s[idx] == 'e' || s[idx] == 'E') {
		eStart := idx
		idx++
		if idx+1 < len(s) && (s[idx] == '-' || s[idx] == '+') {
			idx++
		}
		for idx < len(s) && isDigit(s[idx]) {
			idx++
		}
		if isDigit(s[idx-1]) {
			isFloat = true
		} else {
			idx = eStart
		}
	}
	text := s[start:idx]
	if isFloat {
		f, _ := strconv.ParseFloat(text, 64) // the grammar above guarantees the syntax
		if math.IsInf(f, 0) {
			// 1e400 would parse to inf, which JSON cannot carry back out.
			return nil, 0, &jsonError{"number " + clipBytes(text, 32) + " is out of range"}
		}
		return &value{kind: jFloat, text: pyFloatRepr(f), f: f}, idx, nil
	}
	digits := len(strings.TrimPrefix(text, "-"))
	if digits > maxIntDigits {
		return nil, 0, &jsonError{"Exceeds the limit (" + strconv.Itoa(maxIntDigits) +
			" digits) for integer string conversion: value has " + strconv.Itoa(digits) +
			" digits; use sys.set_int_max_str_digits() to increase the limit"}
	}
	if text == "-0" {
		text = "0" // int("-0") is 0
	}
	f, _ := strconv.ParseFloat(text, 64) // +-Inf for a huge int: still compares right
	return &value{kind: jInt, text: text, f: f}, idx, nil
}

func (p *parser) scanObject(idx int) (*value, int, error) {
	s := p.s
	obj := newObject()
	idx = p.skipWS(idx)
	if idx >= len(s) || s[idx] != '}' {
		for {
			if idx >= len(s) || s[idx] != '"' {
				return nil, 0, p.errAt("Expecting property name enclosed in double quotes", idx)
			}
			key, next, err := p.scanString(idx + 1)
			if err != nil {
				return nil, 0, err
			}
			idx = p.skipWS(next)
			if idx >= len(s) || s[idx] != ':' {
				return nil, 0, p.errAt("Expecting ':' delimiter", idx)
			}
			val, next, err := p.scan(p.skipWS(idx + 1))
			if err != nil {
				return nil, 0, err
			}
			obj.set(key, val)
			idx = p.skipWS(next)
			if idx < len(s) && s[idx] == '}' {
				break
			}
			if idx >= len(s) || s[idx] != ',' {
				return nil, 0, p.errAt("Expecting ',' delimiter", idx)
			}
			idx = p.skipWS(idx + 1)
		}
	}
	return objValue(obj), idx + 1, nil
}

func (p *parser) scanArray(idx int) (*value, int, error) {
	s := p.s
	var items []*value
	idx = p.skipWS(idx)
	if idx >= len(s) || s[idx] != ']' {
		for {
			val, next, err := p.scan(idx)
			if err != nil {
				return nil, 0, err
			}
			items = append(items, val)
			idx = p.skipWS(next)
			if idx < len(s) && s[idx] == ']' {
				break
			}
			if idx >= len(s) || s[idx] != ',' {
				return nil, 0, p.errAt("Expecting ',' delimiter", idx)
			}
			idx = p.skipWS(idx + 1)
		}
	}
	return listValue(items), idx + 1, nil
}

// scanString is json's scanstring (strict): end is the index after the opening quote.
func (p *parser) scanString(end int) (string, int, error) {
	s := p.s
	begin := end - 1
	var b strings.Builder
	for {
		next := end
		var c byte
		for ; next < len(s); next++ {
			c = s[next]
			if c == '"' || c == '\\' {
				break
			}
			if c <= 0x1f {
				return "", 0, p.errAt("Invalid control character at", next)
			}
		}
		if next >= len(s) {
			return "", 0, p.errAt("Unterminated string starting at", begin)
		}
		b.WriteString(s[end:next])
		next++
		if c == '"' {
			return b.String(), next, nil
		}
		if next == len(s) {
			return "", 0, p.errAt("Unterminated string starting at", begin)
		}
		if s[next] != 'u' {
			end = next + 1
			switch s[next] {
			case '"', '\\', '/':
				b.WriteByte(s[next])
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				return "", 0, p.errAt("Invalid \\escape", end-2)
			}
			continue
		}
		next++
		end = next + 4
		if end >= len(s) {
			return "", 0, p.errAt("Invalid \\uXXXX escape", next-1)
		}
		cp, ok := hex4(s[next:end])
		if !ok {
			return "", 0, p.errAt("Invalid \\uXXXX escape", end-5)
		}
		// A high surrogate escape followed by a low one is one character.
		if cp >= 0xd800 && cp <= 0xdbff && end+6 < len(s) && s[end] == '\\' && s[end+1] == 'u' {
			lo, ok := hex4(s[end+2 : end+6])
			if !ok {
				return "", 0, p.errAt("Invalid \\uXXXX escape", end+1)
			}
			if lo >= 0xdc00 && lo <= 0xdfff {
				cp = 0x10000 + (cp-0xd800)<<10 + (lo - 0xdc00)
				end += 6
			}
		}
		appendCP(&b, cp)
	}
}

func hex4(s string) (rune, bool) {
	var cp rune
	for i := 0; i < 4; i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			cp = cp<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			cp = cp<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			cp = cp<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return cp, true
}

// checkUTF8 is bytes.decode("utf-8") (strict), with Python's error message.
func checkUTF8(raw []byte) error {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c < 0x80 {
			i++
			continue
		}
		need, lo, hi := 0, byte(0x80), byte(0xbf)
		switch {
		case c >= 0xc2 && c <= 0xdf:
			need = 1
		case c >= 0xe0 && c <= 0xef:
			need = 2
			if c == 0xe0 {
				lo = 0xa0
			} else if c == 0xed {
				hi = 0x9f // surrogates are not UTF-8
			}
		case c >= 0xf0 && c <= 0xf4:
			need = 3
			if c == 0xf0 {
				lo = 0x90
			} else if c == 0xf4 {
				hi = 0x8f
			}
		default:
			return utf8Error(raw, i, 1, "invalid start byte")
		}
		for k := 1; k <= need; k++ {
			if i+k >= len(raw) {
				return utf8Error(raw, i, k, "unexpected end of data")
			}
			b := raw[i+k]
			if k == 1 && (b < lo || b > hi) || k > 1 && b&0xc0 != 0x80 {
				return utf8Error(raw, i, k, "invalid continuation byte")
			}
		}
		i += need + 1
	}
	return nil
}

func utf8Error(raw []byte, pos, n int, reason string) error {
	if n == 1 {
		return &jsonError{"'utf-8' codec can't decode byte 0x" + hex2(raw[pos]) + " in position " +
			strconv.Itoa(pos) + ": " + reason}
	}
	return &jsonError{"'utf-8' codec can't decode bytes in position " + strconv.Itoa(pos) + "-" +
		strconv.Itoa(pos+n-1) + ": " + reason}
}

// ----------------------------------------------------------------------------- WTF-8

// appendCP appends one code point, lone surrogates included (utf8.EncodeRune would
// replace those with U+FFFD).
func appendCP(b *strings.Builder, cp rune) {
	if cp >= 0xd800 && cp <= 0xdfff {
		b.WriteByte(byte(0xe0 | cp>>12))
		b.WriteByte(byte(0x80 | (cp>>6)&0x3f))
		b.WriteByte(byte(0x80 | cp&0x3f))
		return
	}
	b.WriteRune(cp)
}

// nextCP decodes the code point at s[i:], lone surrogates included.
func nextCP(s string, i int) (rune, int) {
	c := s[i]
	if c < 0x80 {
		return rune(c), 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && n == 1 && c == 0xed && i+2 < len(s) &&
		s[i+1] >= 0xa0 && s[i+1] <= 0xbf && s[i+2]&0xc0 == 0x80 {
		return 0xd000 | rune(s[i+1]&0x3f)<<6 | rune(s[i+2]&0x3f), 3
	}
	return r, n
}

// fromEnv decodes environment bytes as Python does (UTF-8 with surrogateescape): each
// byte that is not part of valid UTF-8 becomes the lone surrogate U+DC00+byte.
func fromEnv(raw string) string {
	if utf8.ValidString(raw) {
		return raw
	}
	var b strings.Builder
	for i := 0; i < len(raw); {
		r, n := utf8.DecodeRuneInString(raw[i:])
		if r == utf8.RuneError && n == 1 {
			appendCP(&b, 0xdc00+rune(raw[i]))
		} else {
			b.WriteString(raw[i : i+n])
		}
		i += n
	}
	return b.String()
}

// fsEncode is os.fsencode: the bytes a path names. Only surrogates U+DC80..U+DCFF (bytes
// that came in through surrogateescape) can be encoded; ok is false for any other.
func fsEncode(s string) (string, bool) {
	if utf8.ValidString(s) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		cp, n := nextCP(s, i)
		switch {
		case cp >= 0xdc80 && cp <= 0xdcff:
			b.WriteByte(byte(cp - 0xdc00))
		case cp >= 0xd800 && cp <= 0xdfff:
			return "", false
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String(), true
}

// ----------------------------------------------------------------------------- encoding

// encodeJSON is json.dumps(v, separators=(itemSep, keySep)) with ensure_ascii.
func encodeJSON(v *value, itemSep, keySep string) string {
	var b strings.Builder
	writeJSON(&b, v, itemSep, keySep)
	return b.String()
}

func writeJSON(b *strings.Builder, v *value, itemSep, keySep string) {
	switch v.kind {
	case jNull:
		b.WriteString("null")
	case jBool:
		if v.b {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case jInt, jFloat:
		b.WriteString(v.text)
	case jString:
		writeJSONString(b, v.text)
	case jArray:
		b.WriteByte('[')
		for i, item := range v.items {
			if i > 0 {
				b.WriteString(itemSep)
			}
			writeJSON(b, item, itemSep, keySep)
		}
		b.WriteByte(']')
	case jObject:
		b.WriteByte('{')
		for i, m := range v.obj.members {
			if i > 0 {
				b.WriteString(itemSep)
			}
			writeJSONString(b, m.key)
			b.WriteString(keySep)
			writeJSON(b, m.val, itemSep, keySep)
		}
		b.WriteByte('}')
	}
}

const hexDigits = "0123456789abcdef"

func hex2(c byte) string { return string([]byte{hexDigits[c>>4], hexDigits[c&0xf]}) }

func writeU(b *strings.Builder, cp rune) {
	b.WriteString(`\u`)
	for shift := 12; shift >= 0; shift -= 4 {
		b.WriteByte(hexDigits[(cp>>uint(shift))&0xf])
	}
}

// writeJSONString is json's encode_basestring_ascii.
func writeJSONString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); {
		cp, n := nextCP(s, i)
		i += n
		switch {
		case cp == '"' || cp == '\\':
			b.WriteByte('\\')
			b.WriteByte(byte(cp))
		case cp == '\b':
			b.WriteString(`\b`)
		case cp == '\f':
			b.WriteString(`\f`)
		case cp == '\n':
			b.WriteString(`\n`)
		case cp == '\r':
			b.WriteString(`\r`)
		case cp == '\t':
			b.WriteString(`\t`)
		case cp >= ' ' && cp <= '~':
			b.WriteByte(byte(cp))
		case cp >= 0x10000:
			cp -= 0x10000
			writeU(b, 0xd800|(cp>>10)&0x3ff)
			writeU(b, 0xdc00|cp&0x3ff)
		default:
			writeU(b, cp)
		}
	}
	b.WriteByte('"')
}
