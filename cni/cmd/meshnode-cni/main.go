// meshnode-cni is a chained CNI plugin (spec 0.3.0 to 1.1.0) that enrols pods with the
// meshnode node agent.
//
// The plugin itself changes nothing in the pod. On ADD it tells the agent (over a unix
// stream socket, one JSON line each way, see docs/cni-protocol.md) which netns, pod and IPs
// were just created, waits for the agent to install the redirection and passes prevResult
// through. If the agent cannot confirm capture, ADD fails so the runtime retries the
// sandbox: a pod must never start uncaptured (fail closed). DEL is best-effort and always
// succeeds; CHECK, STATUS and GC are forwarded to the agent; VERSION is answered here.
//
// It is a thin messenger: every decision about a pod is the agent's. It is a static binary
// with only Go's standard library, so a node needs no interpreter for it.
//
// Invariants: stdout carries exactly one document (the result, an error object, or
// nothing); logs go to stderr (and optionally a log file) as JSON lines; nothing is ever
// printed by a panic; every blocking operation has a deadline.
package main

import (
	"strings"
	"syscall"
	"time"
)

// Well-known CNI error codes (spec 1.1, section "Error").
const (
	errIncompatibleVersion = 1
	errInvalidEnvironment  = 4
	errDecode              = 6
	errInvalidConfig       = 7
	errTryAgainLater       = 11
	errPluginNotAvailable  = 50
	errLimitedConnectivity = 51
	// Plugin-specific (the spec leaves 100+ to plugins): CHECK found the pod's redirection
	// missing or drifted. Not 11: retrying CHECK does not repair anything, and the runtime
	// may treat a failed CHECK as "this container is misconfigured", which is exactly the case.
	errCaptureDrift = 100
	errInternal     = 999
)

const (
	maxStdinBytes = 1 << 20
	// A runtime always closes stdin after writing the config; this only guards against a
	// caller that keeps the pipe open, so that the plugin cannot hang on it.
	stdinTimeout = 30 * time.Second
)

// cniError is an error to report to the runtime as a spec error object. The code is kept as
// decimal text: an agent's code of any size passes through unchanged.
type cniError struct {
	code    string
	msg     string
	details string
}

func (e *cniError) Error() string { return e.msg }

func cniErr(code int, msg, details string) *cniError { return &cniError{itoa(code), msg, details} }

// osError is an unexpected system error, reported as the old plugin reported an uncaught
// OSError: code 999, the Python exception name, "[Errno N] Message".
func osError(err error) *cniError {
	msg, details := "internal error in meshnode-cni: OSError", err.Error()
	if errno, ok := err.(syscall.Errno); ok {
		text := errno.Error()
		details = "[Errno " + itoa(int(errno)) + "] " + strings.ToUpper(text[:1]) + text[1:]
		if name, ok := pythonOSErrors[errno]; ok {
			msg = "internal error in meshnode-cni: " + name
		}
	}
	return &cniError{itoa(errInternal), msg, clip(details, 300)}
}

var pythonOSErrors = map[syscall.Errno]string{
	syscall.EAGAIN: "BlockingIOError", syscall.EPIPE: "BrokenPipeError",
	syscall.ECONNRESET: "ConnectionResetError", syscall.ENOENT: "FileNotFoundError",
	syscall.EINTR: "InterruptedError", syscall.EISDIR: "IsADirectoryError",
	syscall.ENOTDIR: "NotADirectoryError", syscall.EACCES: "PermissionError",
	syscall.EPERM: "PermissionError",
}

var commands = map[string]func(*object, *logger) ([]byte, error){
	"ADD": cmdAdd, "DEL": cmdDel, "CHECK": cmdCheck, "STATUS": cmdStatus, "GC": cmdGC,
}

func main() {
	io := prepareStdio()
	log := &logger{stderr: io.err}
	output, code := run(io, log)
	if io.out {
		_ = writeAll(1, output) // the runtime closed our stdout: nothing left to tell it
	}
	syscall.Exit(code)
}

// run is one CNI invocation: the bytes for stdout and the exit status.
func run(io stdio, log *logger) (output []byte, status int) {
	command := getenv("CNI_COMMAND")
	log.setField("cmd", strValue(clip(command, 16)))
	version := preferredVersion // for errors raised before the config is understood
	defer func() {
		// A bug must still end in an error object, never in a goroutine dump.
		if r := recover(); r != nil {
			msg, details := "internal error in meshnode-cni: panic", "unknown"
			switch x := r.(type) {
			case error:
				details = clip(x.Error(), 300)
			case string:
				details = clip(x, 300)
			}
			output, status = errorOutput(version, &cniError{itoa(errInternal), msg, details}), 1
			log.error(msg, field("code", intValue(errInternal)), field("error", strValue(details)))
		}
	}()
	var err error
	switch {
	case command == "VERSION":
		output = versionInfo() // takes no config; never blocks on stdin
	case commands[command] != nil:
		var raw []byte
		if raw, err = readStdin(io.in, maxStdinBytes, stdinTimeout); err != nil {
			break
		}
		var conf *object
		if conf, err = decodeConfig(raw); err != nil {
			break
		}
		if v := conf.get("cniVersion"); v != nil && v.kind == jString && supported(v.text) {
			version = v.text // errors echo the config's version (spec)
		}
		output, err = commands[command](conf, log)
	default:
		err = cniErr(errInvalidEnvironment, "unknown CNI_COMMAND "+pyRepr(clip(command, 128)), "")
	}
	if err != nil {
		e := err.(*cniError)
		log.error(e.msg, field("code", &value{kind: jInt, text: e.code}))
		return errorOutput(version, e), 1
	}
	return output, 0
}

func decodeConfig(raw []byte) (*object, error) {
	conf, err := decodeJSON(raw)
	if err != nil {
		return nil, cniErr(errDecode, "failed to decode the network configuration", clip(err.Error(), 300))
	}
	if conf.kind != jObject {
		return nil, cniErr(errInvalidConfig, "network configuration must be a JSON object", "")
	}
	return conf.obj, nil
}

func versionInfo() []byte {
	o := newObject()
	o.set("cniVersion", strValue(preferredVersion))
	o.set("supportedVersions", strList(supportedVersions))
	return dump(objValue(o))
}

func errorOutput(version string, e *cniError) []byte {
	o := newObject()
	o.set("cniVersion", strValue(version))
	o.set("code", &value{kind: jInt, text: e.code})
	o.set("msg", strValue(e.msg))
	o.set("details", strValue(e.details))
	return dump(objValue(o))
}

func dump(v *value) []byte { return []byte(encodeJSON(v, ", ", ": ") + "\n") }
