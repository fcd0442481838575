// Command goserver is an OpAMP server built on opamp-go's server package,
// driven by JSON command lines on stdin and reporting every event as a JSON
// line on stdout. See interop/README.md for the vocabulary.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/protobufs"
	opampserver "github.com/open-telemetry/opamp-go/server"
	"github.com/open-telemetry/opamp-go/server/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opamp-rs/opamp-rs/interop/internal/confighash"
	"github.com/opamp-rs/opamp-rs/interop/internal/driver"
	"github.com/opamp-rs/opamp-rs/interop/internal/jsonl"
	"github.com/opamp-rs/opamp-rs/interop/internal/pbjson"
)

// serverCapabilities is what goserver puts in every reply: opamp-go's server
// never fills ServerToAgent.capabilities itself.
const serverCapabilities = uint64(protobufs.ServerCapabilities_ServerCapabilities_AcceptsStatus |
	protobufs.ServerCapabilities_ServerCapabilities_OffersRemoteConfig |
	protobufs.ServerCapabilities_ServerCapabilities_AcceptsEffectiveConfig |
	protobufs.ServerCapabilities_ServerCapabilities_OffersPackages |
	protobufs.ServerCapabilities_ServerCapabilities_AcceptsPackagesStatus |
	protobufs.ServerCapabilities_ServerCapabilities_OffersConnectionSettings)

const protobufContentType = "application/x-protobuf"

type options struct {
	listen     string
	path       string
	certFile   string
	keyFile    string
	gzip       bool
	customCaps driver.ListFlag
	fileListen string
	fileTLS    bool
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address for the OpAMP endpoint (port 0 picks a free port)")
	flag.StringVar(&o.path, "path", "/v1/opamp", "URL path of the OpAMP endpoint (WebSocket and plain HTTP)")
	flag.StringVar(&o.certFile, "cert", "", "PEM server certificate: serve wss:// and https://")
	flag.StringVar(&o.keyFile, "key", "", "PEM server key")
	flag.BoolVar(&o.gzip, "gzip", false, "opamp-go EnableCompression (WebSocket permessage-deflate; HTTP responses are gzipped whenever the request says Accept-Encoding: gzip)")
	flag.Var(&o.customCaps, "custom-capability", "server custom capability (repeatable; default "+driver.DefaultCustomCapability+")")
	flag.StringVar(&o.fileListen, "file-listen", "127.0.0.1:0", "address of the package file server")
	flag.BoolVar(&o.fileTLS, "file-tls", false, "serve package files over https with --cert/--key")
	flag.Parse()
	o.customCaps = o.customCaps.Or(driver.DefaultCustomCapability)
	return o
}

func main() {
	opts := parseFlags()
	driver.Main(func(events *jsonl.Emitter) (driver.Program, error) { return start(opts, events) })
}

// armedError is a one-shot error reply for the next message.
type armedError struct {
	response   *protobufs.ServerErrorResponse
	disconnect bool
}

// agentRecord is what goserver knows about one agent. Several uids may point
// at the same record while a new instance uid is being adopted.
type agentRecord struct {
	uid       string
	transport string
	// conn is the live WebSocket connection, nil for HTTP or when disconnected.
	conn    types.Connection
	pending []*protobufs.ServerToAgent
	armed   *armedError
}

type refusal struct {
	status  int
	headers map[string]string
}

type server struct {
	opts   options
	events *jsonl.Emitter
	opamp  opampserver.OpAMPServer
	files  *fileServer

	mu       sync.Mutex
	agents   map[string]*agentRecord
	byConn   map[types.Connection]*agentRecord
	wsConns  map[types.Connection]struct{}
	refusals []refusal
	armedAll *armedError
	offered  map[string]*protobufs.PackageAvailable
}

