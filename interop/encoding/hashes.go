package encoding

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"
)

type protobufsAgentToServer = protobufs.AgentToServer
type protobufsServerToAgent = protobufs.ServerToAgent

// Hashes returns the SHA-256 (hex) of each benchmark message's deterministic
// encoding (map entries sorted by key, as prost's BTreeMap encodes them).
func Hashes() (map[string]string, error) {
	messages := map[string]proto.Message{
		"heartbeat":          Heartbeat(),
		"full_status":        FullStatus(),
		"remote_config_1mib": BigRemoteConfig(),
		"packages_available": PackagesAvailable(),
	}
	out := map[string]string{}
	for name, msg := range messages {
		wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(wire)
		out[name] = hex.EncodeToString(sum[:])
	}
	return out, nil
}
