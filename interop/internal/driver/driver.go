// Package driver is what goagent and goserver share around their own logic:
// running until told to stop, answering commands, opamp-go's log lines as
// events, and stopping an opamp-go server (goloadserver too).
package driver

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/open-telemetry/opamp-go/protobufs"
	opampserver "github.com/open-telemetry/opamp-go/server"
	"github.com/open-telemetry/opamp-go/server/types"

	"github.com/opamp-rs/opamp-rs/interop/internal/jsonl"
)

// DefaultCustomCapability is announced unless --custom-capability is given.
const DefaultCustomCapability = "io.opamp-rs.interop"

// ListFlag is a repeatable string flag.
type ListFlag []string

func (l *ListFlag) String() string     { return strings.Join(*l, ",") }
func (l *ListFlag) Set(v string) error { *l = append(*l, v); return nil }

// Or is l, or a list of only value when l is empty.
func (l ListFlag) Or(value string) ListFlag {
	if len(l) == 0 {
		return ListFlag{value}
	}
	return l
}

// Fatal reports err as a "fatal" event and exits with status 2.
func Fatal(events *jsonl.Emitter, err error) {
	events.Emit("fatal", jsonl.Fields{"error": err.Error()})
	os.Exit(2)
}

// Program is a running goagent or goserver.
type Program interface {
	// Handle carries out one command line (stop is handled by Run).
	Handle(h jsonl.Header, raw []byte)
	// Stop shuts the program down; reason says why.
	Stop(reason string)
}

// Main starts a program with events going to stdout and runs it (Run); a
// start error is fatal.
func Main(start func(events *jsonl.Emitter) (Program, error)) {
	events := jsonl.NewEmitter(os.Stdout)
	p, err := start(events)
	if err != nil {
		Fatal(events, err)
	}
	Run(events, p.Handle, p.Stop)
}

// Run passes every command line on stdin to handle until a "stop" command
// (acknowledged here), the end of input, SIGINT or SIGTERM; then it calls
// stop once, with the reason, and returns.
func Run(events *jsonl.Emitter, handle func(h jsonl.Header, raw []byte), stop func(reason string)) {
	done := make(chan struct{})
	var stopOnce sync.Once
	stopping := func(reason string) {
		stopOnce.Do(func() {
			stop(reason)
			close(done)
		})
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		stopping("signal " + sig.String())
	}()
	go func() {
		err := jsonl.ReadCommands(os.Stdin, func(h jsonl.Header, raw []byte) {
			if h.Cmd == "stop" {
				events.Emit("ack", jsonl.Fields{"cmd": h.Cmd, "id": h.ID})
				stopping("stop command")
				return
			}
			handle(h, raw)
		})
		if err != nil {
			events.Emit("error", jsonl.Fields{"error": "reading stdin: " + err.Error()})
		}
		stopping("stdin closed")
	}()
	<-done
}

// Reply answers one command with an "ack" or an "error" event carrying the
// command's name and id.
type Reply struct {
	Events *jsonl.Emitter
	Header jsonl.Header
}

// Fail answers with an "error" event.
func (r Reply) Fail(err error) {
	r.Events.Emit("error", jsonl.Fields{"cmd": r.Header.Cmd, "id": r.Header.ID, "error": err.Error()})
}

// Ack answers with an "ack" event holding extra as well.
func (r Reply) Ack(extra jsonl.Fields) {
	fields := jsonl.Fields{"cmd": r.Header.Cmd, "id": r.Header.ID}
	for k, v := range extra {
		fields[k] = v
	}
	r.Events.Emit("ack", fields)
}

// Decode fills v from the command line raw (jsonl.DecodeStrict); when that
// fails it answers with Fail and returns false.
func (r Reply) Decode(raw []byte, v any) bool {
	if err := jsonl.DecodeStrict(raw, v); err != nil {
		r.Fail(err)
		return false
	}
	return true
}

// CustomMessage is the part of a command that describes a custom message.
type CustomMessage struct {
	Capability string `json:"capability"`
	Type       string `json:"type"`
	Data       string `json:"data"`
	DataB64    string `json:"data_b64"`
}

// Message builds the custom message: data_b64, when given, replaces data;
// the capability defaults to capability.
func (c CustomMessage) Message(capability string) (*protobufs.CustomMessage, error) {
	data := []byte(c.Data)
	if c.DataB64 != "" {
		decoded, err := base64.StdEncoding.DecodeString(c.DataB64)
		if err != nil {
			return nil, fmt.Errorf("data_b64: %w", err)
		}
		data = decoded
	}
	if c.Capability != "" {
		capability = c.Capability
	}
	return &protobufs.CustomMessage{Capability: capability, Type: c.Type, Data: data}, nil
}

// EventLogger forwards opamp-go's error log lines (and with Debug its debug
// lines) as "log" events.
type EventLogger struct {
	Events *jsonl.Emitter
	Debug  bool
}

// Debugf emits a debug line when l.Debug is set.
func (l *EventLogger) Debugf(_ context.Context, format string, v ...any) {
	if l.Debug {
		l.Events.Emit("log", jsonl.Fields{"level": "debug", "message": fmt.Sprintf(format, v...)})
	}
}

// Errorf emits an error line.
func (l *EventLogger) Errorf(_ context.Context, format string, v ...any) {
	l.Events.Emit("log", jsonl.Fields{"level": "error", "message": fmt.Sprintf(format, v...)})
}

// StopServer disconnects conns first (opamp-go's Stop leaves hijacked
// WebSocket connections open), then stops srv, waiting at most 10 s.
func StopServer(srv opampserver.OpAMPServer, conns []types.Connection) error {
	for _, conn := range conns {
		_ = conn.Disconnect()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Stop(ctx)
}
