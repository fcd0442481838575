// Package pbjson turns OpAMP protobuf messages into plain JSON-ready values for
// the event lines. Names are short: enum values lose their type prefix
// ("RemoteConfigStatuses_APPLIED" → "APPLIED"), byte hashes are lower-case hex,
// instance uids are canonical UUID strings.
package pbjson

import (
	"encoding/base64"
	"encoding/hex"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opamp-rs/opamp-rs/interop/internal/confighash"
)

// UID formats a 16-byte instance uid as a canonical UUID; anything else as hex.
func UID(b []byte) string {
	if len(b) == 16 {
		u, _ := uuid.FromBytes(b)
		return u.String()
	}
	return hex.EncodeToString(b)
}

// Hex is lower-case hex of b ("" for empty).
func Hex(b []byte) string { return hex.EncodeToString(b) }

// EnumName strips the "Type_" prefix that protoc-gen-go puts on enum values.
func EnumName(full string) string {
	if i := strings.LastIndex(full, "_"); i >= 0 {
		return full[i+1:]
	}
	return full
}

// Fields lists the populated top-level fields of msg by proto field name, sorted.
func Fields(msg proto.Message) []string {
	names := []string{}
	msg.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		names = append(names, string(fd.Name()))
		return true
	})
	sort.Strings(names)
	return names
}

// enumBits lists the non-zero values of a protoc-gen-go enum's name map
// (such as protobufs.AgentCapabilities_name), lowest first.
func enumBits(enum map[int32]string) []int32 {
	bits := make([]int32, 0, len(enum))
	for bit := range enum {
		if bit != 0 {
			bits = append(bits, bit)
		}
	}
	sort.Slice(bits, func(i, j int) bool { return bits[i] < bits[j] })
	return bits
}

// bitNames names the bits of value that are values of enum, lowest first.
func bitNames(enum map[int32]string, value uint64) []string {
	names := []string{}
	for _, bit := range enumBits(enum) {
		if value&uint64(bit) != 0 {
			names = append(names, EnumName(enum[bit]))
		}
	}
	return names
}

// AgentCapabilityNames names the set bits of an AgentCapabilities value.
func AgentCapabilityNames(caps uint64) []string {
	return bitNames(protobufs.AgentCapabilities_name, caps)
}

// AgentCapabilityByName looks up one capability by its short name.
func AgentCapabilityByName(name string) (protobufs.AgentCapabilities, bool) {
	for _, bit := range enumBits(protobufs.AgentCapabilities_name) {
		if strings.EqualFold(EnumName(protobufs.AgentCapabilities_name[bit]), name) {
			return protobufs.AgentCapabilities(bit), true
		}
	}
	return 0, false
}

// ServerCapabilityNames names the set bits of a ServerCapabilities value.
func ServerCapabilityNames(caps uint64) []string {
	return bitNames(protobufs.ServerCapabilities_name, caps)
}

// ServerFlagNames names the set bits of ServerToAgent.flags.
func ServerFlagNames(flags uint64) []string {
	return bitNames(protobufs.ServerToAgentFlags_name, flags)
}

// AgentFlagNames names the set bits of AgentToServer.flags.
func AgentFlagNames(flags uint64) []string {
	return bitNames(protobufs.AgentToServerFlags_name, flags)
}

// Data renders opaque bytes as text when they are valid UTF-8, and always as base64.
func Data(b []byte) map[string]any {
	out := map[string]any{"data_b64": base64.StdEncoding.EncodeToString(b)}
	if utf8.Valid(b) {
		out["data"] = string(b)
	}
	return out
}

// AnyValue converts an OTLP AnyValue to a JSON value. Bytes become base64.
func AnyValue(v *protobufs.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *protobufs.AnyValue_StringValue:
		return x.StringValue
	case *protobufs.AnyValue_BoolValue:
		return x.BoolValue
	case *protobufs.AnyValue_IntValue:
		return x.IntValue
	case *protobufs.AnyValue_DoubleValue:
		return x.DoubleValue
	case *protobufs.AnyValue_BytesValue:
		return base64.StdEncoding.EncodeToString(x.BytesValue)
	case *protobufs.AnyValue_ArrayValue:
		items := []any{}
		for _, item := range x.ArrayValue.GetValues() {
			items = append(items, AnyValue(item))
		}
		return items
	case *protobufs.AnyValue_KvlistValue:
		return KeyValues(x.KvlistValue.GetValues())
	default:
		return nil
	}
}

// KeyValues converts attributes to a JSON object (a later duplicate key wins).
func KeyValues(kvs []*protobufs.KeyValue) map[string]any {
	out := map[string]any{}
	for _, kv := range kvs {
		out[kv.GetKey()] = AnyValue(kv.GetValue())
	}
	return out
}

// StringAttrs builds string-valued attributes in key order.
func StringAttrs(attrs map[string]string) []*protobufs.KeyValue {
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*protobufs.KeyValue, 0, len(keys))
	for _, k := range keys {
		out = append(out, &protobufs.KeyValue{
			Key:   k,
			Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: attrs[k]}},
		})
	}
	return out
}

