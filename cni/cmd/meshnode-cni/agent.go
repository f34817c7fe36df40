package main

// The exchange with the agent (docs/cni-protocol.md): one JSON line each way over a unix
// stream socket, every step bounded by one deadline for the whole exchange.

import (
	"bytes"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	protocolVersion = 1
	maxReplyBytes   = 64 << 10
	maxSocketPath   = 107 // sun_path is 108 bytes with the terminating NUL
)

// agentError: the agent could not be reached or did not answer sensibly. what completes
// "meshnode agent ...", detail is the low-level cause.
type agentError struct{ what, detail string }

func (e *agentError) describe(socketPath string) string {
	return "meshnode agent " + e.what + " (socket " + socketPath + ": " + e.detail + ")"
}

// callAgent sends one request line and returns the agent's reply object. timeout bounds the
// whole exchange (connect, send, reply). With sendDeadline the request carries deadline_ms,
// what is left of timeout once connected: the agent rolls back an ADD it could not finish
// within it, so a pod reported as failed is never left captured. A relative budget, not a
// time of day: the agent counts it on its own monotonic clock.
func callAgent(path string, req *object, timeout float64, sendDeadline bool) (*object, *agentError) {
	deadline := time.Now().Add(time.Duration(timeout * float64(time.Second)))
	timedOut := &agentError{"did not answer in time", "no reply within " + pyG(timeout) + "s"}
	addr, _ := fsEncode(path) // settings checked it encodes
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, unreachable(err)
	}
	defer syscall.Close(fd)
	for {
		if !setTimeout(fd, deadline) {
			return nil, timedOut
		}
		err = connectUnix(fd, addr)
		if err != syscall.EINTR {
			break
		}
	}
	switch {
	case err == syscall.EAGAIN && time.Until(deadline) <= 0:
		// the agent's listen backlog stayed full until the deadline (SO_SNDTIMEO)
		return nil, timedOut
	case err == syscall.ENOENT || err == syscall.ECONNREFUSED:
		return nil, &agentError{"is not running", strings.ToLower(err.Error())}
	case err != nil:
		return nil, unreachable(err)
	}
	if !setTimeout(fd, deadline) {
		return nil, timedOut
	}
	if sendDeadline {
		ms := int64(time.Until(deadline) / time.Millisecond)
		if ms < 1 {
			ms = 1
		}
		req.set("deadline_ms", intValue(ms))
	}
	payload := []byte(encodeJSON(objValue(req), ",", ":") + "\n")
	for len(payload) > 0 {
		if !setTimeout(fd, deadline) {
			return nil, timedOut
		}
		n, err := sendNoSignal(fd, payload)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return nil, timedOut
		case err != nil:
			return nil, unreachable(err)
		}
		payload = payload[n:]
	}
	line, aerr := readLine(fd, deadline, timedOut)
	if aerr != nil {
		return nil, aerr
	}
	return parseReply(line)
}

func unreachable(err error) *agentError {
	return &agentError{"is not reachable", strings.ToLower(err.Error())}
}

// setTimeout arms SO_SNDTIMEO and SO_RCVTIMEO with what is left until deadline; false if
// nothing is left. (A zero timeval would mean "block forever", hence the 1 µs floor.)
func setTimeout(fd int, deadline time.Time) bool {
	left := time.Until(deadline)
	if left <= 0 {
		return false
	}
	if left < time.Microsecond {
		left = time.Microsecond
	}
	tv := syscall.NsecToTimeval(int64(left))
	if tv.Sec == 0 && tv.Usec == 0 {
		tv.Usec = 1
	}
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	return true
}

// connectUnix connects to a filesystem path. Not syscall.Connect: it would take a path
// starting with "@" for an abstract socket, which the configuration never means.
func connectUnix(fd int, path string) error {
	var sa syscall.RawSockaddrUnix
	sa.Family = syscall.AF_UNIX
	for i := 0; i < len(path); i++ {
		sa.Path[i] = int8(path[i])
	}
	size := unsafe.Offsetof(sa.Path) + uintptr(len(path)) + 1
	_, _, e := syscall.Syscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), size)
	if e != 0 {
		return e
	}
	return nil
}

// sendNoSignal writes with MSG_NOSIGNAL: an agent that hung up gives EPIPE, not SIGPIPE.
func sendNoSignal(fd int, p []byte) (int, error) {
	n, _, e := syscall.Syscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])),
		uintptr(len(p)), syscall.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// readLine reads the reply's first line. An unterminated line followed by EOF is accepted;
// more than maxReplyBytes without a newline is not.
func readLine(fd int, deadline time.Time, timedOut *agentError) ([]byte, *agentError) {
	var buf []byte
	chunk := make([]byte, 65536)
	for bytes.IndexByte(buf, '\n') < 0 {
		if len(buf) > maxReplyBytes {
			return nil, &agentError{"sent a malformed reply", "longer than " + itoa(maxReplyBytes) + " bytes"}
		}
		if !setTimeout(fd, deadline) {
			return nil, timedOut
		}
		n, err := syscall.Read(fd, chunk)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return nil, timedOut
		case err == syscall.ENOENT || err == syscall.ECONNREFUSED:
			return nil, &agentError{"is not running", strings.ToLower(err.Error())}
		case err != nil:
			return nil, unreachable(err)
		}
		if n == 0 {
			break // EOF
		}
		buf = append(buf, chunk[:n]...)
	}
	if i := bytes.IndexByte(buf, '\n'); i >= 0 {
		buf = buf[:i]
	}
	if len(bytes.Trim(buf, " \t\n\r\v\f")) == 0 {
		return nil, &agentError{"closed the connection without replying", "empty reply"}
	}
	return buf, nil
}

func parseReply(line []byte) (*object, *agentError) {
	reply, err := decodeJSON(line)
	if err != nil {
		return nil, &agentError{"sent a malformed reply", "not JSON: " + clip(pyBytesRepr(line), 80)}
	}
	if reply.kind != jObject {
		return nil, &agentError{"sent a malformed reply", "no boolean 'ok': " + clip(pyBytesRepr(line), 80)}
	}
	if ok := reply.obj.get("ok"); ok == nil || ok.kind != jBool {
		return nil, &agentError{"sent a malformed reply", "no boolean 'ok': " + clip(pyBytesRepr(line), 80)}
	}
	return reply.obj, nil
}

// agentFailure is (code, msg, details) from an ok:false reply; code is "" if the agent gave
// no positive integer code. The code is kept as its decimal text: any size passes through.
func agentFailure(reply *object) (string, string, string) {
	code := ""
	if c := reply.get("code"); c != nil && c.kind == jInt && c.text != "0" && c.text[0] != '-' {
		code = c.text
	}
	msg := "no reason given"
	if m := reply.get("msg"); m != nil && m.kind == jString && m.text != "" {
		msg = clip(m.text, 512)
	}
	details := ""
	if d := reply.get("details"); d != nil && d.kind == jString {
		details = clip(d.text, 4096)
	}
	return code, msg, details
}
