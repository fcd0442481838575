package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/opamp-rs/opamp-rs/interop/internal/jsonl"
)

type servedFile struct {
	name    string
	content []byte
	// headers the download request must carry (DownloadableFile.headers).
	headers map[string]string
}

// fileServer serves offered package files on its own loopback listener, as a
// real deployment would serve them from a separate download host.
type fileServer struct {
	events *jsonl.Emitter
	mu     sync.Mutex
	files  map[string]servedFile
	next   int
	base   string
	port   int
	server *http.Server
}

func startFileServer(listen string, tlsConfig *tls.Config, events *jsonl.Emitter) (*fileServer, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("file server: %w", err)
	}
	fs := &fileServer{events: events, files: map[string]servedFile{}}
	fs.port = ln.Addr().(*net.TCPAddr).Port
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsConfig)
	}
	fs.base = scheme + "://" + ln.Addr().String()
	fs.server = &http.Server{Handler: fs}
	go func() { _ = fs.server.Serve(ln) }()
	return fs, nil
}

// add stores content under a fresh path and returns its URL.
func (fs *fileServer) add(name string, content []byte, headers map[string]string) string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.next++
	path := "/packages/" + strconv.Itoa(fs.next) + "/" + name
	fs.files[path] = servedFile{name: name, content: content, headers: headers}
	return fs.base + path
}

func (fs *fileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fs.mu.Lock()
	file, ok := fs.files[r.URL.Path]
	fs.mu.Unlock()
	status := http.StatusOK
	switch {
	case !ok:
		status = http.StatusNotFound
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		status = http.StatusMethodNotAllowed
	default:
		for k, v := range file.headers {
			if r.Header.Get(k) != v {
				status = http.StatusForbidden
			}
		}
	}
	fs.events.Emit("package_download", jsonl.Fields{
		"path":   r.URL.Path,
		"name":   file.name,
		"status": status,
		"remote": r.RemoteAddr,
	})
	if status != http.StatusOK {
		http.Error(w, http.StatusText(status), status)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(file.content)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(file.content)
	}
}
