// Command gomessages prints, as one JSON object, the SHA-256 of each
// benchmark message built with opamp-go's types, so a Rust test can prove
// both benchmarks measure the same bytes.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/opamp-rs/opamp-rs/interop/encoding"
)

func main() {
	hashes, err := encoding.Hashes()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(hashes); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
