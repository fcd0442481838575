package smoke

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// connectAgent starts goagent against srv and returns it with its uid once
// the server has seen its first message.
func connectAgent(t *testing.T, srv *proc, url string, args ...string) (*proc, string) {
	t.Helper()
	agent := start(t, "goagent", append([]string{"--endpoint", url, "--heartbeat", "300ms"}, args...)...)
	uid := agent.waitEvent("started").str("uid")
	first := srv.waitFor("first message from "+uid, func(ev event) bool {
		return ev.str("event") == "message" && ev.str("uid") == uid
	})
	if first.obj("description").obj("identifying").str("service.name") != "goagent" {
		t.Fatalf("first message lacks the agent description: %v", first)
	}
	return agent, uid
}

func statusMessage(uid, want string) func(event) bool {
	return func(ev event) bool {
		return ev.str("event") == "message" && ev.str("uid") == uid &&
			ev.obj("remote_config_status").str("status") == want
	}
}

func TestRemoteConfigIsApplied(t *testing.T) {
	for _, transport := range []string{"ws", "http"} {
		t.Run(transport, func(t *testing.T) {
			srv, listening := startServer(t)
			agent, uid := connectAgent(t, srv, endpoint(listening, transport))

			srv.send(map[string]any{"cmd": "offer_remote_config", "id": "cfg", "to": uid,
				"body": "exporters: {debug: {}}\n", "content_type": "text/yaml"})
			hash := srv.ack("cfg").str("hash")
			if len(hash) != 64 {
				t.Fatalf("want a sha256 hex hash in the ack, got %q", hash)
			}

			applied := srv.waitFor("APPLIED status", statusMessage(uid, "APPLIED"))
			if got := applied.obj("remote_config_status").str("hash"); got != hash {
				t.Fatalf("APPLIED for hash %s, offered %s", got, hash)
			}
			reported := agent.waitEvent("remote_config_status")
			if reported.str("status") != "APPLIED" || reported.str("hash") != hash {
				t.Fatalf("agent reported %v, want APPLIED %s", reported, hash)
			}
			effective := agent.waitEvent("effective_config")
			if effective.str("hash") != hash {
				t.Fatalf("effective config hash %s, want the offered %s", effective.str("hash"), hash)
			}
		})
	}
}

func TestRemoteConfigWithMarkerFails(t *testing.T) {
	srv, listening := startServer(t)
	_, uid := connectAgent(t, srv, endpoint(listening, "ws"))
	srv.send(map[string]any{"cmd": "offer_remote_config", "id": "bad", "to": uid, "body": "x: FAIL_ME\n"})
	hash := srv.ack("bad").str("hash")
	failed := srv.waitFor("FAILED status", statusMessage(uid, "FAILED"))
	status := failed.obj("remote_config_status")
	if status.str("hash") != hash || status.str("error") == "" {
		t.Fatalf("want FAILED with hash %s and an error message, got %v", hash, status)
	}
}

func TestPackageIsDownloadedAndVerified(t *testing.T) {
	srv, listening := startServer(t)
	agent, uid := connectAgent(t, srv, endpoint(listening, "http"))

	srv.send(map[string]any{"cmd": "offer_package", "id": "good", "to": uid, "name": "tool", "version": "1.2.3", "content": "binary bytes"})
	offer := srv.ack("good")
	installed := srv.waitFor("Installed status", func(ev event) bool {
		return ev.str("event") == "message" && ev.str("uid") == uid &&
			ev.obj("package_statuses").obj("packages").obj("tool").str("status") == "Installed"
	})
	pkg := installed.obj("package_statuses").obj("packages").obj("tool")
	if pkg.str("agent_has_hash") != offer.str("package_hash") || pkg.str("agent_has_version") != "1.2.3" {
		t.Fatalf("installed %v, offered %v", pkg, offer)
	}
	content := agent.waitEvent("package_content")
	if content["verified"] != true || content.str("sha256") != offer.str("content_sha256") {
		t.Fatalf("agent saw %v, want verified sha256 %s", content, offer.str("content_sha256"))
	}

	srv.send(map[string]any{"cmd": "offer_package", "id": "bad", "to": uid, "name": "tool", "version": "2.0.0", "content": "tampered", "wrong_hash": true})
	srv.ack("bad")
	failed := srv.waitFor("InstallFailed status", func(ev event) bool {
		return ev.str("event") == "message" && ev.str("uid") == uid &&
			ev.obj("package_statuses").obj("packages").obj("tool").str("status") == "InstallFailed"
	})
	if failed.obj("package_statuses").obj("packages").obj("tool").str("error") == "" {
		t.Fatalf("InstallFailed without an error message: %v", failed)
	}
}

