// Package confighash computes the hashes goserver puts into its offers.
//
// ConfigMap uses the same byte layout as opamp-proto's `config_hash` on the
// Rust side, so a hash printed by either side can be compared directly.
package confighash

import (
	"crypto/sha256"
	"encoding/binary"
	"sort"

	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"
)

const configDomain = "opamp-rs config v1"

// ConfigMap hashes a config map: SHA-256 over a domain tag, then for every
// file in name order its name, content type and body, each preceded by its
// length as a big-endian u64. A nil map hashes like an empty one.
func ConfigMap(cfg *protobufs.AgentConfigMap) []byte {
	digest := sha256.New()
	digest.Write([]byte(configDomain))
	files := cfg.GetConfigMap()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var length [8]byte
	for _, name := range names {
		file := files[name]
		for _, part := range [][]byte{[]byte(name), []byte(file.GetContentType()), file.GetBody()} {
			binary.BigEndian.PutUint64(length[:], uint64(len(part)))
			digest.Write(length[:])
			digest.Write(part)
		}
	}
	return digest.Sum(nil)
}

// Message is SHA-256 of the deterministic protobuf encoding of msg (maps in
// key order), used for connection settings and package hashes.
func Message(msg proto.Message) []byte {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		// Marshalling a well-formed message built in this process cannot fail;
		// fall back to hashing nothing rather than crashing a test harness.
		data = nil
	}
	sum := sha256.Sum256(data)
	return sum[:]
}
