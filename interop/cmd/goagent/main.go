// Command goagent is an OpAMP agent built on opamp-go's client, driven by JSON
// command lines on stdin and reporting every event as a JSON line on stdout.
// See interop/README.md for the vocabulary.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"

	"github.com/opamp-rs/opamp-rs/interop/internal/driver"
	"github.com/opamp-rs/opamp-rs/interop/internal/jsonl"
	"github.com/opamp-rs/opamp-rs/interop/internal/pbjson"
	"github.com/opamp-rs/opamp-rs/interop/internal/tap"
)

// defaultCapabilities are everything goagent knows how to act on.
var defaultCapabilities = []string{
	"ReportsStatus", "AcceptsRemoteConfig", "ReportsEffectiveConfig", "AcceptsPackages",
	"ReportsPackageStatuses", "AcceptsOpAMPConnectionSettings", "AcceptsRestartCommand",
	"ReportsHealth", "ReportsRemoteConfig", "ReportsHeartbeat", "ReportsConnectionSettingsStatus",
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type kvFlag map[string]string

func (m kvFlag) String() string { return fmt.Sprint(map[string]string(m)) }
func (m kvFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", v)
	}
	m[k] = val
	return nil
}

type options struct {
	endpoint          string
	uid               string
	caFile            string
	certFile          string
	keyFile           string
	insecure          bool
	gzip              bool
	headers           kvFlag
	heartbeat         time.Duration
	capabilities      string
	customCaps        driver.ListFlag
	serviceName       string
	serviceVersion    string
	identifying       kvFlag
	nonIdentifying    kvFlag
	configName        string
	configBody        string
	configContentType string
	failMarker        string
	requestUID        bool
	noTap             bool
	debug             bool
}

func parseFlags() options {
	o := options{headers: kvFlag{}, identifying: kvFlag{}, nonIdentifying: kvFlag{}}
	flag.StringVar(&o.endpoint, "endpoint", "", "OpAMP server URL: ws://, wss:// (WebSocket client) or http://, https:// (plain HTTP client)")
	flag.StringVar(&o.uid, "uid", "", "instance uid as a UUID or 32 hex digits (default: a new UUIDv7)")
	flag.StringVar(&o.caFile, "ca-file", "", "PEM file of CA certificates to trust for wss:// and https://")
	flag.StringVar(&o.certFile, "cert", "", "PEM client certificate for mutual TLS")
	flag.StringVar(&o.keyFile, "key", "", "PEM client key for mutual TLS")
	flag.BoolVar(&o.insecure, "insecure", false, "skip server certificate verification")
	flag.BoolVar(&o.gzip, "gzip", false, "opamp-go EnableCompression: gzip request bodies (HTTP) or permessage-deflate (WebSocket)")
	flag.Var(o.headers, "header", "extra request header key=value (repeatable)")
	flag.DurationVar(&o.heartbeat, "heartbeat", 30*time.Second, "heartbeat interval; for HTTP also the polling interval")
	flag.StringVar(&o.capabilities, "capabilities", strings.Join(defaultCapabilities, ","), "comma-separated AgentCapabilities names")
	flag.Var(&o.customCaps, "custom-capability", "custom capability to announce (repeatable; default "+driver.DefaultCustomCapability+")")
	flag.StringVar(&o.serviceName, "service-name", "goagent", "service.name attribute")
	flag.StringVar(&o.serviceVersion, "service-version", "1.0.0", "service.version attribute")
	flag.Var(o.identifying, "attr", "extra identifying attribute key=value (repeatable)")
	flag.Var(o.nonIdentifying, "non-identifying-attr", "extra non-identifying attribute key=value (repeatable)")
	flag.StringVar(&o.configName, "config-name", "config.yaml", "file name of the initial effective config")
	flag.StringVar(&o.configBody, "config-body", "receivers: {}\n", "body of the initial effective config")
	flag.StringVar(&o.configContentType, "config-content-type", "text/yaml", "content type of the initial effective config")
	flag.StringVar(&o.failMarker, "fail-marker", "FAIL_ME", "a remote config containing this text is reported FAILED")
	flag.BoolVar(&o.requestUID, "request-uid", false, "set the RequestInstanceUid flag")
	flag.BoolVar(&o.noTap, "no-tap", false, "do not decode raw server messages (no server_message/http_status/ws_close events)")
	flag.BoolVar(&o.debug, "debug", false, "also print opamp-go debug logs as log events")
	flag.Parse()
	o.customCaps = o.customCaps.Or(driver.DefaultCustomCapability)
	return o
}

