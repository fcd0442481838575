// Command goclients runs N opamp-go clients in one process against one
// OpAMP server and reports what they cost in this process: RSS per idle
// client over the baseline, CPU time per heartbeat and the connect rate.
// It is the opamp-go side of the client comparison in benches/ (the Rust
// side is `loadgen --opamp-clients`), a measuring tool only, and prints one
// JSON line with the same `clients` object as loadgen.
//
//	goclients --url ws://127.0.0.1:4320/v1/opamp --agents 5000 --heartbeat 10s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/client"
	"github.com/open-telemetry/opamp-go/client/types"
	"github.com/open-telemetry/opamp-go/protobufs"
)

type nopLogger struct{}

func (nopLogger) Debugf(context.Context, string, ...interface{}) {}
func (nopLogger) Errorf(context.Context, string, ...interface{}) {}

// procSample is one reading of this process's RSS and CPU time.
type procSample struct {
	at       time.Time
	rssBytes uint64
	cpu      time.Duration
	threads  uint64
}

func sample() procSample {
	s := procSample{at: time.Now()}
	if text, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(text), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			value, _ := strconv.ParseUint(fields[1], 10, 64)
			switch fields[0] {
			case "VmRSS:":
				s.rssBytes = value * 1024
			case "Threads:":
				s.threads = value
			}
		}
	}
	var usage syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) == nil {
		s.cpu = time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
	}
	return s
}

func round2(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }
func mib(bytes uint64) float64 { return round2(float64(bytes) / (1024 * 1024)) }

