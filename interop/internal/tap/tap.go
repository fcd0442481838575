// Package tap lets goagent see the raw ServerToAgent messages that opamp-go's
// client consumes without exposing them (its callbacks hand over only some
// fields, and never flags, capabilities or the HTTP status of a refusal).
//
// It works below opamp-go: the dial functions returned here wrap each new
// connection so that every byte the client reads is also copied to a parser
// goroutine, which decodes HTTP responses or WebSocket frames on its own.
// The client's reads are never delayed by more than handing the bytes over.
package tap

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/open-telemetry/opamp-go/protobufs"
	"google.golang.org/protobuf/proto"
)

// Kind selects how the read side of a connection is parsed.
type Kind int

const (
	// WebSocket parses an HTTP upgrade response followed by server frames.
	WebSocket Kind = iota
	// HTTP parses a sequence of HTTP/1.1 responses carrying ServerToAgent bodies.
	HTTP
)

// maxMessage bounds what the parser buffers for one message; larger ones are
// skipped (the client has its own limit and will complain itself).
const maxMessage = 64 << 20

// Observer receives what the parser decodes. Any callback may be nil.
type Observer struct {
	// Message is called for each decoded ServerToAgent; compressed tells
	// whether it arrived gzipped (HTTP) or deflated (WebSocket).
	Message func(msg *protobufs.ServerToAgent, compressed bool)
	// Status is called for an HTTP response that does not carry a message:
	// a refused WebSocket upgrade or a non-200 answer to a plain HTTP POST.
	Status func(status int, header http.Header)
	// Close is called for a WebSocket close frame from the server.
	Close func(code int, reason string)
	// Problem is called when the parser cannot make sense of the stream.
	Problem func(err error)
}

// Dialers builds the dial functions to plug into gorilla's Dialer or an
// http.Transport. tlsConfig is used for TLS connections (the handshake is done
// here so that the tap sees plaintext); it may be nil for plain connections.
func Dialers(kind Kind, tlsConfig *tls.Config, obs Observer) (
	plain func(ctx context.Context, network, addr string) (net.Conn, error),
	secure func(ctx context.Context, network, addr string) (net.Conn, error),
) {
	var dialer net.Dialer
	plain = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return wrap(conn, kind, obs), nil
	}
	secure = func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cfg := &tls.Config{}
		if tlsConfig != nil {
			cfg = tlsConfig.Clone()
		}
		if cfg.ServerName == "" {
			host, _, splitErr := net.SplitHostPort(addr)
			if splitErr != nil {
				host = addr
			}
			cfg.ServerName = host
		}
		// Only HTTP/1.1 is parsed here, so never let ALPN pick h2.
		cfg.NextProtos = []string{"http/1.1"}
		conn := tls.Client(raw, cfg)
		if err := conn.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, err
		}
		return wrap(conn, kind, obs), nil
	}
	return plain, secure
}

// teeConn copies everything read from the connection into a pipe.
type teeConn struct {
	net.Conn
	pipe      *io.PipeWriter
	closeOnce sync.Once
}

func wrap(conn net.Conn, kind Kind, obs Observer) net.Conn {
	reader, writer := io.Pipe()
	go func() {
		parse(reader, kind, obs)
		// Keep consuming so that the connection's reader never blocks on us.
		_, _ = io.Copy(io.Discard, reader)
	}()
	return &teeConn{Conn: conn, pipe: writer}
}

func (c *teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		_, _ = c.pipe.Write(p[:n])
	}
	if err != nil {
		c.closeOnce.Do(func() { _ = c.pipe.CloseWithError(err) })
	}
	return n, err
}

func (c *teeConn) Close() error {
	c.closeOnce.Do(func() { _ = c.pipe.Close() })
	return c.Conn.Close()
}

func parse(r io.Reader, kind Kind, obs Observer) {
	br := bufio.NewReader(r)
	var err error
	switch kind {
	case WebSocket:
		err = parseWebSocket(br, obs)
	case HTTP:
		err = parseHTTP(br, obs)
	}
	if err != nil && !isEndOfStream(err) && obs.Problem != nil {
		obs.Problem(err)
	}
}

func isEndOfStream(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		strings.Contains(err.Error(), "connection reset")
}

