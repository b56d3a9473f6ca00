// Regenerates go-cosigned.txt with the Go reference implementations: the log's
// signature by golang.org/x/mod/sumdb/note, the witnesses' cosignature/v1 lines by
// github.com/transparency-dev/formats/note. ffaudit's Python code plays no part, so
// the file checks the Python implementation against an independent one.
//
// The cosignature timestamps come from the clock: a rerun writes new signatures.
//
//	mkdir /tmp/gen && cd /tmp/gen && go mod init gen
//	go get golang.org/x/mod@v0.43.0 github.com/transparency-dev/formats/note@v0.1.1
//	go run /path/to/generate_go.go > /path/to/go-cosigned.txt
//
//go:build ignore

package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	tdnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

// seed derives a test key's Ed25519 seed from its label, so the file names its keys.
func seed(label string) []byte {
	s := sha256.Sum256([]byte("ffaudit test key: " + label))
	return s[:]
}

func skey(name string, alg byte, seed []byte, pub ed25519.PublicKey) string {
	h := sha256.New()
	h.Write([]byte(name + "\n"))
	h.Write(append([]byte{alg}, pub...))
	id := h.Sum(nil)[:4]
	return fmt.Sprintf("PRIVATE+KEY+%s+%s+%s", name, hex.EncodeToString(id),
		base64.StdEncoding.EncodeToString(append([]byte{alg}, seed...)))
}

func main() {
	const origin = "example.com/ffaudit-vectors"
	logSeed := seed(origin)
	logPub := ed25519.NewKeyFromSeed(logSeed).Public().(ed25519.PublicKey)
	logSigner, err := note.NewSigner(skey(origin, 0x01, logSeed, logPub))
	if err != nil {
		panic(err)
	}
	logVkey, err := note.NewEd25519VerifierKey(origin, logPub)
	if err != nil {
		panic(err)
	}
	fmt.Printf("log %s\nseed %s %x\n", logVkey, origin, logSeed)

	witnesses := []string{"witness.example/w1", "witness.example/w2", "witness.example/w3"}
	var signers []note.Signer
	for _, name := range witnesses {
		s := seed(name)
		pub := ed25519.NewKeyFromSeed(s).Public().(ed25519.PublicKey)
		ws, err := tdnote.NewSignerForCosignatureV1(skey(name, 0x04, s, pub))
		if err != nil {
			panic(err)
		}
		plain, err := note.NewEd25519VerifierKey(name, pub)
		if err != nil {
			panic(err)
		}
		vkey, err := tdnote.VKeyToCosignatureV1(plain)
		if err != nil {
			panic(err)
		}
		fmt.Printf("witness %s\nseed %s %x\n", vkey, name, s)
		signers = append(signers, ws)
	}

	root := sha256.Sum256([]byte("ffaudit vectors root"))
	text := fmt.Sprintf("%s\n%d\n%s\nffaudit-extension-line\n", origin, 42,
		base64.StdEncoding.EncodeToString(root[:]))
	// w1 and w2 cosign; w3 does not, so the file also exercises a quorum left unmet.
	msg, err := note.Sign(&note.Note{Text: text}, logSigner, signers[0], signers[1])
	if err != nil {
		panic(err)
	}
	fmt.Printf("checkpoint\n%s", msg)
}