// ConfigMap renders a config map with its confighash.ConfigMap hash.
func ConfigMap(cfg *protobufs.AgentConfigMap) map[string]any {
	files := map[string]any{}
	for name, f := range cfg.GetConfigMap() {
		files[name] = map[string]any{"content_type": f.GetContentType(), "body": string(f.GetBody())}
	}
	return map[string]any{"files": files, "hash": Hex(confighash.ConfigMap(cfg))}
}

// renderEach renders every value of m with render, under the same keys.
func renderEach[V any](m map[string]V, render func(V) map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for name, v := range m {
		out[name] = render(v)
	}
	return out
}

// Health renders a ComponentHealth tree.
func Health(h *protobufs.ComponentHealth) map[string]any {
	out := map[string]any{
		"healthy":               h.GetHealthy(),
		"status":                h.GetStatus(),
		"last_error":            h.GetLastError(),
		"start_time_unix_nano":  h.GetStartTimeUnixNano(),
		"status_time_unix_nano": h.GetStatusTimeUnixNano(),
	}
	if len(h.GetComponentHealthMap()) > 0 {
		out["components"] = renderEach(h.GetComponentHealthMap(), Health)
	}
	return out
}

// CustomMessage renders a custom message.
func CustomMessage(m *protobufs.CustomMessage) map[string]any {
	out := Data(m.GetData())
	out["capability"] = m.GetCapability()
	out["type"] = m.GetType()
	return out
}

// Headers renders a Headers message as a JSON object.
func Headers(h *protobufs.Headers) map[string]any {
	out := map[string]any{}
	for _, kv := range h.GetHeaders() {
		out[kv.GetKey()] = kv.GetValue()
	}
	return out
}

// PackageStatuses renders what an agent reports about its packages.
func PackageStatuses(ps *protobufs.PackageStatuses) map[string]any {
	pkgs := map[string]any{}
	for name, p := range ps.GetPackages() {
		entry := map[string]any{
			"status":                 EnumName(p.GetStatus().String()),
			"agent_has_version":      p.GetAgentHasVersion(),
			"agent_has_hash":         Hex(p.GetAgentHasHash()),
			"server_offered_version": p.GetServerOfferedVersion(),
			"server_offered_hash":    Hex(p.GetServerOfferedHash()),
			"error":                  p.GetErrorMessage(),
		}
		if d := p.GetDownloadDetails(); d != nil {
			entry["download_percent"] = d.GetDownloadPercent()
			entry["download_bytes_per_second"] = d.GetDownloadBytesPerSecond()
		}
		pkgs[name] = entry
	}
	return map[string]any{
		"all_packages_hash": Hex(ps.GetServerProvidedAllPackagesHash()),
		"error":             ps.GetErrorMessage(),
		"packages":          pkgs,
	}
}

// AgentToServer summarises everything a server can see in one agent message.
func AgentToServer(m *protobufs.AgentToServer) map[string]any {
	out := map[string]any{
		"uid":              UID(m.GetInstanceUid()),
		"seq":              m.GetSequenceNum(),
		"capabilities":     m.GetCapabilities(),
		"capability_names": AgentCapabilityNames(m.GetCapabilities()),
		"flags":            m.GetFlags(),
		"flag_names":       AgentFlagNames(m.GetFlags()),
		"fields":           Fields(m),
	}
	if d := m.GetAgentDescription(); d != nil {
		out["description"] = map[string]any{
			"identifying":     KeyValues(d.GetIdentifyingAttributes()),
			"non_identifying": KeyValues(d.GetNonIdentifyingAttributes()),
		}
	}
	if h := m.GetHealth(); h != nil {
		out["health"] = Health(h)
	}
	if ec := m.GetEffectiveConfig(); ec != nil {
		out["effective_config"] = ConfigMap(ec.GetConfigMap())
	}
	if rcs := m.GetRemoteConfigStatus(); rcs != nil {
		out["remote_config_status"] = map[string]any{
			"status": EnumName(rcs.GetStatus().String()),
			"hash":   Hex(rcs.GetLastRemoteConfigHash()),
			"error":  rcs.GetErrorMessage(),
		}
	}
	if ps := m.GetPackageStatuses(); ps != nil {
		out["package_statuses"] = PackageStatuses(ps)
	}
	if m.GetAgentDisconnect() != nil {
		out["agent_disconnect"] = true
	}
	if csr := m.GetConnectionSettingsRequest(); csr != nil {
		out["connection_settings_request"] = map[string]any{
			"has_csr": len(csr.GetOpamp().GetCertificateRequest().GetCsr()) > 0,
		}
	}
	if cc := m.GetCustomCapabilities(); cc != nil {
		out["custom_capabilities"] = nonNilStrings(cc.GetCapabilities())
	}
	if cm := m.GetCustomMessage(); cm != nil {
		out["custom_message"] = CustomMessage(cm)
	}
	if ac := m.GetAvailableComponents(); ac != nil {
		out["available_components"] = map[string]any{
			"hash":  Hex(ac.GetHash()),
			"count": len(ac.GetComponents()),
		}
	}
	if css := m.GetConnectionSettingsStatus(); css != nil {
		out["connection_settings_status"] = map[string]any{
			"status": EnumName(css.GetStatus().String()),
			"hash":   Hex(css.GetLastConnectionSettingsHash()),
			"error":  css.GetErrorMessage(),
		}
	}
	return out
}

