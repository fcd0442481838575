package encoding

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// The Go half of the encoding comparison; the Rust half is
// `cargo bench -p opamp-benches --bench encoding`. Same messages, same
// operations: encode, encoded length, decode, encode+decode.
func benchMessage[M proto.Message](b *testing.B, msg M, fresh func() M) {
	wire, err := proto.Marshal(msg)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		buf := make([]byte, 0, len(wire))
		for i := 0; i < b.N; i++ {
			out, err := proto.MarshalOptions{}.MarshalAppend(buf[:0], msg)
			if err != nil {
				b.Fatal(err)
			}
			buf = out
		}
	})
	b.Run("encoded_len", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			_ = proto.Size(msg)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for i := 0; i < b.N; i++ {
			if err := proto.Unmarshal(wire, fresh()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode+decode", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for i := 0; i < b.N; i++ {
			out, err := proto.Marshal(msg)
			if err != nil {
				b.Fatal(err)
			}
			if err := proto.Unmarshal(out, fresh()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkHeartbeat(b *testing.B) {
	benchMessage(b, Heartbeat(), func() *protobufsAgentToServer { return new(protobufsAgentToServer) })
}

func BenchmarkFullStatus(b *testing.B) {
	benchMessage(b, FullStatus(), func() *protobufsAgentToServer { return new(protobufsAgentToServer) })
}

func BenchmarkRemoteConfig1MiB(b *testing.B) {
	benchMessage(b, BigRemoteConfig(), func() *protobufsServerToAgent { return new(protobufsServerToAgent) })
}

func BenchmarkPackagesAvailable(b *testing.B) {
	benchMessage(b, PackagesAvailable(), func() *protobufsServerToAgent { return new(protobufsServerToAgent) })
}

func BenchmarkRemoteConfig1MiBMemcpy(b *testing.B) {
	wire, _ := proto.Marshal(BigRemoteConfig())
	dest := make([]byte, len(wire))
	b.SetBytes(int64(len(wire)))
	for i := 0; i < b.N; i++ {
		copy(dest, wire)
	}
}
