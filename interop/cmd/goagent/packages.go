package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"

	"github.com/opamp-rs/opamp-rs/interop/internal/jsonl"
	"github.com/opamp-rs/opamp-rs/interop/internal/pbjson"
)

// maxPackageBytes bounds one downloaded package kept in memory.
const maxPackageBytes = 256 << 20

type storedPackage struct {
	typ         protobufs.PackageType
	hash        []byte
	version     string
	content     []byte
	contentHash []byte
}

// memoryPackages is an in-memory types.PackagesStateProvider. It verifies the
// sha256 content hash itself, because opamp-go's syncer leaves that to the
// application.
type memoryPackages struct {
	mu       sync.Mutex
	events   *jsonl.Emitter
	allHash  []byte
	packages map[string]*storedPackage
	statuses *protobufs.PackageStatuses
}

var _ types.PackagesStateProvider = (*memoryPackages)(nil)

func newMemoryPackages(events *jsonl.Emitter) *memoryPackages {
	return &memoryPackages{events: events, packages: map[string]*storedPackage{}}
}

func (m *memoryPackages) AllPackagesHash() ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.allHash), nil
}

func (m *memoryPackages) SetAllPackagesHash(hash []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.allHash = bytes.Clone(hash)
	return nil
}

func (m *memoryPackages) Packages() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.packages))
	for name := range m.packages {
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}

func (m *memoryPackages) PackageState(name string) (types.PackageState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.packages[name]
	if !ok {
		return types.PackageState{Exists: false}, nil
	}
	return types.PackageState{Exists: true, Type: p.typ, Hash: bytes.Clone(p.hash), Version: p.version}, nil
}

func (m *memoryPackages) SetPackageState(name string, state types.PackageState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.packages[name]
	if !ok {
		return fmt.Errorf("package %q does not exist", name)
	}
	if state.Type != p.typ {
		return fmt.Errorf("package %q has type %v, not %v", name, p.typ, state.Type)
	}
	p.hash = bytes.Clone(state.Hash)
	p.version = state.Version
	return nil
}

func (m *memoryPackages) CreatePackage(name string, typ protobufs.PackageType) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.packages[name]; ok {
		return fmt.Errorf("package %q already exists", name)
	}
	m.packages[name] = &storedPackage{typ: typ}
	return nil
}

func (m *memoryPackages) FileContentHash(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.packages[name]
	if !ok {
		return nil, nil
	}
	return bytes.Clone(p.contentHash), nil
}

func (m *memoryPackages) UpdateContent(ctx context.Context, name string, data io.Reader, contentHash, signature []byte) error {
	content, err := io.ReadAll(io.LimitReader(data, maxPackageBytes+1))
	if err != nil {
		return fmt.Errorf("read package %q: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(content) > maxPackageBytes {
		return fmt.Errorf("package %q is larger than %d bytes", name, maxPackageBytes)
	}
	sum := sha256.Sum256(content)
	verified := bytes.Equal(sum[:], contentHash)
	fields := jsonl.Fields{
		"name":           name,
		"bytes":          len(content),
		"sha256":         pbjson.Hex(sum[:]),
		"expected_hash":  pbjson.Hex(contentHash),
		"verified":       verified,
		"has_signature":  len(signature) > 0,
		"content_prefix": prefix(content, 64),
	}
	m.events.Emit("package_content", fields)
	if !verified {
		return errors.New("content hash mismatch: sha256 of the download is " + pbjson.Hex(sum[:]) +
			", the server announced " + pbjson.Hex(contentHash))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.packages[name]
	if !ok {
		return fmt.Errorf("package %q does not exist", name)
	}
	p.content = content
	p.contentHash = sum[:]
	return nil
}

func (m *memoryPackages) DeletePackage(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.packages, name)
	m.events.Emit("package_deleted", jsonl.Fields{"name": name})
	return nil
}

func (m *memoryPackages) LastReportedStatuses() (*protobufs.PackageStatuses, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.statuses == nil {
		return nil, nil
	}
	return proto.Clone(m.statuses).(*protobufs.PackageStatuses), nil
}

func (m *memoryPackages) SetLastReportedStatuses(statuses *protobufs.PackageStatuses) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	// The syncer keeps mutating the value it passes in, so keep a snapshot.
	m.statuses = proto.Clone(statuses).(*protobufs.PackageStatuses)
	return nil
}

// snapshot renders the stored packages and last statuses for an event.
func (m *memoryPackages) snapshot() jsonl.Fields {
	m.mu.Lock()
	defer m.mu.Unlock()
	pkgs := map[string]any{}
	for name, p := range m.packages {
		pkgs[name] = map[string]any{
			"type":         pbjson.EnumName(p.typ.String()),
			"version":      p.version,
			"hash":         pbjson.Hex(p.hash),
			"content_hash": pbjson.Hex(p.contentHash),
			"bytes":        len(p.content),
		}
	}
	out := jsonl.Fields{"all_packages_hash": pbjson.Hex(m.allHash), "packages": pkgs}
	if m.statuses != nil {
		out["statuses"] = pbjson.PackageStatuses(m.statuses)
	}
	return out
}

func prefix(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(bytes.ToValidUTF8(b, []byte("?")))
}