func TestCustomMessagesRestartAndNewUid(t *testing.T) {
	srv, listening := startServer(t)
	agent, uid := connectAgent(t, srv, endpoint(listening, "ws"))

	srv.send(map[string]any{"cmd": "custom_message", "id": "cm", "to": uid, "type": "ping", "data": "from server"})
	srv.ack("cm")
	got := agent.waitEvent("custom_message")
	if got.str("type") != "ping" || got.str("data") != "from server" {
		t.Fatalf("agent got %v", got)
	}
	agent.send(map[string]any{"cmd": "send_custom_message", "id": "back", "type": "pong", "data": "from agent"})
	agent.ack("back")
	srv.waitFor("custom message from agent", func(ev event) bool {
		return ev.str("event") == "message" && ev.obj("custom_message").str("data") == "from agent"
	})

	srv.send(map[string]any{"cmd": "restart", "id": "rs", "to": uid})
	srv.ack("rs")
	if cmd := agent.waitEvent("command"); cmd.str("type") != "Restart" {
		t.Fatalf("agent got command %v", cmd)
	}

	srv.send(map[string]any{"cmd": "new_instance_uid", "id": "uid", "to": uid})
	targets, _ := srv.ack("uid")["targets"].([]any)
	if len(targets) != 1 {
		t.Fatalf("want one target, got %v", targets)
	}
	newUID := event(targets[0].(map[string]any)).str("new_uid")
	if changed := agent.waitEvent("instance_uid_changed"); changed.str("new_uid") != newUID {
		t.Fatalf("agent adopted %v, server assigned %s", changed, newUID)
	}
	srv.waitFor("message with the new uid", func(ev event) bool {
		return ev.str("event") == "message" && ev.str("uid") == newUID
	})
}

func TestFullStateAndHeartbeatSettings(t *testing.T) {
	srv, listening := startServer(t)
	agent, uid := connectAgent(t, srv, endpoint(listening, "ws"))

	srv.send(map[string]any{"cmd": "offer_connection_settings", "id": "cs", "to": uid, "heartbeat_interval_seconds": 1})
	hash := srv.ack("cs").str("hash")
	if got := agent.waitEvent("opamp_connection_settings"); got["heartbeat_interval_seconds"] != float64(1) {
		t.Fatalf("agent got %v", got)
	}
	srv.waitFor("connection settings APPLIED", func(ev event) bool {
		s := ev.obj("connection_settings_status")
		return ev.str("event") == "message" && s.str("status") == "APPLIED" && s.str("hash") == hash
	})

	srv.send(map[string]any{"cmd": "report_full_state", "id": "full", "to": uid})
	srv.ack("full")
	seen := agent.waitFor("ReportFullState flag", func(ev event) bool {
		return ev.str("event") == "server_message" && ev["flags"] == float64(1)
	})
	if seen.str("uid") != uid {
		t.Fatalf("flag arrived for %s", seen.str("uid"))
	}
	srv.waitFor("full state", func(ev event) bool {
		return ev.str("event") == "message" && ev.str("uid") == uid && ev["seq"] != float64(0) &&
			ev["description"] != nil && ev["effective_config"] != nil && ev["health"] != nil
	})
}

func TestRefusalsAndUnavailable(t *testing.T) {
	for _, transport := range []string{"ws", "http"} {
		t.Run(transport, func(t *testing.T) {
			srv, listening := startServer(t)
			srv.send(map[string]any{"cmd": "refuse", "id": "401", "status": 401})
			srv.ack("401")
			srv.send(map[string]any{"cmd": "refuse", "id": "503", "status": 503, "retry_after": "1"})
			srv.ack("503")

			agent := start(t, "goagent", "--endpoint", endpoint(listening, transport), "--heartbeat", "300ms")
			first := agent.waitEvent("http_status")
			if first["status"] != float64(401) {
				t.Fatalf("want 401 first, got %v", first)
			}
			if transport == "http" {
				// opamp-go's HTTP client drops a message answered by 401 and
				// only tries again on its next poll.
				agent.send(map[string]any{"cmd": "set_health", "id": "h", "healthy": true, "status": "poke"})
			}
			second := agent.waitEvent("http_status")
			if second["status"] != float64(503) || second.str("retry_after") != "1" {
				t.Fatalf("want 503 with Retry-After 1, got %v", second)
			}
			agent.waitEvent("connected")

			srv.send(map[string]any{"cmd": "unavailable", "id": "u", "retry_after_ns": 2_000_000_000, "message": "busy"})
			srv.ack("u")
			got := agent.waitEvent("error_response")
			if got.str("type") != "Unavailable" || got["retry_after_ns"] != float64(2_000_000_000) {
				t.Fatalf("agent got %v", got)
			}

			if transport == "ws" {
				// With disconnect the server closes after the error; the agent comes back.
				srv.send(map[string]any{"cmd": "unavailable", "id": "ud", "retry_after_ns": 1_000_000, "disconnect": true})
				srv.ack("ud")
				srv.waitEvent("closed_by_server")
				srv.waitEvent("disconnected")
				srv.waitEvent("connected")
				agent.waitEvent("error_response")
			}
		})
	}
}

