package testutil

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

// LineLog is an io.Writer for a program's output in a test: every complete
// line goes to T.Log as it arrives, so -v shows progress and a failure
// shows the output. Safe for concurrent writers (stdout and stderr).
type LineLog struct {
	T testing.TB

	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *LineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil {
			l.buf.WriteString(line) // incomplete: kept for the next write
			return len(p), nil
		}
		l.T.Log(strings.TrimSuffix(line, "\n"))
	}
}

// Flush logs what is left after the last newline.
func (l *LineLog) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 0 {
		l.T.Log(l.buf.String())
		l.buf.Reset()
	}
}