func start(opts options, events *jsonl.Emitter) (*server, error) {
	s := &server{
		opts:    opts,
		events:  events,
		agents:  map[string]*agentRecord{},
		byConn:  map[types.Connection]*agentRecord{},
		wsConns: map[types.Connection]struct{}{},
		offered: map[string]*protobufs.PackageAvailable{},
	}
	var tlsConfig *tls.Config
	if opts.certFile != "" || opts.keyFile != "" {
		pair, err := tls.LoadX509KeyPair(opts.certFile, opts.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{pair}}
	}
	var fileTLS *tls.Config
	if opts.fileTLS {
		if tlsConfig == nil {
			return nil, errors.New("--file-tls needs --cert and --key")
		}
		fileTLS = tlsConfig.Clone()
	}
	files, err := startFileServer(opts.fileListen, fileTLS, events)
	if err != nil {
		return nil, err
	}
	s.files = files

	s.opamp = opampserver.New(&driver.EventLogger{Events: events})
	settings := opampserver.StartSettings{
		Settings: opampserver.Settings{
			Callbacks:          types.Callbacks{OnConnecting: s.onConnecting},
			EnableCompression:  opts.gzip,
			CustomCapabilities: opts.customCaps,
		},
		ListenEndpoint: opts.listen,
		ListenPath:     opts.path,
		TLSConfig:      tlsConfig,
	}
	if err := s.opamp.Start(settings); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	addr := s.opamp.Addr().(*net.TCPAddr)
	scheme := "ws"
	if tlsConfig != nil {
		scheme = "wss"
	}
	events.Emit("listening", jsonl.Fields{
		"port":             addr.Port,
		"addr":             addr.String(),
		"path":             opts.path,
		"tls":              tlsConfig != nil,
		"ws_url":           scheme + "://" + addr.String() + opts.path,
		"http_url":         strings.Replace(scheme, "ws", "http", 1) + "://" + addr.String() + opts.path,
		"file_server_port": files.port,
		"file_server_url":  files.base,
		"capabilities":     serverCapabilities,
	})
	return s, nil
}

// Stop implements driver.Program.
func (s *server) Stop(reason string) {
	s.mu.Lock()
	conns := make([]types.Connection, 0, len(s.wsConns))
	for c := range s.wsConns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	err := driver.StopServer(s.opamp, conns)
	_ = s.files.server.Close()
	fields := jsonl.Fields{"reason": reason}
	if err != nil {
		fields["error"] = err.Error()
	}
	s.events.Emit("stopped", fields)
}

func flattenHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		out[k] = strings.Join(v, ", ")
	}
	return out
}

func (s *server) onConnecting(r *http.Request) types.ConnectionResponse {
	transport := "ws"
	if r.Header.Get("Content-Type") == protobufContentType {
		transport = "http"
	}
	s.mu.Lock()
	if len(s.refusals) > 0 {
		ref := s.refusals[0]
		s.refusals = s.refusals[1:]
		remaining := len(s.refusals)
		s.mu.Unlock()
		s.events.Emit("refused", jsonl.Fields{
			"transport": transport,
			"status":    ref.status,
			"headers":   ref.headers,
			"remaining": remaining,
			"remote":    r.RemoteAddr,
		})
		return types.ConnectionResponse{Accept: false, HTTPStatusCode: ref.status, HTTPResponseHeader: ref.headers}
	}
	s.mu.Unlock()
	headers := flattenHeaders(r.Header)
	remote := r.RemoteAddr
	return types.ConnectionResponse{
		Accept: true,
		ConnectionCallbacks: types.ConnectionCallbacks{
			OnConnected: func(ctx context.Context, conn types.Connection) {
				if transport == "ws" {
					s.mu.Lock()
					s.wsConns[conn] = struct{}{}
					s.mu.Unlock()
				}
				s.events.Emit("connected", jsonl.Fields{"transport": transport, "remote": remote, "headers": headers})
			},
			OnMessage: func(ctx context.Context, conn types.Connection, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
				return s.onMessage(transport, headers, conn, msg)
			},
			OnConnectionClose: func(conn types.Connection) {
				if transport == "ws" {
					s.onWSClose(conn)
				}
			},
			OnReadMessageError: func(conn types.Connection, mt int, msgBytes []byte, err error) {
				s.events.Emit("read_error", jsonl.Fields{"transport": transport, "message_type": mt, "bytes": len(msgBytes), "error": err.Error()})
			},
			OnMessageResponseError: func(conn types.Connection, msg *protobufs.ServerToAgent, err error) {
				s.events.Emit("send_error", jsonl.Fields{"transport": transport, "uid": pbjson.UID(msg.GetInstanceUid()), "error": err.Error()})
			},
		},
	}
}