func TestCompression(t *testing.T) {
	t.Run("http_gzip", func(t *testing.T) {
		srv, listening := startServer(t, "--gzip")
		agent, uid := connectAgent(t, srv, endpoint(listening, "http"), "--gzip")
		agent.send(map[string]any{"cmd": "set_health", "id": "h", "healthy": false, "status": "degraded", "last_error": "disk"})
		agent.ack("h")
		msg := srv.waitFor("compressed health report", func(ev event) bool {
			return ev.str("event") == "message" && ev.str("uid") == uid && ev.obj("health").str("status") == "degraded"
		})
		if msg.obj("http_headers").str("Content-Encoding") != "gzip" {
			t.Fatalf("request was not gzipped: %v", msg.obj("http_headers"))
		}
		// opamp-go's server gzips a response whenever the request accepts gzip.
		reply := agent.waitFor("a response", func(ev event) bool { return ev.str("event") == "server_message" })
		if reply["compressed"] != true {
			t.Fatalf("response was not gzipped: %v", reply)
		}
	})
	t.Run("ws_deflate", func(t *testing.T) {
		srv, listening := startServer(t, "--gzip")
		agent := start(t, "goagent", "--endpoint", endpoint(listening, "ws"), "--gzip")
		connected := srv.waitEvent("connected")
		if ext := connected.obj("headers").str("Sec-Websocket-Extensions"); ext == "" {
			t.Fatalf("agent did not offer permessage-deflate: %v", connected)
		}
		uid := agent.waitEvent("started").str("uid")
		srv.waitFor("first message", func(ev event) bool { return ev.str("event") == "message" && ev.str("uid") == uid })
		srv.send(map[string]any{"cmd": "offer_remote_config", "id": "cfg", "to": uid, "body": "compressed: yes\n"})
		hash := srv.ack("cfg").str("hash")
		// The tap inflates frames itself; the decoded offer proves it.
		seen := agent.waitFor("decoded offer", func(ev event) bool {
			return ev.str("event") == "server_message" && ev.obj("remote_config").str("hash") != "" ||
				ev.str("event") == "tap_error"
		})
		if seen.str("event") == "tap_error" || seen.obj("remote_config").str("hash") != hash || seen["compressed"] != true {
			t.Fatalf("tap saw %v, want the offer with hash %s", seen, hash)
		}
		srv.waitFor("APPLIED", statusMessage(uid, "APPLIED"))
	})
}

func TestTLS(t *testing.T) {
	caFile, certFile, keyFile := writeCertificates(t)
	srv, listening := startServer(t, "--cert", certFile, "--key", keyFile)
	for _, transport := range []string{"ws", "http"} {
		t.Run(transport, func(t *testing.T) {
			url := endpoint(listening, transport)
			agent, uid := connectAgent(t, srv, url, "--ca-file", caFile)
			srv.send(map[string]any{"cmd": "offer_remote_config", "id": "cfg", "to": uid, "body": "tls: true\n"})
			hash := srv.ack("cfg").str("hash")
			srv.waitFor("APPLIED over TLS", statusMessage(uid, "APPLIED"))
			if got := agent.waitEvent("remote_config_status"); got.str("hash") != hash {
				t.Fatalf("agent applied %v, want %s", got, hash)
			}
		})
	}
}

// writeCertificates creates a CA and a server certificate for 127.0.0.1.
func writeCertificates(t *testing.T) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	// sign returns template as a DER certificate signed by parent's key.
	sign := func(template, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) []byte {
		der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	// certificate is a template valid from an hour ago for a day.
	certificate := func(serial int64, commonName string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: commonName},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
		}
	}
	caKey := newKey()
	caTemplate := certificate(1, "interop smoke CA")
	caTemplate.IsCA = true
	caTemplate.BasicConstraintsValid = true
	caTemplate.KeyUsage = x509.KeyUsageCertSign
	caDER := sign(caTemplate, caTemplate, caKey, caKey)
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey()
	template := certificate(2, "127.0.0.1")
	template.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	template.DNSNames = []string{"localhost"}
	template.KeyUsage = x509.KeyUsageDigitalSignature
	template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	der := sign(template, caCert, key, caKey)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, blockType string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", der), write("server.key", "PRIVATE KEY", keyDER)
}