func main() {
	opts := parseFlags()
	driver.Main(func(events *jsonl.Emitter) (driver.Program, error) {
		a, err := newAgent(opts, events)
		if err != nil {
			return nil, err
		}
		return a, a.start()
	})
}

type agent struct {
	opts      options
	events    *jsonl.Emitter
	transport string
	client    client.OpAMPClient
	packages  *memoryPackages
	tlsConfig *tls.Config
	uid       types.InstanceUid

	// ctx lives as long as the agent; package syncs run under it.
	ctx    context.Context
	cancel context.CancelFunc

	mu          sync.Mutex
	effective   *protobufs.AgentConfigMap
	description *protobufs.AgentDescription
	health      *protobufs.ComponentHealth
	currentUID  types.InstanceUid
}

func newAgent(opts options, events *jsonl.Emitter) (*agent, error) {
	if opts.endpoint == "" {
		return nil, errors.New("--endpoint is required")
	}
	endpoint, err := url.Parse(opts.endpoint)
	if err != nil {
		return nil, fmt.Errorf("--endpoint: %w", err)
	}
	a := &agent{opts: opts, events: events, packages: newMemoryPackages(events)}
	a.ctx, a.cancel = context.WithCancel(context.Background())

	secure := false
	switch endpoint.Scheme {
	case "ws":
		a.transport = "ws"
	case "wss":
		a.transport, secure = "ws", true
	case "http":
		a.transport = "http"
	case "https":
		a.transport, secure = "http", true
	default:
		return nil, fmt.Errorf("--endpoint scheme must be ws, wss, http or https, not %q", endpoint.Scheme)
	}
	usesTLSFlags := opts.caFile != "" || opts.insecure || opts.certFile != "" || opts.keyFile != ""
	if usesTLSFlags && !secure {
		return nil, errors.New("TLS flags need a wss:// or https:// endpoint")
	}
	if secure {
		if a.tlsConfig, err = buildTLSConfig(opts); err != nil {
			return nil, err
		}
	}

	if a.uid, err = parseUID(opts.uid); err != nil {
		return nil, err
	}
	a.currentUID = a.uid
	a.effective = &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
		opts.configName: {Body: []byte(opts.configBody), ContentType: opts.configContentType},
	}}
	a.description = a.initialDescription()
	now := uint64(time.Now().UnixNano())
	a.health = &protobufs.ComponentHealth{Healthy: true, Status: "running", StartTimeUnixNano: now, StatusTimeUnixNano: now}

	logger := &driver.EventLogger{Events: events, Debug: opts.debug}
	if a.transport == "ws" {
		a.client = client.NewWebSocket(logger)
	} else {
		a.client = a.newHTTPClient(logger)
	}
	return a, nil
}

func buildTLSConfig(opts options) (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: opts.insecure} // #nosec G402 -- opt-in test flag
	if opts.caFile != "" {
		pem, err := os.ReadFile(opts.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", opts.caFile)
		}
		cfg.RootCAs = pool
	}
	if opts.certFile != "" || opts.keyFile != "" {
		pair, err := tls.LoadX509KeyPair(opts.certFile, opts.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func parseUID(s string) (types.InstanceUid, error) {
	var uid types.InstanceUid
	if s == "" {
		u, err := uuid.NewV7()
		if err != nil {
			return uid, err
		}
		return types.InstanceUid(u), nil
	}
	if u, err := uuid.Parse(s); err == nil {
		return types.InstanceUid(u), nil
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 16 {
		return uid, fmt.Errorf("--uid %q is neither a UUID nor 32 hex digits", s)
	}
	copy(uid[:], b)
	return uid, nil
}

func opampGoVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/open-telemetry/opamp-go" {
				return dep.Version
			}
		}
	}
	return "unknown"
}