func telemetrySettings[S interface {
	GetDestinationEndpoint() string
	GetHeaders() *protobufs.Headers
}](s S) map[string]any {
	return map[string]any{
		"destination_endpoint": s.GetDestinationEndpoint(),
		"headers":              Headers(s.GetHeaders()),
	}
}

// ConnectionSettings renders a ConnectionSettingsOffers.
func ConnectionSettings(cs *protobufs.ConnectionSettingsOffers) map[string]any {
	out := map[string]any{"hash": Hex(cs.GetHash())}
	if o := cs.GetOpamp(); o != nil {
		out["opamp"] = OpAMPSettings(o)
	}
	if s := cs.GetOwnMetrics(); s != nil {
		out["own_metrics"] = telemetrySettings(s)
	}
	if s := cs.GetOwnTraces(); s != nil {
		out["own_traces"] = telemetrySettings(s)
	}
	if s := cs.GetOwnLogs(); s != nil {
		out["own_logs"] = telemetrySettings(s)
	}
	if len(cs.GetOtherConnections()) > 0 {
		out["other_connections"] = renderEach(cs.GetOtherConnections(), telemetrySettings)
	}
	return out
}

// OpAMPSettings renders the OpAMP part of a connection settings offer.
func OpAMPSettings(o *protobufs.OpAMPConnectionSettings) map[string]any {
	out := map[string]any{
		"destination_endpoint":       o.GetDestinationEndpoint(),
		"headers":                    Headers(o.GetHeaders()),
		"heartbeat_interval_seconds": o.GetHeartbeatIntervalSeconds(),
	}
	if o.GetCertificate() != nil {
		out["has_certificate"] = true
	}
	return out
}

// PackagesAvailable renders a package offer.
func PackagesAvailable(pa *protobufs.PackagesAvailable) map[string]any {
	pkgs := map[string]any{}
	for name, p := range pa.GetPackages() {
		pkgs[name] = map[string]any{
			"type":          EnumName(p.GetType().String()),
			"version":       p.GetVersion(),
			"hash":          Hex(p.GetHash()),
			"download_url":  p.GetFile().GetDownloadUrl(),
			"content_hash":  Hex(p.GetFile().GetContentHash()),
			"has_signature": len(p.GetFile().GetSignature()) > 0,
			"headers":       Headers(p.GetFile().GetHeaders()),
		}
	}
	return map[string]any{"all_packages_hash": Hex(pa.GetAllPackagesHash()), "packages": pkgs}
}

// ErrorResponse renders a ServerErrorResponse.
func ErrorResponse(e *protobufs.ServerErrorResponse) map[string]any {
	out := map[string]any{
		"type":    EnumName(e.GetType().String()),
		"message": e.GetErrorMessage(),
	}
	if ri := e.GetRetryInfo(); ri != nil {
		out["retry_after_ns"] = ri.GetRetryAfterNanoseconds()
	}
	return out
}

// ServerToAgent summarises everything an agent can see in one server message.
func ServerToAgent(m *protobufs.ServerToAgent) map[string]any {
	out := map[string]any{
		"uid":              UID(m.GetInstanceUid()),
		"fields":           Fields(m),
		"flags":            m.GetFlags(),
		"flag_names":       ServerFlagNames(m.GetFlags()),
		"capabilities":     m.GetCapabilities(),
		"capability_names": ServerCapabilityNames(m.GetCapabilities()),
	}
	if e := m.GetErrorResponse(); e != nil {
		out["error_response"] = ErrorResponse(e)
	}
	if rc := m.GetRemoteConfig(); rc != nil {
		cfg := ConfigMap(rc.GetConfig())
		out["remote_config"] = map[string]any{
			"hash":          Hex(rc.GetConfigHash()),
			"files":         cfg["files"],
			"computed_hash": cfg["hash"],
		}
	}
	if cs := m.GetConnectionSettings(); cs != nil {
		out["connection_settings"] = ConnectionSettings(cs)
	}
	if pa := m.GetPackagesAvailable(); pa != nil {
		out["packages_available"] = PackagesAvailable(pa)
	}
	if ai := m.GetAgentIdentification(); ai != nil {
		out["new_instance_uid"] = UID(ai.GetNewInstanceUid())
	}
	if c := m.GetCommand(); c != nil {
		out["command"] = EnumName(c.GetType().String())
	}
	if cc := m.GetCustomCapabilities(); cc != nil {
		out["custom_capabilities"] = nonNilStrings(cc.GetCapabilities())
	}
	if cm := m.GetCustomMessage(); cm != nil {
		out["custom_message"] = CustomMessage(cm)
	}
	return out
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