func decode(payload []byte, compressed bool, obs Observer) {
	msg := &protobufs.ServerToAgent{}
	if err := proto.Unmarshal(payload, msg); err != nil {
		if obs.Problem != nil {
			obs.Problem(fmt.Errorf("undecodable ServerToAgent (%d bytes): %w", len(payload), err))
		}
		return
	}
	if obs.Message != nil {
		obs.Message(msg, compressed)
	}
}

func parseHTTP(br *bufio.Reader, obs Observer) error {
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxMessage+1))
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			if obs.Status != nil {
				obs.Status(resp.StatusCode, resp.Header)
			}
			continue
		}
		if len(body) > maxMessage {
			continue
		}
		gzipped := strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip")
		if gzipped {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				return fmt.Errorf("gzip response: %w", err)
			}
			body, err = io.ReadAll(io.LimitReader(zr, maxMessage+1))
			if err != nil {
				return fmt.Errorf("gzip response: %w", err)
			}
		}
		decode(body, gzipped, obs)
	}
}

func parseWebSocket(br *bufio.Reader, obs Observer) error {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		if obs.Status != nil {
			obs.Status(resp.StatusCode, resp.Header)
		}
		return nil
	}
	var message []byte
	var messageOpcode byte
	var compressed bool
	var oversized bool
	for {
		var head [2]byte
		if _, err := io.ReadFull(br, head[:]); err != nil {
			return err
		}
		fin := head[0]&0x80 != 0
		rsv1 := head[0]&0x40 != 0
		opcode := head[0] & 0x0f
		masked := head[1]&0x80 != 0
		length := uint64(head[1] & 0x7f)
		switch length {
		case 126:
			var ext [2]byte
			if _, err := io.ReadFull(br, ext[:]); err != nil {
				return err
			}
			length = uint64(binary.BigEndian.Uint16(ext[:]))
		case 127:
			var ext [8]byte
			if _, err := io.ReadFull(br, ext[:]); err != nil {
				return err
			}
			length = binary.BigEndian.Uint64(ext[:])
		}
		var mask [4]byte
		if masked {
			if _, err := io.ReadFull(br, mask[:]); err != nil {
				return err
			}
		}
		if length > maxMessage {
			// Skip the payload without buffering it.
			if _, err := io.CopyN(io.Discard, br, int64(length)); err != nil {
				return err
			}
			oversized = true
			if fin && opcode < 8 {
				message, oversized = nil, false
			}
			continue
		}
		payload := make([]byte, length)
		if _, err := io.ReadFull(br, payload); err != nil {
			return err
		}
		if masked {
			for i := range payload {
				payload[i] ^= mask[i%4]
			}
		}
		if opcode >= 8 {
			if opcode == 8 && obs.Close != nil {
				code := 1005 // no status code present
				reason := ""
				if len(payload) >= 2 {
					code = int(binary.BigEndian.Uint16(payload[:2]))
					reason = string(payload[2:])
				}
				obs.Close(code, reason)
			}
			continue
		}
		if opcode != 0 {
			messageOpcode, compressed, message = opcode, rsv1, nil
		}
		if !oversized {
			message = append(message, payload...)
			oversized = len(message) > maxMessage
		}
		if !fin {
			continue
		}
		data, skip, deflated := message, oversized, compressed
		message, oversized = nil, false
		if skip || messageOpcode != 2 {
			continue
		}
		if deflated {
			// permessage-deflate: raw DEFLATE with the final empty block's tail removed.
			zr := flate.NewReader(io.MultiReader(bytes.NewReader(data), bytes.NewReader([]byte{0, 0, 0xff, 0xff})))
			inflated, err := io.ReadAll(io.LimitReader(zr, maxMessage+1))
			if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("inflate frame: %w", err)
			}
			data = inflated
		}
		// OpAMP WebSocket messages start with a varint header, currently always 0.
		if len(data) > 0 && data[0] == 0 {
			header, n := binary.Uvarint(data)
			if n <= 0 || header != 0 {
				if obs.Problem != nil {
					obs.Problem(fmt.Errorf("unexpected OpAMP frame header %d", header))
				}
				continue
			}
			data = data[n:]
		}
		decode(data, deflated, obs)
	}
}