func (a *agent) initialDescription() *protobufs.AgentDescription {
	identifying := map[string]string{
		"service.name":        a.opts.serviceName,
		"service.version":     a.opts.serviceVersion,
		"service.instance.id": uuid.UUID(a.uid).String(),
	}
	for k, v := range a.opts.identifying {
		identifying[k] = v
	}
	host, _ := os.Hostname()
	nonIdentifying := map[string]string{
		"os.type":          runtime.GOOS,
		"host.arch":        runtime.GOARCH,
		"host.name":        host,
		"opamp-go.version": opampGoVersion(),
	}
	for k, v := range a.opts.nonIdentifying {
		nonIdentifying[k] = v
	}
	return &protobufs.AgentDescription{
		IdentifyingAttributes:    pbjson.StringAttrs(identifying),
		NonIdentifyingAttributes: pbjson.StringAttrs(nonIdentifying),
	}
}

// tapObserver turns decoded raw traffic into events.
func (a *agent) tapObserver() tap.Observer {
	return tap.Observer{
		Message: func(msg *protobufs.ServerToAgent, compressed bool) {
			fields := jsonl.Fields(pbjson.ServerToAgent(msg))
			fields["transport"] = a.transport
			fields["compressed"] = compressed
			a.events.Emit("server_message", fields)
		},
		Status: func(status int, header http.Header) {
			a.events.Emit("http_status", jsonl.Fields{
				"transport":   a.transport,
				"status":      status,
				"retry_after": header.Get("Retry-After"),
			})
		},
		Close: func(code int, reason string) {
			a.events.Emit("ws_close", jsonl.Fields{"code": code, "reason": reason})
		},
		Problem: func(err error) {
			a.events.Emit("tap_error", jsonl.Fields{"error": err.Error()})
		},
	}
}

// newHTTPClient builds opamp-go's HTTP client. opamp-go clones
// http.DefaultTransport when the client is constructed, so the tap's dialers
// are installed there for the duration of the constructor call only.
func (a *agent) newHTTPClient(logger types.Logger) client.OpAMPClient {
	if a.opts.noTap {
		return client.NewHTTP(logger)
	}
	original := http.DefaultTransport
	base, ok := original.(*http.Transport)
	if !ok {
		return client.NewHTTP(logger)
	}
	tapped := base.Clone()
	plain, secure := tap.Dialers(tap.HTTP, a.tlsConfig, a.tapObserver())
	tapped.DialContext = plain
	tapped.DialTLSContext = secure
	tapped.ForceAttemptHTTP2 = false
	http.DefaultTransport = tapped
	defer func() { http.DefaultTransport = original }()
	return client.NewHTTP(logger)
}

func (a *agent) capabilities() (protobufs.AgentCapabilities, error) {
	var caps protobufs.AgentCapabilities
	for _, name := range strings.Split(a.opts.capabilities, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		bit, ok := pbjson.AgentCapabilityByName(name)
		if !ok {
			return 0, fmt.Errorf("unknown capability %q", name)
		}
		caps |= bit
	}
	return caps | protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus, nil
}

