package main

// prevResult: the interface plugin's result, which the plugin reads the pod's addresses
// from and passes on (relabelled to the config's cniVersion).

import (
	"strconv"
	"strings"
)

func prevResult(conf *object, required bool) (*object, error) {
	v := conf.get("prevResult")
	if v == nil || v.kind == jNull {
		if required {
			return nil, cniErr(errInvalidConfig, "missing prevResult: meshnode-cni is a chained plugin "+
				"and must follow an interface plugin in the conflist", "")
		}
		return nil, nil
	}
	if v.kind != jObject {
		return nil, cniErr(errInvalidConfig, "prevResult must be a JSON object", "")
	}
	return v.obj, nil
}

// extractIPs is the pod's addresses from prevResult.ips, canonical, without prefix length,
// without repeats.
func extractIPs(prev *object) ([]string, error) {
	entries := prev.get("ips")
	if entries == nil || entries.kind == jNull {
		return []string{}, nil
	}
	if entries.kind != jArray {
		return nil, cniErr(errInvalidConfig, "prevResult.ips must be a list", "")
	}
	ips := []string{}
	for i, entry := range entries.items {
		var address *value
		if entry.kind == jObject {
			address = entry.obj.get("address")
		}
		ip, ok := "", false
		if address != nil && address.kind == jString {
			ip, ok = parseCIDR(address.text)
		}
		if !ok {
			got := "null"
			if address != nil {
				got = encodeJSON(address, ", ", ": ")
			}
			return nil, cniErr(errInvalidConfig, "prevResult.ips["+itoa(i)+
				"].address is not an IP address in CIDR notation", "got "+clip(got, 128))
		}
		seen := false
		for _, have := range ips {
			seen = seen || have == ip
		}
		if !seen {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}

// parseCIDR is the address of "address[/prefix]" in inet_ntop's canonical form. The prefix
// is ASCII digits within the family's width; the address is what glibc's inet_pton accepts
// (no IPv6 zone, no IPv4 octet with a leading zero).
func parseCIDR(text string) (string, bool) {
	address, prefix, hasPrefix := strings.Cut(text, "/")
	v6 := strings.IndexByte(address, ':') >= 0
	bits := 32
	if v6 {
		bits = 128
	}
	if hasPrefix {
		if prefix == "" {
			return "", false
		}
		for i := 0; i < len(prefix); i++ {
			if !isDigit(prefix[i]) {
				return "", false
			}
		}
		digits := strings.TrimLeft(prefix, "0") // int("0024") is 24
		if n, _ := strconv.Atoi("0" + digits); len(digits) > 3 || n > bits {
			return "", false
		}
	}
	if v6 {
		var a [16]byte
		if !inetPton6(address, &a) {
			return "", false
		}
		return inetNtop6(&a), true
	}
	var a [4]byte
	if !inetPton4(address, a[:]) {
		return "", false
	}
	return inetNtop4(a[:]), true
}

// inetPton4 is glibc's inet_pton4: exactly four decimal octets, no leading zeros.
func inetPton4(s string, dst []byte) bool {
	var tmp [4]byte
	octets, sawDigit, cur := 0, false, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isDigit(c):
			n := int(tmp[cur])*10 + int(c-'0')
			if sawDigit && tmp[cur] == 0 || n > 255 {
				return false
			}
			tmp[cur] = byte(n)
			if !sawDigit {
				if octets++; octets > 4 {
					return false
				}
				sawDigit = true
			}
		case c == '.' && sawDigit:
			if octets == 4 {
				return false
			}
			cur++
			tmp[cur] = 0
			sawDigit = false
		default:
			return false
		}
	}
	if octets < 4 {
		return false
	}
	copy(dst, tmp[:])
	return true
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// inetPton6 is glibc's inet_pton6: up to four hex digits per group, one "::", an
// embedded dotted quad only at the end.
func inetPton6(s string, dst *[16]byte) bool {
	var tmp [16]byte
	tp, colonp := 0, -1
	i := 0
	if len(s) == 0 {
		return false
	}
	if s[0] == ':' {
		if len(s) < 2 || s[1] != ':' {
			return false
		}
		i = 1
	}
	curtok, digits, val := i, 0, 0
	for i < len(s) {
		c := s[i]
		i++
		if d := hexVal(c); d >= 0 {
			if digits == 4 {
				return false
			}
			val = val<<4 | d
			digits++
			continue
		}
		if c == ':' {
			curtok = i
			if digits == 0 {
				if colonp >= 0 {
					return false
				}
				colonp = tp
				continue
			} else if i == len(s) {
				return false
			}
			if tp+2 > 16 {
				return false
			}
			tmp[tp], tmp[tp+1] = byte(val>>8), byte(val)
			tp += 2
			digits, val = 0, 0
			continue
		}
		if c == '.' && tp+4 <= 16 && inetPton4(s[curtok:], tmp[tp:tp+4]) {
			tp += 4
			digits = 0
			break
		}
		return false
	}
	if digits > 0 {
		if tp+2 > 16 {
			return false
		}
		tmp[tp], tmp[tp+1] = byte(val>>8), byte(val)
		tp += 2
	}
	if colonp >= 0 {
		if tp == 16 {
			return false // "::" would stand for no group at all
		}
		n := tp - colonp
		copy(tmp[16-n:], tmp[colonp:tp])
		for k := colonp; k < 16-n; k++ {
			tmp[k] = 0
		}
		tp = 16
	}
	if tp != 16 {
		return false
	}
	*dst = tmp
	return true
}

func inetNtop4(a []byte) string {
	return itoa(int(a[0])) + "." + itoa(int(a[1])) + "." + itoa(int(a[2])) + "." + itoa(int(a[3]))
}

// inetNtop6 is glibc's inet_ntop6: the first longest run (two or more) of zero groups
// becomes "::"; ::a.b.c.d and ::ffff:a.b.c.d keep the dotted quad.
func inetNtop6(a *[16]byte) string {
	var words [8]int
	for i := range words {
		words[i] = int(a[2*i])<<8 | int(a[2*i+1])
	}
	bestBase, bestLen, curBase, curLen := -1, 0, -1, 0
	for i, w := range words {
		if w == 0 {
			if curBase == -1 {
				curBase, curLen = i, 1
			} else {
				curLen++
			}
			continue
		}
		if curBase != -1 {
			if bestBase == -1 || curLen > bestLen {
				bestBase, bestLen = curBase, curLen
			}
			curBase = -1
		}
	}
	if curBase != -1 && (bestBase == -1 || curLen > bestLen) {
		bestBase, bestLen = curBase, curLen
	}
	if bestBase != -1 && bestLen < 2 {
		bestBase = -1
	}
	var b strings.Builder
	for i := 0; i < 8; i++ {
		if bestBase != -1 && i >= bestBase && i < bestBase+bestLen {
			if i == bestBase {
				b.WriteByte(':')
			}
			continue
		}
		if i != 0 {
			b.WriteByte(':')
		}
		if i == 6 && bestBase == 0 && (bestLen == 6 || bestLen == 5 && words[5] == 0xffff) {
			b.WriteString(inetNtop4(a[12:]))
			return b.String()
		}
		b.WriteString(strconv.FormatInt(int64(words[i]), 16))
	}
	if bestBase != -1 && bestBase+bestLen == 8 {
		b.WriteByte(':')
	}
	return b.String()
}

// convertResult is prevResult relabelled as the config's cniVersion, as the spec requires.
// Between the 0.3.x/0.4.0 and 1.x layouts the one structural difference is ips[].version,
// which 1.0.0 removed; it is dropped or derived here.
func convertResult(prev *object, version string) (*object, error) {
	source := version
	if v := prev.get("cniVersion"); prev.has("cniVersion") {
		if v.kind != jString || !supported(v.text) {
			return nil, cniErr(errIncompatibleVersion, "prevResult has unsupported cniVersion "+
				clip(encodeJSON(v, ", ", ": "), 128), "supported versions: "+strings.Join(supportedVersions, ", "))
		}
		source = v.text
	}
	result := prev.clone()
	result.set("cniVersion", strValue(version))
	toLegacy := legacyResult(version)
	if ips := result.get("ips"); toLegacy != legacyResult(source) && ips != nil && ips.kind == jArray {
		converted := make([]*value, len(ips.items))
		for i, ip := range ips.items {
			converted[i] = convertIP(ip, toLegacy)
		}
		result.set("ips", listValue(converted))
	}
	return result, nil
}

func convertIP(ip *value, toLegacy bool) *value {
	if ip.kind != jObject {
		return ip
	}
	address := ip.obj.get("address")
	if address == nil || address.kind != jString {
		return ip // extractIPs has refused these already; stay total anyway
	}
	c := ip.obj.clone()
	if toLegacy {
		family := "4"
		if strings.IndexByte(address.text, ':') >= 0 {
			family = "6"
		}
		c.set("version", strValue(family))
	} else {
		c.del("version")
	}
	return objValue(c)
}