func (s *server) onWSClose(conn types.Connection) {
	s.mu.Lock()
	delete(s.wsConns, conn)
	uid := ""
	if rec, ok := s.byConn[conn]; ok {
		delete(s.byConn, conn)
		if rec.conn == conn {
			rec.conn = nil
		}
		uid = rec.uid
	}
	s.mu.Unlock()
	s.events.Emit("disconnected", jsonl.Fields{"transport": "ws", "uid": uid})
}

func (s *server) onMessage(transport string, headers map[string]string, conn types.Connection, msg *protobufs.AgentToServer) *protobufs.ServerToAgent {
	uid := pbjson.UID(msg.GetInstanceUid())
	fields := jsonl.Fields(pbjson.AgentToServer(msg))
	fields["transport"] = transport
	if transport == "http" {
		fields["http_headers"] = headers
	}

	// Register first, so that a driver reacting to the "message" event can
	// already address this uid.
	s.mu.Lock()
	rec := s.agents[uid]
	if rec == nil && transport == "ws" {
		// Same connection, uid changed without going through new_instance_uid.
		rec = s.byConn[conn]
	}
	if rec == nil {
		rec = &agentRecord{uid: uid}
	}
	adoptedFrom := ""
	if rec.uid != uid {
		previous := rec.uid
		if s.agents[previous] == rec {
			delete(s.agents, previous)
		}
		rec.uid = uid
		adoptedFrom = previous
	}
	s.agents[uid] = rec
	rec.transport = transport
	if transport == "ws" {
		rec.conn = conn
		s.byConn[conn] = rec
	}
	armed := rec.armed
	rec.armed = nil
	if armed == nil && s.armedAll != nil {
		armed, s.armedAll = s.armedAll, nil
	}
	var reply *protobufs.ServerToAgent
	var pushes []*protobufs.ServerToAgent
	switch {
	case armed != nil:
		reply = &protobufs.ServerToAgent{ErrorResponse: armed.response}
	case transport == "http" && len(rec.pending) > 0:
		reply, rec.pending = rec.pending[0], rec.pending[1:]
	default:
		// WebSocket: everything queued while the agent was away goes out now.
		pushes, rec.pending = rec.pending, nil
	}
	s.mu.Unlock()

	s.events.Emit("message", fields)
	if adoptedFrom != "" {
		s.events.Emit("uid_adopted", jsonl.Fields{"old_uid": adoptedFrom, "new_uid": uid})
	}
	for _, p := range pushes {
		s.sendNow(conn, uid, p)
	}
	if reply == nil {
		reply = &protobufs.ServerToAgent{}
	}
	reply.InstanceUid = msg.GetInstanceUid()
	reply.Capabilities = serverCapabilities
	if armed != nil && armed.disconnect && transport == "ws" {
		s.sendNow(conn, uid, reply)
		_ = conn.Disconnect()
		s.events.Emit("closed_by_server", jsonl.Fields{"uid": uid})
		return nil
	}
	sent := jsonl.Fields(pbjson.ServerToAgent(reply))
	sent["transport"] = transport
	sent["kind"] = "reply"
	s.events.Emit("sent", sent)
	return reply
}

// sendNow pushes msg over a WebSocket connection.
func (s *server) sendNow(conn types.Connection, uid string, msg *protobufs.ServerToAgent) {
	if len(msg.InstanceUid) == 0 {
		if u, err := uuid.Parse(uid); err == nil {
			msg.InstanceUid = u[:]
		}
	}
	msg.Capabilities = serverCapabilities
	fields := jsonl.Fields(pbjson.ServerToAgent(msg))
	fields["transport"] = "ws"
	fields["kind"] = "push"
	// Announced before the write so that it precedes whatever the agent answers.
	s.events.Emit("sent", fields)
	if err := conn.Send(context.Background(), msg); err != nil {
		s.events.Emit("send_error", jsonl.Fields{"transport": "ws", "uid": uid, "error": err.Error()})
	}
}