func (a *agent) start() error {
	caps, err := a.capabilities()
	if err != nil {
		return err
	}
	if err := a.client.SetAgentDescription(a.description); err != nil {
		return fmt.Errorf("SetAgentDescription: %w", err)
	}
	if caps&protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth != 0 {
		if err := a.client.SetHealth(a.health); err != nil {
			return fmt.Errorf("SetHealth: %w", err)
		}
	}
	if err := a.client.SetCustomCapabilities(&protobufs.CustomCapabilities{Capabilities: a.opts.customCaps}); err != nil {
		return fmt.Errorf("SetCustomCapabilities: %w", err)
	}
	if a.opts.requestUID {
		a.client.SetFlags(protobufs.AgentToServerFlags_AgentToServerFlags_RequestInstanceUid)
	}
	header := http.Header{}
	for k, v := range a.opts.headers {
		header.Set(k, v)
	}
	heartbeat := a.opts.heartbeat
	settings := types.StartSettings{
		OpAMPServerURL:    a.opts.endpoint,
		Header:            header,
		TLSConfig:         a.tlsConfig,
		InstanceUid:       a.uid,
		EnableCompression: a.opts.gzip,
		HeartbeatInterval: &heartbeat,
		// opamp-go v0.23.0's SetCapabilities rejects the package capabilities
		// before Start (no PackagesStateProvider yet), so they go through the
		// deprecated StartSettings field, which is checked after the provider.
		Capabilities: caps,
		Callbacks:    a.callbacks(),
	}
	if caps&(protobufs.AgentCapabilities_AgentCapabilities_AcceptsPackages|
		protobufs.AgentCapabilities_AgentCapabilities_ReportsPackageStatuses) != 0 {
		settings.PackagesStateProvider = a.packages
	}

	if a.transport == "ws" && !a.opts.noTap {
		// opamp-go copies *websocket.DefaultDialer inside Start.
		original := *websocket.DefaultDialer
		plain, secure := tap.Dialers(tap.WebSocket, a.tlsConfig, a.tapObserver())
		websocket.DefaultDialer.NetDialContext = plain
		websocket.DefaultDialer.NetDialTLSContext = secure
		defer func() { *websocket.DefaultDialer = original }()
	}
	if err := a.client.Start(a.ctx, settings); err != nil {
		return fmt.Errorf("Start: %w", err)
	}
	if hc, ok := a.client.(interface{ SetPollingInterval(time.Duration) }); ok {
		hc.SetPollingInterval(heartbeat)
	}
	a.events.Emit("started", jsonl.Fields{
		"uid":                 uuid.UUID(a.uid).String(),
		"transport":           a.transport,
		"endpoint":            a.opts.endpoint,
		"capabilities":        uint64(caps),
		"capability_names":    pbjson.AgentCapabilityNames(uint64(caps)),
		"custom_capabilities": []string(a.opts.customCaps),
		"opamp_go_version":    opampGoVersion(),
		"effective_config":    pbjson.ConfigMap(a.effective),
	})
	return nil
}

// Stop implements driver.Program.
func (a *agent) Stop(reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := a.client.Stop(ctx)
	a.cancel()
	fields := jsonl.Fields{"reason": reason}
	if err != nil {
		fields["error"] = err.Error()
	}
	a.events.Emit("stopped", fields)
}

func (a *agent) callbacks() types.Callbacks {
	return types.Callbacks{
		OnConnect: func(ctx context.Context) {
			a.events.Emit("connected", jsonl.Fields{"transport": a.transport})
		},
		OnConnectFailed: func(ctx context.Context, err error) {
			a.events.Emit("connect_failed", jsonl.Fields{"transport": a.transport, "error": errString(err)})
		},
		OnError: func(ctx context.Context, resp *protobufs.ServerErrorResponse) {
			a.events.Emit("error_response", jsonl.Fields(pbjson.ErrorResponse(resp)))
		},
		OnMessage:                 a.onMessage,
		OnOpampConnectionSettings: a.onOpAMPConnectionSettings,
		OnConnectionSettings: func(ctx context.Context, offers *protobufs.ConnectionSettingsOffers) error {
			a.events.Emit("connection_settings", jsonl.Fields(pbjson.ConnectionSettings(offers)))
			return nil
		},
		GetEffectiveConfig: func(ctx context.Context) (*protobufs.EffectiveConfig, error) {
			a.mu.Lock()
			defer a.mu.Unlock()
			return &protobufs.EffectiveConfig{ConfigMap: proto.Clone(a.effective).(*protobufs.AgentConfigMap)}, nil
		},
		OnCommand: func(ctx context.Context, cmd *protobufs.ServerToAgentCommand) error {
			// A restart is only reported: the harness keeps running so the
			// driver can check what happens next.
			a.events.Emit("command", jsonl.Fields{"type": pbjson.EnumName(cmd.GetType().String())})
			return nil
		},
		DownloadHTTPClient: func(ctx context.Context, file *protobufs.DownloadableFile) (*http.Client, error) {
			transport := &http.Transport{}
			if a.tlsConfig != nil {
				transport.TLSClientConfig = a.tlsConfig.Clone()
			}
			return &http.Client{Transport: transport, Timeout: 60 * time.Second}, nil
		},
	}
}

