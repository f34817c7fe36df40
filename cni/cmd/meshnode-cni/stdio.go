package main

// Standard streams, read and written with raw system calls. Raw writes matter: Go's os.File
// turns EPIPE on fd 1 or 2 into death by SIGPIPE, and a runtime that closed our stdout
// early must not see the plugin killed by a signal (the old plugin, like any Python
// program, ignored SIGPIPE too).

import (
	"syscall"
	"time"
	"unsafe"
)

// stdio says which of fds 0, 1, 2 the runtime left open.
type stdio struct {
	in, out, err bool
}

// prepareStdio finds which standard fds are closed and plugs each with a harmless fd, so
// that a socket or file opened later can never become fd 1 or 2 and receive our output or
// logs. A closed stream stays "closed" to the plugin: stdin gives the decode error, stdout
// and stderr output is dropped.
func prepareStdio() stdio {
	var open [3]bool
	for fd := 0; fd < 3; fd++ {
		_, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
		open[fd] = e != syscall.EBADF
	}
	if !open[0] || !open[1] || !open[2] {
		// "/" exists even in a chroot without /dev; reads and writes on it just fail.
		if root, err := syscall.Open("/", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0); err == nil {
			for fd := 0; fd < 3; fd++ {
				if !open[fd] && fd != root {
					_ = syscall.Dup3(root, fd, syscall.O_CLOEXEC)
				}
			}
			if root > 2 {
				syscall.Close(root)
			}
		}
	}
	return stdio{in: open[0], out: open[1], err: open[2]}
}

// writeAll writes p to fd, retrying short writes and EINTR; it gives up on any error.
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := syscall.Write(fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

const pollIn = 0x1

// waitReadable waits up to d for fd to be readable (or at EOF, or in error). ppoll, not
// poll: arm64 has only the former.
func waitReadable(fd int, d time.Duration) bool {
	if d <= 0 {
		return false
	}
	ts := syscall.NsecToTimespec(int64(d))
	pfd := pollFd{fd: int32(fd), events: pollIn}
	n, _, e := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1,
		uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	return e == 0 && n > 0
}

// readStdin reads the whole configuration: more than limit bytes, or a writer that does not
// close stdin within timeout, is an error (the pipe must never hang the plugin).
func readStdin(open bool, limit int, timeout time.Duration) ([]byte, error) {
	if !open {
		return nil, cniErr(errDecode, "stdin is closed; expected the network configuration", "")
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 0, 4096)
	chunk := make([]byte, 65536)
	for len(buf) <= limit {
		if !waitReadable(0, time.Until(deadline)) {
			if time.Until(deadline) > 0 {
				continue // EINTR
			}
			return nil, cniErr(errDecode, "timed out reading the network configuration from stdin",
				"stdin was not closed within "+pyG(timeout.Seconds())+" seconds")
		}
		want := limit + 1 - len(buf)
		if want > len(chunk) {
			want = len(chunk)
		}
		n, err := syscall.Read(0, chunk[:want])
		if err == syscall.EINTR || err == syscall.EAGAIN {
			continue // EAGAIN: a non-blocking stdin; wait for it again
		}
		if err != nil {
			return nil, osError(err)
		}
		if n == 0 {
			break
		}
		buf = append(buf, chunk[:n]...)
	}
	if len(buf) > limit {
		return nil, cniErr(errInvalidConfig, "network configuration on stdin exceeds "+
			itoa(limit)+" bytes", "refusing to parse an oversized configuration")
	}
	return buf, nil
}