// populated lists the fields a message carries besides the ones every reply has.
func populated(msg *protobufs.ServerToAgent) map[string]bool {
	out := map[string]bool{}
	msg.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		switch fd.Name() {
		case "instance_uid", "capabilities", "flags":
		default:
			out[string(fd.Name())] = true
		}
		return true
	})
	return out
}

// enqueue keeps msg for the agent's next reply. Offers that touch different
// fields share one message; a command or an error always travels alone
// (opamp-go's client ignores every other field next to a command).
func enqueue(rec *agentRecord, msg *protobufs.ServerToAgent) {
	if n := len(rec.pending); n > 0 {
		last := rec.pending[n-1]
		a, b := populated(last), populated(msg)
		mergeable := !a["command"] && !b["command"] && !a["error_response"] && !b["error_response"]
		for field := range b {
			if a[field] {
				mergeable = false
			}
		}
		if mergeable {
			flags := last.Flags | msg.Flags
			proto.Merge(last, msg)
			last.Flags = flags
			return
		}
	}
	rec.pending = append(rec.pending, msg)
}

// records resolves a "to" address: a uid or "all".
func (s *server) records(to string) ([]*agentRecord, error) {
	if to == "" || to == "all" {
		seen := map[*agentRecord]bool{}
		var recs []*agentRecord
		for _, rec := range s.agents {
			if !seen[rec] {
				seen[rec] = true
				recs = append(recs, rec)
			}
		}
		if len(recs) == 0 {
			return nil, errors.New("no agent has sent a message yet")
		}
		sort.Slice(recs, func(i, j int) bool { return recs[i].uid < recs[j].uid })
		return recs, nil
	}
	if u, err := uuid.Parse(to); err == nil {
		to = u.String()
	}
	rec, ok := s.agents[to]
	if !ok {
		return nil, fmt.Errorf("unknown agent %q", to)
	}
	return []*agentRecord{rec}, nil
}

// deliver builds one message per addressed agent and pushes it over a live
// WebSocket or queues it for the next HTTP reply (or the next WebSocket
// connection).
func (s *server) deliver(to string, build func(rec *agentRecord) (*protobufs.ServerToAgent, jsonl.Fields, error)) ([]jsonl.Fields, error) {
	type push struct {
		conn types.Connection
		uid  string
		msg  *protobufs.ServerToAgent
	}
	var pushes []push
	var targets []jsonl.Fields
	s.mu.Lock()
	recs, err := s.records(to)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	for _, rec := range recs {
		msg, extra, err := build(rec)
		if err != nil {
			s.mu.Unlock()
			return nil, err
		}
		target := jsonl.Fields{"uid": rec.uid}
		for k, v := range extra {
			target[k] = v
		}
		if rec.conn != nil {
			pushes = append(pushes, push{rec.conn, rec.uid, msg})
			target["delivery"] = "sent"
		} else {
			enqueue(rec, msg)
			target["delivery"] = "queued"
		}
		targets = append(targets, target)
	}
	s.mu.Unlock()
	for _, p := range pushes {
		s.sendNow(p.conn, p.uid, p.msg)
	}
	return targets, nil
}

// Commands.

type addressed struct {
	jsonl.Header
	To string `json:"to"`
}

type configFile struct {
	Body        string `json:"body"`
	ContentType string `json:"content_type"`
}

type remoteConfigCmd struct {
	addressed
	Files       map[string]configFile `json:"files"`
	Name        *string               `json:"name"`
	Body        string                `json:"body"`
	ContentType string                `json:"content_type"`
}

type connectionSettingsCmd struct {
	addressed
	HeartbeatIntervalSeconds uint64            `json:"heartbeat_interval_seconds"`
	DestinationEndpoint      string            `json:"destination_endpoint"`
	Headers                  map[string]string `json:"headers"`
}

type packageCmd struct {
	addressed
	Name       string            `json:"name"`
	Version    string            `json:"version"`
	Type       string            `json:"type"`
	Content    string            `json:"content"`
	ContentB64 string            `json:"content_b64"`
	WrongHash  bool              `json:"wrong_hash"`
	Headers    map[string]string `json:"headers"`
	Signature  string            `json:"signature"`
	Replace    bool              `json:"replace"`
}

