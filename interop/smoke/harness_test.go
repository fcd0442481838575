package smoke

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventTimeout bounds every wait for an event; it is a failure deadline, not
// a synchronisation delay, and is generous for a busy 2-core machine.
const eventTimeout = 60 * time.Second

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "opamp-interop-smoke-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	if os.Getenv("INTEROP_SMOKE_RACE") != "" {
		// Build the programs with the race detector; a report fails their run.
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/goagent", "./cmd/goserver")...)
	build.Dir = ".."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the interop programs:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type event map[string]any

func (e event) str(key string) string {
	s, _ := e[key].(string)
	return s
}

func (e event) obj(key string) event {
	m, _ := e[key].(map[string]any)
	return event(m)
}

// proc is one goagent or goserver under test.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan event

	mu  sync.Mutex
	log []string
	// backlog holds events read while waiting for something else; every wait
	// returns the earliest matching event that no earlier wait returned.
	backlog []event
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, cmd: cmd, stdin: stdin, events: make(chan event, 4096)}
	go func() {
		defer close(p.events)
		scanner := bufio.NewScanner(stdout)
		scanner.Buffer(make([]byte, 0, 64<<10), 64<<20)
		for scanner.Scan() {
			line := scanner.Text()
			p.mu.Lock()
			p.log = append(p.log, line)
			p.mu.Unlock()
			var ev event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				ev = event{"event": "unparsable", "line": line}
			}
			p.events <- ev
		}
	}()
	t.Cleanup(func() {
		_ = p.stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(eventTimeout):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			p.mu.Lock()
			t.Logf("--- %s output ---\n%s", name, strings.Join(p.log, "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

func (p *proc) send(cmd map[string]any) {
	p.t.Helper()
	line, err := json.Marshal(cmd)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.stdin.Write(append(line, '\n')); err != nil {
		p.t.Fatalf("%s: writing command: %v", p.name, err)
	}
}

// waitFor returns the earliest not yet returned event that satisfies match.
func (p *proc) waitFor(what string, match func(event) bool) event {
	p.t.Helper()
	for i, ev := range p.backlog {
		if match(ev) {
			p.backlog = append(p.backlog[:i], p.backlog[i+1:]...)
			return ev
		}
	}
	deadline := time.NewTimer(eventTimeout)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-p.events:
			if !ok {
				p.t.Fatalf("%s exited while waiting for %s", p.name, what)
			}
			if ev.str("event") == "fatal" {
				p.t.Fatalf("%s failed: %v", p.name, ev)
			}
			if match(ev) {
				return ev
			}
			p.backlog = append(p.backlog, ev)
		case <-deadline.C:
			p.t.Fatalf("%s: no %s within %s", p.name, what, eventTimeout)
		}
	}
}

func (p *proc) waitEvent(name string) event {
	p.t.Helper()
	return p.waitFor(name, func(ev event) bool { return ev.str("event") == name })
}

// ack waits for the ack of the command with the given id and fails on its error.
func (p *proc) ack(id string) event {
	p.t.Helper()
	ev := p.waitFor("ack "+id, func(ev event) bool {
		return (ev.str("event") == "ack" || ev.str("event") == "error") && ev.str("id") == id
	})
	if ev.str("event") == "error" {
		p.t.Fatalf("%s: command %s failed: %v", p.name, id, ev)
	}
	return ev
}

func startServer(t *testing.T, args ...string) (*proc, event) {
	t.Helper()
	srv := start(t, "goserver", append([]string{"--listen", "127.0.0.1:0"}, args...)...)
	listening := srv.waitEvent("listening")
	return srv, listening
}

func endpoint(listening event, transport string) string {
	if transport == "ws" {
		return listening.str("ws_url")
	}
	return listening.str("http_url")
}