func main() {
	url := flag.String("url", "ws://127.0.0.1:4320/v1/opamp", "OpAMP endpoint: ws:// (WebSocket) or http:// (plain HTTP)")
	agents := flag.Int("agents", 1000, "number of clients")
	heartbeat := flag.Duration("heartbeat", 30*time.Second, "heartbeat (WebSocket) or polling (HTTP) interval")
	rampRate := flag.Float64("ramp-rate", 1000, "clients started per second")
	settle := flag.Duration("settle", 3*time.Second, "wait after all connected before sampling idle RSS")
	duration := flag.Duration("duration", 20*time.Second, "steady window for CPU per heartbeat")
	rampTimeout := flag.Duration("ramp-timeout", 60*time.Second, "give up waiting for every client to connect after this long")
	label := flag.String("label", "opamp-go", "label in the report")
	scenario := flag.String("scenario", "default", "scenario in the report")
	jsonOut := flag.String("json-out", "", "also append the JSON line to this file")
	flag.Parse()

	httpTransport := strings.HasPrefix(*url, "http")
	transport := "websocket"
	if httpTransport {
		transport = "http"
	}
	caps := protobufs.AgentCapabilities_AgentCapabilities_ReportsStatus |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHeartbeat |
		protobufs.AgentCapabilities_AgentCapabilities_ReportsHealth

	var connected, failures atomic.Int64
	runtime.GC()
	baseline := sample()
	started := time.Now()
	clients := make([]client.OpAMPClient, 0, *agents)
	for i := 0; i < *agents; i++ {
		due := started.Add(time.Duration(float64(i) / *rampRate * float64(time.Second)))
		time.Sleep(time.Until(due))
		var c client.OpAMPClient
		if httpTransport {
			h := client.NewHTTP(nopLogger{})
			h.SetPollingInterval(*heartbeat)
			c = h
		} else {
			c = client.NewWebSocket(nopLogger{})
		}
		uid, _ := uuid.NewV7()
		if err := c.SetAgentDescription(&protobufs.AgentDescription{
			IdentifyingAttributes: []*protobufs.KeyValue{
				{Key: "service.name", Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: "goclients"}}},
				{Key: "service.version", Value: &protobufs.AnyValue{Value: &protobufs.AnyValue_StringValue{StringValue: "1.0.0"}}},
			},
		}); err != nil {
			fail("SetAgentDescription: %v", err)
		}
		// ReportsHealth is refused while no health is set.
		if err := c.SetHealth(&protobufs.ComponentHealth{Healthy: true, Status: "running"}); err != nil {
			fail("SetHealth: %v", err)
		}
		if err := c.SetCapabilities(&caps); err != nil {
			fail("SetCapabilities: %v", err)
		}
		once := atomic.Bool{}
		interval := *heartbeat
		settings := types.StartSettings{
			OpAMPServerURL:    *url,
			InstanceUid:       types.InstanceUid(uid),
			HeartbeatInterval: &interval,
			Callbacks: types.Callbacks{
				OnConnect: func(context.Context) {
					if !once.Swap(true) {
						connected.Add(1)
					}
				},
				OnConnectFailed: func(_ context.Context, err error) {
					if failures.Add(1) == 1 {
						fmt.Fprintf(os.Stderr, "goclients: first connect failure: %v\n", err)
					}
					if once.Swap(false) {
						connected.Add(-1)
					}
				},
			},
		}
		if err := c.Start(context.Background(), settings); err != nil {
			fail("Start client %d: %v", i, err)
		}
		clients = append(clients, c)
	}
	deadline := time.Now().Add(*rampTimeout)
	for int(connected.Load()) < *agents && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	connectedAfter := time.Since(started)
	connectedAtRamp := connected.Load()

	time.Sleep(*settle)
	idle := sample()
	idleConnected := connected.Load()

	before := sample()
	time.Sleep(*duration)
	after := sample()
	steadyConnected := connected.Load()

	var kibPerClient, totalKib any
	if idleConnected > 0 {
		over := int64(idle.rssBytes) - int64(baseline.rssBytes)
		if over < 0 {
			over = 0
		}
		kibPerClient = round2(float64(over) / 1024 / float64(idleConnected))
		totalKib = round2(float64(idle.rssBytes) / 1024 / float64(idleConnected))
	}
	window := after.at.Sub(before.at).Seconds()
	heartbeats := float64(steadyConnected) * window / heartbeat.Seconds()
	var cpuPerHeartbeat any
	cpu := (after.cpu - before.cpu).Seconds()
	if heartbeats >= 1 {
		cpuPerHeartbeat = round2(cpu * 1e6 / heartbeats)
	}
	report := map[string]any{
		"loadgen":     1,
		"label":       *label,
		"scenario":    *scenario,
		"transport":   transport,
		"url":         *url,
		"agents":      *agents,
		"heartbeat_s": heartbeat.Seconds(),
		"ramp_rate":   *rampRate,
		"unix_time":   time.Now().Unix(),
		"client_impl": "opamp-go",
		"ramp": map[string]any{
			"connected": connectedAtRamp,
			"seconds":   round2(connectedAfter.Seconds()),
			"errors":    map[string]any{"connect_failed": failures.Load()},
		},
		"clients": map[string]any{
			"connected":            idleConnected,
			"baseline_mib":         mib(baseline.rssBytes),
			"idle_rss_mib":         mib(idle.rssBytes),
			"kib_per_client":       kibPerClient,
			"total_kib_per_client": totalKib,
			"threads":              idle.threads,
			"connects_per_s":       round2(float64(connectedAtRamp) / connectedAfter.Seconds()),
			"heartbeats":           float64(int64(heartbeats + 0.5)),
			"cpu_percent":          round2(100 * cpu / window),
			"cpu_us_per_heartbeat": cpuPerHeartbeat,
		},
	}
	line, _ := json.Marshal(report)
	fmt.Println(string(line))
	if *jsonOut != "" {
		file, err := os.OpenFile(*jsonOut, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			fail("writing %s: %v", *jsonOut, err)
		}
		fmt.Fprintln(file, string(line))
		_ = file.Close()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan struct{}, len(clients))
	for _, c := range clients {
		go func(c client.OpAMPClient) { _ = c.Stop(ctx); done <- struct{}{} }(c)
	}
	for range clients {
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "goclients: "+format+"\n", args...)
	os.Exit(2)
}