type customMessageCmd struct {
	addressed
	driver.CustomMessage
}

type newUIDCmd struct {
	addressed
	NewUID string `json:"new_uid"`
}

type unavailableCmd struct {
	addressed
	Type         string  `json:"type"`
	Message      string  `json:"message"`
	RetryAfterNs *uint64 `json:"retry_after_ns"`
	Disconnect   bool    `json:"disconnect"`
}

type refuseCmd struct {
	jsonl.Header
	Count      int               `json:"count"`
	Status     int               `json:"status"`
	RetryAfter string            `json:"retry_after"`
	Headers    map[string]string `json:"headers"`
}

// Handle implements driver.Program.
func (s *server) Handle(h jsonl.Header, raw []byte) {
	r := driver.Reply{Events: s.events, Header: h}
	fail, ack := r.Fail, r.Ack
	// run decodes the command into v and delivers what build makes of it.
	run := func(v interface{ target() string }, build func(rec *agentRecord) (*protobufs.ServerToAgent, jsonl.Fields, error), extra func() jsonl.Fields) {
		targets, err := s.deliver(v.target(), build)
		if err != nil {
			fail(err)
			return
		}
		fields := jsonl.Fields{"targets": targets}
		if extra != nil {
			for k, val := range extra() {
				fields[k] = val
			}
		}
		ack(fields)
	}
	// send delivers a copy of msg to every agent the command addresses.
	send := func(v interface{ target() string }, msg *protobufs.ServerToAgent, extra func() jsonl.Fields) {
		run(v, func(*agentRecord) (*protobufs.ServerToAgent, jsonl.Fields, error) {
			return proto.Clone(msg).(*protobufs.ServerToAgent), nil, nil
		}, extra)
	}

	switch h.Cmd {
	case "offer_remote_config":
		var c remoteConfigCmd
		if !r.Decode(raw, &c) {
			return
		}
		cfg := &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{}}
		if len(c.Files) > 0 {
			for name, f := range c.Files {
				cfg.ConfigMap[name] = &protobufs.AgentConfigFile{Body: []byte(f.Body), ContentType: f.ContentType}
			}
		} else {
			name := "config.yaml"
			if c.Name != nil {
				name = *c.Name
			}
			contentType := c.ContentType
			if contentType == "" {
				contentType = "text/yaml"
			}
			cfg.ConfigMap[name] = &protobufs.AgentConfigFile{Body: []byte(c.Body), ContentType: contentType}
		}
		hash := confighash.ConfigMap(cfg)
		send(c, &protobufs.ServerToAgent{RemoteConfig: &protobufs.AgentRemoteConfig{Config: cfg, ConfigHash: hash}}, func() jsonl.Fields { return jsonl.Fields{"hash": pbjson.Hex(hash)} })

	case "offer_connection_settings":
		var c connectionSettingsCmd
		if !r.Decode(raw, &c) {
			return
		}
		opamp := &protobufs.OpAMPConnectionSettings{
			DestinationEndpoint:      c.DestinationEndpoint,
			HeartbeatIntervalSeconds: c.HeartbeatIntervalSeconds,
		}
		if len(c.Headers) > 0 {
			opamp.Headers = headersProto(c.Headers)
		}
		offers := &protobufs.ConnectionSettingsOffers{Opamp: opamp}
		offers.Hash = confighash.Message(offers)
		send(c, &protobufs.ServerToAgent{ConnectionSettings: offers}, func() jsonl.Fields { return jsonl.Fields{"hash": pbjson.Hex(offers.Hash)} })

	case "offer_package":
		var c packageCmd
		if !r.Decode(raw, &c) {
			return
		}
		offer, extra, err := s.buildPackageOffer(c)
		if err != nil {
			fail(err)
			return
		}
		send(c, &protobufs.ServerToAgent{PackagesAvailable: offer}, func() jsonl.Fields { return extra })

	case "custom_message":
		var c customMessageCmd
		if !r.Decode(raw, &c) {
			return
		}
		msg, err := c.Message(s.opts.customCaps[0])
		if err != nil {
			fail(err)
			return
		}
		send(c, &protobufs.ServerToAgent{CustomMessage: msg}, nil)

	case "restart":
		var c addressed
		if !r.Decode(raw, &c) {
			return
		}
		send(c, &protobufs.ServerToAgent{Command: &protobufs.ServerToAgentCommand{Type: protobufs.CommandType_CommandType_Restart}}, nil)

	case "report_full_state":
		var c addressed
		if !r.Decode(raw, &c) {
			return
		}
		send(c, &protobufs.ServerToAgent{Flags: uint64(protobufs.ServerToAgentFlags_ServerToAgentFlags_ReportFullState)}, nil)

	case "new_instance_uid":
		var c newUIDCmd
		if !r.Decode(raw, &c) {
			return
		}
		var fixed *uuid.UUID
		if c.NewUID != "" {
			u, err := uuid.Parse(c.NewUID)
			if err != nil {
				fail(fmt.Errorf("new_uid: %w", err))
				return
			}
			fixed = &u
		}
		assigned := 0
		run(c, func(rec *agentRecord) (*protobufs.ServerToAgent, jsonl.Fields, error) {
			assigned++
			if fixed != nil && assigned > 1 {
				return nil, nil, errors.New("new_uid given but several agents are addressed")
			}
			next := uuid.Must(uuid.NewV7())
			if fixed != nil {
				next = *fixed
			}
			// The record answers to both uids until a message carries the new one.
			s.agents[next.String()] = rec
			return &protobufs.ServerToAgent{AgentIdentification: &protobufs.AgentIdentification{NewInstanceUid: next[:]}},
				jsonl.Fields{"new_uid": next.String()}, nil
		}, nil)

	case "unavailable":
		var c unavailableCmd
		if !r.Decode(raw, &c) {
			return
		}
		resp := &protobufs.ServerErrorResponse{ErrorMessage: c.Message}
		switch strings.ToLower(c.Type) {
		case "", "unavailable":
			resp.Type = protobufs.ServerErrorResponseType_ServerErrorResponseType_Unavailable
		case "bad_request":
			resp.Type = protobufs.ServerErrorResponseType_ServerErrorResponseType_BadRequest
		case "unknown":
			resp.Type = protobufs.ServerErrorResponseType_ServerErrorResponseType_Unknown
		default:
			fail(fmt.Errorf("type must be unavailable, bad_request or unknown, not %q", c.Type))
			return
		}
		if c.RetryAfterNs != nil {
			resp.Details = &protobufs.ServerErrorResponse_RetryInfo{RetryInfo: &protobufs.RetryInfo{RetryAfterNanoseconds: *c.RetryAfterNs}}
		}
		armed := &armedError{response: resp, disconnect: c.Disconnect}
		s.mu.Lock()
		if c.To == "" || c.To == "all" {
			s.armedAll = armed
		} else {
			recs, err := s.records(c.To)
			if err != nil {
				s.mu.Unlock()
				fail(err)
				return
			}
			recs[0].armed = armed
		}
		s.mu.Unlock()
		ack(jsonl.Fields{"error_response": pbjson.ErrorResponse(resp)})

	case "refuse":
		var c refuseCmd
		if !r.Decode(raw, &c) {
			return
		}
		if c.Count <= 0 {
			c.Count = 1
		}
		if c.Status == 0 {
			c.Status = http.StatusServiceUnavailable
		}
		if c.Status < 400 || c.Status > 599 {
			fail(fmt.Errorf("status %d is not an HTTP error status", c.Status))
			return
		}
		headers := map[string]string{}
		for k, v := range c.Headers {
			headers[k] = v
		}
		if c.RetryAfter != "" {
			headers["Retry-After"] = c.RetryAfter
		}
		s.mu.Lock()
		for i := 0; i < c.Count; i++ {
			s.refusals = append(s.refusals, refusal{status: c.Status, headers: headers})
		}
		queued := len(s.refusals)
		s.mu.Unlock()
		ack(jsonl.Fields{"queued": queued})

	case "disconnect":
		var c addressed
		if !r.Decode(raw, &c) {
			return
		}
		s.mu.Lock()
		recs, err := s.records(c.To)
		var conns []types.Connection
		var uids []string
		for _, rec := range recs {
			if rec.conn != nil {
				conns = append(conns, rec.conn)
				uids = append(uids, rec.uid)
			}
		}
		s.mu.Unlock()
		if err != nil {
			fail(err)
			return
		}
		for _, conn := range conns {
			_ = conn.Disconnect()
		}
		ack(jsonl.Fields{"uids": uids})

	case "agents":
		s.mu.Lock()
		list := []jsonl.Fields{}
		seen := map[*agentRecord]bool{}
		for _, rec := range s.agents {
			if seen[rec] {
				continue
			}
			seen[rec] = true
			list = append(list, jsonl.Fields{"uid": rec.uid, "transport": rec.transport, "connected": rec.conn != nil, "pending": len(rec.pending)})
		}
		s.mu.Unlock()
		sort.Slice(list, func(i, j int) bool { return list[i]["uid"].(string) < list[j]["uid"].(string) })
		ack(jsonl.Fields{"agents": list})

	case "":
		fail(errors.New("not a JSON object with a \"cmd\" field: " + string(raw)))
	default:
		fail(fmt.Errorf("unknown command %q", h.Cmd))
	}
}

