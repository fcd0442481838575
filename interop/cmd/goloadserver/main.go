// Command goloadserver is a bare OpAMP server on opamp-go's server package,
// the opamp-go side of the load comparison in benches/ (its Rust
// counterpart is benches/src/bin/loadserver.rs).
//
// goserver reports every message as a JSON line, which would measure JSON
// output rather than opamp-go; this program prints nothing per message.
// It answers every message with the instance uid and its capabilities,
// keeps one record per agent, and offers a remote config to every agent on
// `{"cmd":"offer_remote_config","id":…,"to":"all","name":…,"content_type":…,"body":…}`
// (WebSocket agents at once, every agent in its replies until it reports the
// hash), answering `{"event":"ack","id":…,"hash":…,"targets":N}`.
// The first stdout line is `{"event":"listening","port":N,"addr":…}`.
// `{"cmd":"stop"}`, end of input or SIGTERM stops it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/open-telemetry/opamp-go/protobufs"
	opampserver "github.com/open-telemetry/opamp-go/server"
	"github.com/open-telemetry/opamp-go/server/types"

	"github.com/opamp-rs/opamp-rs/interop/internal/confighash"
	"github.com/opamp-rs/opamp-rs/interop/internal/driver"
)

const capabilities = uint64(protobufs.ServerCapabilities_ServerCapabilities_AcceptsStatus |
	protobufs.ServerCapabilities_ServerCapabilities_OffersRemoteConfig |
	protobufs.ServerCapabilities_ServerCapabilities_AcceptsEffectiveConfig)

type agent struct {
	conn    types.Connection // nil for plain HTTP or when disconnected
	applied []byte           // last config hash the agent reported
}

type server struct {
	mu     sync.Mutex
	agents map[string]*agent
	byConn map[types.Connection]string
	offer  atomic.Pointer[protobufs.AgentRemoteConfig]
}

type nopLogger struct{}

func (nopLogger) Debugf(context.Context, string, ...interface{}) {}
func (nopLogger) Errorf(context.Context, string, ...interface{}) {}

func emit(fields map[string]any) {
	line, _ := json.Marshal(fields)
	fmt.Println(string(line))
}

func main() {
	listen := flag.String("listen", "127.0.0.1:4320", "address of the OpAMP endpoint (/v1/opamp)")
	flag.Parse()

	s := &server{agents: map[string]*agent{}, byConn: map[types.Connection]string{}}
	opamp := opampserver.New(nopLogger{})
	settings := opampserver.StartSettings{
		Settings: opampserver.Settings{
			Callbacks: types.Callbacks{OnConnecting: s.onConnecting},
		},
		ListenEndpoint: *listen,
		ListenPath:     "/v1/opamp",
	}
	if err := opamp.Start(settings); err != nil {
		emit(map[string]any{"event": "fatal", "error": err.Error()})
		os.Exit(2)
	}
	addr := opamp.Addr().(*net.TCPAddr)
	emit(map[string]any{"event": "listening", "port": addr.Port, "addr": addr.String()})

	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(done) }) }
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-signals; stop() }()
	go func() {
		scanner := bufio.NewScanner(os.Stdin)
		scanner.Buffer(make([]byte, 1<<20), 64<<20)
		for scanner.Scan() {
			var cmd struct {
				Cmd         string `json:"cmd"`
				ID          any    `json:"id"`
				To          string `json:"to"`
				Name        string `json:"name"`
				ContentType string `json:"content_type"`
				Body        string `json:"body"`
			}
			if err := json.Unmarshal(scanner.Bytes(), &cmd); err != nil {
				emit(map[string]any{"event": "error", "error": err.Error()})
				continue
			}
			switch cmd.Cmd {
			case "stop":
				stop()
				return
			case "offer_remote_config":
				hash, targets := s.offerToAll(cmd.Name, cmd.ContentType, cmd.Body)
				emit(map[string]any{"event": "ack", "cmd": cmd.Cmd, "id": cmd.ID, "hash": hex.EncodeToString(hash), "targets": targets})
			default:
				emit(map[string]any{"event": "error", "id": cmd.ID, "error": "unknown command " + cmd.Cmd})
			}
		}
		stop()
	}()
	<-done

	s.mu.Lock()
	conns := make([]types.Connection, 0, len(s.byConn))
	for conn := range s.byConn {
		conns = append(conns, conn)
	}
	s.mu.Unlock()
	_ = driver.StopServer(opamp, conns)
	emit(map[string]any{"event": "stopped"})
}

func (s *server) onConnecting(r *http.Request) types.ConnectionResponse {
	ws := r.Header.Get("Content-Type") != "application/x-protobuf"
	return types.ConnectionResponse{
		Accept: true,
		ConnectionCallbacks: types.ConnectionCallbacks{
			OnMessage: func(_ context.Context, conn types.Connection, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
				return s.onMessage(ws, conn, msg)
			},
			OnConnectionClose: func(conn types.Connection) {
				if ws {
					s.onClose(conn)
				}
			},
		},
	}
}

func (s *server) onMessage(ws bool, conn types.Connection, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
	uid := string(msg.GetInstanceUid())
	offer := s.offer.Load()
	s.mu.Lock()
	a := s.agents[uid]
	if a == nil {
		a = &agent{}
		s.agents[uid] = a
	}
	if ws && a.conn != conn {
		a.conn = conn
		s.byConn[conn] = uid
	}
	if status := msg.GetRemoteConfigStatus(); status != nil {
		a.applied = status.GetLastRemoteConfigHash()
	}
	reoffer := offer != nil && !bytes.Equal(a.applied, offer.GetConfigHash())
	s.mu.Unlock()

	reply := &protobufs.ServerToAgent{InstanceUid: msg.GetInstanceUid(), Capabilities: capabilities}
	if reoffer {
		reply.RemoteConfig = offer
	}
	return reply
}

func (s *server) onClose(conn types.Connection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	uid, ok := s.byConn[conn]
	if !ok {
		return
	}
	delete(s.byConn, conn)
	if a := s.agents[uid]; a != nil && a.conn == conn {
		a.conn = nil
	}
}

// offerToAll makes the config the current offer and pushes it to every
// connected WebSocket agent; plain-HTTP agents get it with their next reply.
func (s *server) offerToAll(name, contentType, body string) ([]byte, int) {
	if name == "" {
		name = "config.yaml"
	}
	if contentType == "" {
		contentType = "text/yaml"
	}
	cfg := &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
		name: {Body: []byte(body), ContentType: contentType},
	}}
	offer := &protobufs.AgentRemoteConfig{Config: cfg, ConfigHash: confighash.ConfigMap(cfg)}
	s.offer.Store(offer)

	type target struct {
		uid  string
		conn types.Connection
	}
	s.mu.Lock()
	targets := len(s.agents)
	live := make([]target, 0, len(s.byConn))
	for conn, uid := range s.byConn {
		live = append(live, target{uid, conn})
	}
	s.mu.Unlock()

	// Sends run in parallel, as many as there are connections to write to.
	var wg sync.WaitGroup
	slots := make(chan struct{}, 64)
	for _, t := range live {
		wg.Add(1)
		slots <- struct{}{}
		go func(t target) {
			defer wg.Done()
			defer func() { <-slots }()
			msg := &protobufs.ServerToAgent{InstanceUid: []byte(t.uid), Capabilities: capabilities, RemoteConfig: offer}
			_ = t.conn.Send(context.Background(), msg)
		}(t)
	}
	wg.Wait()
	return offer.GetConfigHash(), targets
}
