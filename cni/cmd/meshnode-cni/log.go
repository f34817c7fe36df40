package main

// JSON-lines logs on stderr (the runtime's log) and, if configured, appended to log_file.
// Never stdout, never fatal: logging runs on error paths too.

import (
	"strconv"
	"strings"
	"syscall"
	"time"
)

type logger struct {
	stderr  bool   // fd 2 was open at start
	logFile string // "" = none; dropped after the first failure
	fields  []member
}

func (l *logger) setField(key string, v *value) {
	for i := range l.fields {
		if l.fields[i].key == key {
			l.fields[i].val = v
			return
		}
	}
	l.fields = append(l.fields, member{key, v})
}

func (l *logger) log(level, msg string, extra ...member) {
	now := time.Now().UTC()
	record := newObject()
	record.set("ts", strValue(now.Format("2006-01-02T15:04:05")+"."+
		pad3(now.Nanosecond()/int(time.Millisecond))+"Z"))
	record.set("level", strValue(level))
	record.set("logger", strValue("meshnode-cni"))
	record.set("msg", strValue(msg))
	for _, f := range l.fields {
		record.set(f.key, f.val)
	}
	for _, f := range extra {
		record.set(f.key, f.val)
	}
	if !l.stderr {
		return
	}
	line := []byte(encodeJSON(objValue(record), ", ", ": ") + "\n")
	if writeAll(2, line) != nil {
		return
	}
	if l.logFile == "" {
		return
	}
	path, ok := fsEncode(l.logFile)
	if !ok || strings.IndexByte(path, 0) >= 0 {
		l.logFile = "" // not a path this system can open: the file is a convenience copy
		return
	}
	// O_NONBLOCK: a FIFO without a reader must not hang the plugin (ENXIO instead).
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_APPEND|syscall.O_CREAT|
		syscall.O_CLOEXEC|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		l.logFile = "" // stderr already has the record
		return
	}
	if _, err := syscall.Write(fd, line); err != nil {
		l.logFile = ""
	}
	syscall.Close(fd)
}

func (l *logger) info(msg string, extra ...member)  { l.log("info", msg, extra...) }
func (l *logger) warn(msg string, extra ...member)  { l.log("warn", msg, extra...) }
func (l *logger) error(msg string, extra ...member) { l.log("error", msg, extra...) }

func pad3(n int) string {
	s := strconv.Itoa(n)
	return strings.Repeat("0", 3-len(s)) + s
}

func itoa(n int) string { return strconv.Itoa(n) }

func field(key string, v *value) member { return member{key, v} }
