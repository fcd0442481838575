// Package jsonl is the line protocol shared by goagent and goserver: events go
// to stdout as one JSON object per line, commands arrive on stdin the same way.
package jsonl

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// Fields are the payload of one event besides its name.
type Fields map[string]any

// Emitter writes events; it is safe for concurrent use so that callbacks from
// any goroutine can report what they saw without interleaving lines.
type Emitter struct {
	mu  sync.Mutex
	out io.Writer
}

// NewEmitter writes events to out.
func NewEmitter(out io.Writer) *Emitter {
	return &Emitter{out: out}
}

// Emit writes {"event": name, ...fields} as one line. A field named "event"
// in fields is overwritten by name.
func (e *Emitter) Emit(name string, fields Fields) {
	record := make(map[string]any, len(fields)+1)
	for k, v := range fields {
		record[k] = v
	}
	record["event"] = name
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Config bodies and URLs are easier to read unescaped, and the reader is a test.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(record); err != nil {
		buf.Reset()
		fmt.Fprintf(&buf, "{\"event\":\"emit_error\",\"name\":%q,\"error\":%q}\n", name, err.Error())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	_, _ = e.out.Write(buf.Bytes())
}

// Header is the part every command line has in common.
type Header struct {
	// Cmd names the command.
	Cmd string `json:"cmd"`
	// ID is echoed back in the ack or error event so a driver can correlate.
	ID string `json:"id,omitempty"`
}

// MaxLineBytes bounds one command line (package contents travel inline).
const MaxLineBytes = 64 << 20

// ReadCommands calls handle for every non-blank line of in, in order, until
// in ends. The raw line is passed on so that handle can decode the command's
// own fields strictly.
func ReadCommands(in io.Reader, handle func(h Header, raw []byte)) error {
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 0, 64<<10), MaxLineBytes)
	for scanner.Scan() {
		line := bytes.TrimSpace(scanner.Bytes())
		if len(line) == 0 {
			continue
		}
		raw := append([]byte(nil), line...)
		var h Header
		if err := json.Unmarshal(raw, &h); err != nil {
			handle(Header{Cmd: ""}, raw)
			continue
		}
		handle(h, raw)
	}
	return scanner.Err()
}

// DecodeStrict fills v from raw and rejects unknown fields, so a typo in a
// test's command fails loudly instead of being ignored.
func DecodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