func (a *agent) onOpAMPConnectionSettings(ctx context.Context, settings *protobufs.OpAMPConnectionSettings) error {
	// Accepted as offered: the heartbeat interval is applied by opamp-go itself
	// (ReportsHeartbeat); goagent does not reconnect elsewhere.
	a.events.Emit("opamp_connection_settings", jsonl.Fields(pbjson.OpAMPSettings(settings)))
	return nil
}

func (a *agent) onMessage(ctx context.Context, msg *types.MessageData) {
	if msg.AgentIdentification != nil {
		a.mu.Lock()
		old := a.currentUID
		copy(a.currentUID[:], msg.AgentIdentification.NewInstanceUid)
		current := a.currentUID
		a.mu.Unlock()
		a.events.Emit("instance_uid_changed", jsonl.Fields{
			"old_uid": uuid.UUID(old).String(),
			"new_uid": uuid.UUID(current).String(),
		})
	}
	if msg.CustomCapabilities != nil {
		caps := msg.CustomCapabilities.GetCapabilities()
		if caps == nil {
			caps = []string{}
		}
		a.events.Emit("server_custom_capabilities", jsonl.Fields{"capabilities": caps})
	}
	if msg.CustomMessage != nil {
		a.events.Emit("custom_message", jsonl.Fields(pbjson.CustomMessage(msg.CustomMessage)))
	}
	if msg.OwnMetricsConnSettings != nil || msg.OwnTracesConnSettings != nil ||
		msg.OwnLogsConnSettings != nil || len(msg.OtherConnSettings) > 0 {
		a.events.Emit("own_connection_settings", jsonl.Fields{"hash": pbjson.Hex(msg.OfferedConnectionsSettingsHash)})
	}
	if msg.RemoteConfig != nil {
		a.applyRemoteConfig(ctx, msg.RemoteConfig)
	}
	if msg.PackagesAvailable != nil {
		a.syncPackages(msg)
	}
}

func (a *agent) applyRemoteConfig(ctx context.Context, rc *protobufs.AgentRemoteConfig) {
	rendered := pbjson.ConfigMap(rc.GetConfig())
	a.events.Emit("remote_config", jsonl.Fields{
		"hash":          pbjson.Hex(rc.GetConfigHash()),
		"files":         rendered["files"],
		"computed_hash": rendered["hash"],
	})
	hash := rc.GetConfigHash()
	if hash == nil {
		// opamp-go refuses a status without a hash; an absent hash is reported as empty.
		hash = []byte{}
	}
	status := &protobufs.RemoteConfigStatus{LastRemoteConfigHash: hash}
	failed := false
	for name, file := range rc.GetConfig().GetConfigMap() {
		if a.opts.failMarker != "" && strings.Contains(string(file.GetBody()), a.opts.failMarker) {
			failed = true
			status.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_FAILED
			status.ErrorMessage = fmt.Sprintf("config file %q contains %s", name, a.opts.failMarker)
			break
		}
	}
	if !failed {
		status.Status = protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED
		a.mu.Lock()
		cfg := rc.GetConfig()
		if cfg == nil {
			cfg = &protobufs.AgentConfigMap{}
		}
		a.effective = proto.Clone(cfg).(*protobufs.AgentConfigMap)
		a.mu.Unlock()
	}
	fields := jsonl.Fields{
		"status": pbjson.EnumName(status.Status.String()),
		"hash":   pbjson.Hex(status.LastRemoteConfigHash),
		"error":  status.ErrorMessage,
	}
	if err := a.client.SetRemoteConfigStatus(status); err != nil {
		fields["report_error"] = err.Error()
	}
	a.events.Emit("remote_config_status", fields)
	if !failed {
		a.reportEffectiveConfig(ctx)
	}
}