func (a addressed) target() string { return a.To }

func headersProto(h map[string]string) *protobufs.Headers {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := &protobufs.Headers{}
	for _, k := range keys {
		out.Headers = append(out.Headers, &protobufs.Header{Key: k, Value: h[k]})
	}
	return out
}

// buildPackageOffer serves the content on the file server and returns the
// whole current package set as one PackagesAvailable.
func (s *server) buildPackageOffer(c packageCmd) (*protobufs.PackagesAvailable, jsonl.Fields, error) {
	if c.Name == "" {
		return nil, nil, errors.New("name is required")
	}
	content := []byte(c.Content)
	if c.ContentB64 != "" {
		decoded, err := base64.StdEncoding.DecodeString(c.ContentB64)
		if err != nil {
			return nil, nil, fmt.Errorf("content_b64: %w", err)
		}
		content = decoded
	}
	var typ protobufs.PackageType
	switch strings.ToLower(c.Type) {
	case "", "top_level", "toplevel":
		typ = protobufs.PackageType_PackageType_TopLevel
	case "addon":
		typ = protobufs.PackageType_PackageType_Addon
	default:
		return nil, nil, fmt.Errorf("type must be top_level or addon, not %q", c.Type)
	}
	sum := sha256.Sum256(content)
	contentHash := sum[:]
	if c.WrongHash {
		wrong := sha256.Sum256(append([]byte("not the content: "), content...))
		contentHash = wrong[:]
	}
	url := s.files.add(c.Name, content, c.Headers)
	file := &protobufs.DownloadableFile{DownloadUrl: url, ContentHash: contentHash, Signature: []byte(c.Signature)}
	if len(c.Headers) > 0 {
		file.Headers = headersProto(c.Headers)
	}
	pkg := &protobufs.PackageAvailable{Type: typ, Version: c.Version, File: file}
	pkg.Hash = confighash.Message(pkg)

	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Replace {
		s.offered = map[string]*protobufs.PackageAvailable{}
	}
	s.offered[c.Name] = pkg
	offer := &protobufs.PackagesAvailable{Packages: map[string]*protobufs.PackageAvailable{}}
	names := make([]string, 0, len(s.offered))
	for name, p := range s.offered {
		offer.Packages[name] = proto.Clone(p).(*protobufs.PackageAvailable)
		names = append(names, name)
	}
	sort.Strings(names)
	offer.AllPackagesHash = confighash.Message(offer)
	return offer, jsonl.Fields{
		"name":              c.Name,
		"download_url":      url,
		"content_hash":      pbjson.Hex(contentHash),
		"content_sha256":    pbjson.Hex(sum[:]),
		"package_hash":      pbjson.Hex(pkg.Hash),
		"all_packages_hash": pbjson.Hex(offer.AllPackagesHash),
		"packages":          names,
		"bytes":             len(content),
	}, nil
}
