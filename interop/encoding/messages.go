// Package encoding builds the benchmark messages of opamp-benches
// (benches/src/messages.rs) with opamp-go's generated types, byte for byte,
// so that encoding costs can be compared across the two implementations.
package encoding

import (
	"bytes"
	"fmt"

	"github.com/open-telemetry/opamp-go/protobufs"
)

// UID is the instance uid every benchmark message carries.
var UID = []byte{0x01, 0x91, 0xe3, 0xa8, 0xc4, 0xb2, 0x7c, 0x3d, 0x8e, 0x9f, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f}

const t0 uint64 = 1_700_000_000_000_000_000

// Filler returns n printable bytes: byte i is 'a' + i%26.
func Filler(n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = byte('a' + i%26)
	}
	return out
}

func capabilities() uint64 {
	return uint64(protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
		protobufs.AgentCapabilities_AgentCapabilities_AcceptsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsEffectiveConfig |
		protobufs.AgentCapabilities_AgentCapabilities_AcceptsPackages |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsPackageStatuses |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsRemoteConfig |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsAvailableComponents)
}

func str(key, value string) *protobufs.KeyValue {
	return &protobufs.KeyValue{Key: key, Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: value}}}
}

// Heartbeat mirrors messages::heartbeat.
func Heartbeat() *protobufs.AgentToServer {
	return &protobufs.AgentToServer{InstanceUid: UID, SequenceNum: 42, Capabilities: capabilities()}
}

// FullStatus mirrors messages::full_status.
func FullStatus() *protobufs.AgentToServer {
	identifying := []*protobufs.KeyValue{
		str("service.name", "io.opentelemetry.collector"),
		str("service.version", "1.2.3"),
		str("service.instance.id", "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f"),
		str("service.namespace", "bench"),
	}
	var nonIdentifying []*protobufs.KeyValue
	for i := 0; i < 16; i++ {
		nonIdentifying = append(nonIdentifying, str(fmt.Sprintf("attr.%02d", i), fmt.Sprintf("value-%02d", i)))
	}
	components := map[string]*protobufs.ComponentHealth{}
	for n := uint64(0); n < 10; n++ {
		h := &protobufs.ComponentHealth{
			Healthy:            n != 7,
			StartTimeUnixNano:  t0 + n,
			Status:             "ok",
			StatusTimeUnixNano: t0 + n + 1,
		}
		if n == 7 {
			h.LastError = "exporter queue full"
		}
		components[fmt.Sprintf("component-%d", n)] = h
	}
	packages := map[string]*protobufs.PackageStatus{}
	for n := byte(0); n < 5; n++ {
		name := fmt.Sprintf("pkg-%d", n)
		packages[name] = &protobufs.PackageStatus{
			Name:                 name,
			AgentHasVersion:      fmt.Sprintf("1.0.%d", n),
			AgentHasHash:         bytes.Repeat([]byte{n}, 32),
			ServerOfferedVersion: fmt.Sprintf("1.0.%d", n),
			ServerOfferedHash:    bytes.Repeat([]byte{n}, 32),
			Status:               protobufs.PackageStatusEnum_PackageStatusEnum_Installed,
		}
	}
	kind := func(kind string, names ...string) *protobufs.ComponentDetails {
		sub := map[string]*protobufs.ComponentDetails{}
		for _, name := range names {
			sub[name] = &protobufs.ComponentDetails{Metadata: []*protobufs.KeyValue{
				str("code.namespace", fmt.Sprintf("go.opentelemetry.io/%s/%s", kind, name)),
			}}
		}
		return &protobufs.ComponentDetails{SubComponentMap: sub}
	}
	rcHash := make([]byte, 32)
	for i := range rcHash {
		rcHash[i] = byte(i)
	}
	return &protobufs.AgentToServer{
		InstanceUid: UID,
		SequenceNum: 0,
		AgentDescription: &protobufs.AgentDescription{
			IdentifyingAttributes:    identifying,
			NonIdentifyingAttributes: nonIdentifying,
		},
		Capabilities: capabilities(),
		Health: &protobufs.ComponentHealth{
			Healthy:            true,
			StartTimeUnixNano:  t0,
			Status:             "running",
			StatusTimeUnixNano: t0 + 1,
			ComponentHealthMap: components,
		},
		EffectiveConfig: &protobufs.EffectiveConfig{ConfigMap: &protobufs.AgentConfigMap{
			ConfigMap: map[string]*protobufs.AgentConfigFile{
				"collector.yaml": {Body: Filler(2048), ContentType: "text/yaml"},
			},
		}},
		RemoteConfigStatus: &protobufs.RemoteConfigStatus{
			LastRemoteConfigHash: rcHash,
			Status:               protobufs.RemoteConfigStatuses_RemoteConfigStatuses_APPLIED,
		},
		PackageStatuses: &protobufs.PackageStatuses{
			Packages:                      packages,
			ServerProvidedAllPackagesHash: bytes.Repeat([]byte{9}, 32),
		},
		AvailableComponents: &protobufs.AvailableComponents{
			Components: map[string]*protobufs.ComponentDetails{
				"receivers": kind("receivers", "otlp", "prometheus", "filelog"),
				"exporters": kind("exporters", "otlp", "debug"),
			},
			Hash: bytes.Repeat([]byte{7}, 32),
		},
	}
}

// BigRemoteConfig mirrors messages::big_remote_config.
func BigRemoteConfig() *protobufs.ServerToAgent {
	return &protobufs.ServerToAgent{
		InstanceUid: UID,
		RemoteConfig: &protobufs.AgentRemoteConfig{
			Config: &protobufs.AgentConfigMap{ConfigMap: map[string]*protobufs.AgentConfigFile{
				"big.yaml": {Body: Filler(1024 * 1024), ContentType: "text/yaml"},
			}},
			ConfigHash: bytes.Repeat([]byte{3}, 32),
		},
	}
}

// PackagesAvailable mirrors messages::packages_available.
func PackagesAvailable() *protobufs.ServerToAgent {
	packages := map[string]*protobufs.PackageAvailable{}
	for n := byte(0); n < 10; n++ {
		name := fmt.Sprintf("package-%d", n)
		packages[name] = &protobufs.PackageAvailable{
			Type:    protobufs.PackageType_PackageType_Addon,
			Version: fmt.Sprintf("2.0.%d", n),
			File: &protobufs.DownloadableFile{
				DownloadUrl: fmt.Sprintf("https://packages.example.com/%s-2.0.%d.tar.gz", name, n),
				ContentHash: bytes.Repeat([]byte{n}, 32),
				Signature:   bytes.Repeat([]byte{0xA0 + n}, 64),
				Headers: &protobufs.Headers{Headers: []*protobufs.Header{
					{Key: "Authorization", Value: fmt.Sprintf("Bearer token-%d", n)},
				}},
			},
			Hash: bytes.Repeat([]byte{0x10 + n}, 32),
		}
	}
	return &protobufs.ServerToAgent{
		InstanceUid: UID,
		PackagesAvailable: &protobufs.PackagesAvailable{
			Packages:        packages,
			AllPackagesHash: bytes.Repeat([]byte{0xEE}, 32),
		},
	}
}