func (a *agent) reportEffectiveConfig(ctx context.Context) {
	a.mu.Lock()
	rendered := pbjson.ConfigMap(a.effective)
	a.mu.Unlock()
	fields := jsonl.Fields(rendered)
	if err := a.client.UpdateEffectiveConfig(ctx); err != nil {
		fields["report_error"] = err.Error()
	}
	a.events.Emit("effective_config", fields)
}

func (a *agent) syncPackages(msg *types.MessageData) {
	a.events.Emit("packages_available", jsonl.Fields(pbjson.PackagesAvailable(msg.PackagesAvailable)))
	if msg.PackageSyncer == nil {
		a.events.Emit("error", jsonl.Fields{"error": "opamp-go offered packages without a syncer"})
		return
	}
	syncer := msg.PackageSyncer
	if err := syncer.Sync(a.ctx); err != nil {
		a.events.Emit("error", jsonl.Fields{"error": "package sync: " + err.Error()})
		return
	}
	go func() {
		select {
		case <-syncer.Done():
			a.events.Emit("packages_synced", a.packages.snapshot())
		case <-a.ctx.Done():
		}
	}()
}

// Commands.

type setHealthCmd struct {
	jsonl.Header
	Healthy   bool   `json:"healthy"`
	Status    string `json:"status"`
	LastError string `json:"last_error"`
}

type setDescriptionCmd struct {
	jsonl.Header
	Identifying    map[string]string `json:"identifying"`
	NonIdentifying map[string]string `json:"non_identifying"`
}

type customMessageCmd struct {
	jsonl.Header
	driver.CustomMessage
}

type customCapabilitiesCmd struct {
	jsonl.Header
	Capabilities []string `json:"capabilities"`
}

type effectiveConfigCmd struct {
	jsonl.Header
	Files map[string]struct {
		Body        string `json:"body"`
		ContentType string `json:"content_type"`
	} `json:"files"`
}

type setFlagsCmd struct {
	jsonl.Header
	RequestInstanceUID bool `json:"request_instance_uid"`
}

// Handle implements driver.Program.
func (a *agent) Handle(h jsonl.Header, raw []byte) {
	r := driver.Reply{Events: a.events, Header: h}
	fail, ack := r.Fail, r.Ack
	switch h.Cmd {
	case "set_health":
		var c setHealthCmd
		if !r.Decode(raw, &c) {
			return
		}
		a.mu.Lock()
		health := &protobufs.ComponentHealth{
			Healthy:            c.Healthy,
			Status:             c.Status,
			LastError:          c.LastError,
			StartTimeUnixNano:  a.health.GetStartTimeUnixNano(),
			StatusTimeUnixNano: uint64(time.Now().UnixNano()),
		}
		a.health = health
		a.mu.Unlock()
		if err := a.client.SetHealth(health); err != nil {
			fail(err)
			return
		}
		ack(nil)
	case "set_description":
		var c setDescriptionCmd
		if !r.Decode(raw, &c) {
			return
		}
		a.mu.Lock()
		desc := mergeAttributes(a.description, c.Identifying, c.NonIdentifying)
		a.description = desc
		a.mu.Unlock()
		if err := a.client.SetAgentDescription(desc); err != nil {
			fail(err)
			return
		}
		ack(jsonl.Fields{"description": map[string]any{
			"identifying":     pbjson.KeyValues(desc.GetIdentifyingAttributes()),
			"non_identifying": pbjson.KeyValues(desc.GetNonIdentifyingAttributes()),
		}})
	case "send_custom_message":
		var c customMessageCmd
		if !r.Decode(raw, &c) {
			return
		}
		capability := ""
		if len(a.opts.customCaps) > 0 {
			capability = a.opts.customCaps[0]
		}
		msg, err := c.Message(capability)
		if err != nil {
			fail(err)
			return
		}
		a.sendCustomMessage(h, msg, ack, fail)
	case "set_custom_capabilities":
		var c customCapabilitiesCmd
		if !r.Decode(raw, &c) {
			return
		}
		if c.Capabilities == nil {
			c.Capabilities = []string{}
		}
		if err := a.client.SetCustomCapabilities(&protobufs.CustomCapabilities{Capabilities: c.Capabilities}); err != nil {
			fail(err)
			return
		}
		ack(jsonl.Fields{"capabilities": c.Capabilities})
	case "set_effective_config":
		var c effectiveConfigCmd
		if !r.Decode(raw, &c) {
			return
		}
		cfg := &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{}}
		for name, f := range c.Files {
			cfg.ConfigMap[name] = &protobufs.AgentConfigFile{Body: []byte(f.Body), ContentType: f.ContentType}
		}
		a.mu.Lock()
		a.effective = cfg
		a.mu.Unlock()
		a.reportEffectiveConfig(a.ctx)
		ack(jsonl.Fields{"hash": pbjson.ConfigMap(cfg)["hash"]})
	case "set_flags":
		var c setFlagsCmd
		if !r.Decode(raw, &c) {
			return
		}
		var flags protobufs.AgentToServerFlags
		if c.RequestInstanceUID {
			flags |= protobufs.AgentToServerFlags_AgentToServerFlags_RequestInstanceUid
		}
		a.client.SetFlags(flags)
		ack(nil)
	case "":
		fail(errors.New("not a JSON object with a \"cmd\" field: " + string(raw)))
	default:
		fail(fmt.Errorf("unknown command %q", h.Cmd))
	}
}

// sendCustomMessage hands the message to opamp-go, waiting for a previous one
// to go out first (opamp-go holds only one pending custom message).
func (a *agent) sendCustomMessage(h jsonl.Header, msg *protobufs.CustomMessage, ack func(jsonl.Fields), fail func(error)) {
	for {
		sent, err := a.client.SendCustomMessage(msg)
		if errors.Is(err, types.ErrCustomMessagePending) {
			select {
			case <-sent:
				continue
			case <-a.ctx.Done():
				fail(a.ctx.Err())
				return
			}
		}
		if err != nil {
			fail(err)
			return
		}
		ack(jsonl.Fields{"capability": msg.Capability, "type": msg.Type})
		go func() {
			select {
			case <-sent:
				a.events.Emit("custom_message_sent", jsonl.Fields{"id": h.ID, "capability": msg.Capability, "type": msg.Type})
			case <-a.ctx.Done():
			}
		}()
		return
	}
}

func mergeAttributes(desc *protobufs.AgentDescription, identifying, nonIdentifying map[string]string) *protobufs.AgentDescription {
	merge := func(current []*protobufs.KeyValue, extra map[string]string) []*protobufs.KeyValue {
		values := map[string]string{}
		for _, kv := range current {
			values[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		for k, v := range extra {
			values[k] = v
		}
		return pbjson.StringAttrs(values)
	}
	return &protobufs.AgentDescription{
		IdentifyingAttributes:    merge(desc.GetIdentifyingAttributes(), identifying),
		NonIdentifyingAttributes: merge(desc.GetNonIdentifyingAttributes(), nonIdentifying),
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
